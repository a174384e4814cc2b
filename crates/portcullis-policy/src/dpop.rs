//! DPoP (RFC 9449): proofs of possession for sender-constrained tokens.
//!
//! A token whose `cnf.jkt` names a key is accepted only as `Authorization: DPoP <token>`
//! with one `DPoP` proof header, checked per section 4.3:
//! 1. one well-formed JWS, `typ` `dpop+jwt`, an allowed asymmetric `alg`, a public `jwk`
//!    (no private members) that verifies the signature;
//! 2. `htm` the request's method and `htu` its URI (scheme, host, port and canonical path;
//!    query and fragment ignored, RFC 3986 section 6.2 normalization);
//! 3. `iat` within `maxAge` (and not ahead by more than the clock skew); a `jti` not seen
//!    before on this proxy within that window;
//! 4. `ath` the base64url SHA-256 of the access token (section 4.2);
//! 5. the RFC 7638 thumbprint of `jwk` equal to the token's `cnf.jkt` (section 6.1).
//!
//! With `nonce` set, a proof must also carry a nonce this gateway issued (section 9; see
//! [`NonceKey`]).
//!
//! A bound token sent as `Bearer` is refused (section 7.1: it would be a bearer token a
//! thief could replay), so is an unbound token sent as `DPoP`, and with `mode: Required` an
//! unbound token at all.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde_json::Value;

use crate::keys::{KeyLookup, KeySet};
use crate::reason::DenyReason;

/// Algorithms a proof may use when the issuer names none.
pub(crate) const DEFAULT_ALGORITHMS: [Algorithm; 6] = [
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::PS256,
    Algorithm::RS256,
    Algorithm::EdDSA,
    Algorithm::PS384,
];

/// The `algs` of a DPoP challenge: [`DEFAULT_ALGORITHMS`].
pub(crate) const DEFAULT_ALGS_HEADER: &str = "ES256 ES384 PS256 RS256 EdDSA PS384";

/// An issuer's DPoP settings, compiled.
#[derive(Debug, Clone)]
pub(crate) struct DpopConfig {
    pub(crate) required: bool,
    pub(crate) algorithms: Vec<Algorithm>,
    /// Largest age of a proof's `iat`, seconds.
    pub(crate) max_age: i64,
    /// `algorithms` as a challenge's `algs`.
    pub(crate) algs_header: std::sync::Arc<str>,
    /// Server-provided nonces, when configured.
    pub(crate) nonce: Option<NonceKey>,
}

impl Default for DpopConfig {
    fn default() -> Self {
        Self::new(false, DEFAULT_ALGORITHMS.to_vec(), 60)
    }
}

impl DpopConfig {
    pub(crate) fn new(required: bool, algorithms: Vec<Algorithm>, max_age: i64) -> Self {
        let algs_header = algorithms
            .iter()
            .map(|a| format!("{a:?}"))
            .collect::<Vec<_>>()
            .join(" ")
            .into();
        Self {
            required,
            algorithms,
            max_age,
            algs_header,
            nonce: None,
        }
    }
}

/// Stateless server nonces (RFC 9449 section 9). A nonce is `base64url(window || tag)`: the
/// time window (`now / lifetime`, 8 bytes big-endian) and the first 16 bytes of
/// HMAC-SHA256 over the issuer and the window under a key every proxy gets from the same
/// Secret. So any proxy checks any other's nonce without shared state. A nonce is good
/// in its window and the next; one from the previous window is still accepted, and the
/// answer carries the current one.
#[derive(Clone)]
pub(crate) struct NonceKey {
    key: std::sync::Arc<[u8]>,
    issuer: std::sync::Arc<str>,
    /// Window length, seconds (at least 1).
    lifetime: i64,
}

impl std::fmt::Debug for NonceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NonceKey")
            .field("key", &"<redacted>")
            .field("issuer", &self.issuer)
            .field("lifetime", &self.lifetime)
            .finish()
    }
}

/// How a proof's nonce stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NonceState {
    /// Made in the current window.
    Current,
    /// Made in the previous window: accepted, and a new one is sent.
    Previous,
    /// Missing, malformed, forged, or older.
    Invalid,
}

impl NonceKey {
    pub(crate) fn new(key: &[u8], issuer: &str, lifetime: i64) -> Self {
        Self {
            key: key.into(),
            issuer: issuer.into(),
            lifetime: lifetime.max(1),
        }
    }

    /// HMAC-SHA256 over the issuer and `window`, ready to finalize or verify.
    fn mac(&self, window: i64) -> hmac::Hmac<sha2::Sha256> {
        use hmac::{Mac, digest::KeyInit};
        let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&self.key)
            .expect("HMAC takes a key of any length");
        mac.update(b"portcullis dpop nonce\0");
        mac.update(self.issuer.as_bytes());
        mac.update(b"\0");
        mac.update(&window.to_be_bytes());
        mac
    }

    /// The nonce of the window holding `now`.
    pub(crate) fn issue(&self, now: i64) -> String {
        let window = now.div_euclid(self.lifetime);
        let mut raw = [0u8; 24];
        raw[..8].copy_from_slice(&window.to_be_bytes());
        raw[8..].copy_from_slice(&hmac::Mac::finalize(self.mac(window)).into_bytes()[..16]);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Whether `nonce` is one this key issued for the current or the previous window (or
    /// the next one, when it begins within `skew`: another proxy's clock may run ahead).
    pub(crate) fn check(&self, nonce: &str, now: i64, skew: i64) -> NonceState {
        let Ok(raw) = URL_SAFE_NO_PAD.decode(nonce) else {
            return NonceState::Invalid;
        };
        let Ok(raw) = <[u8; 24]>::try_from(raw.as_slice()) else {
            return NonceState::Invalid;
        };
        let window = i64::from_be_bytes(raw[..8].try_into().expect("8 bytes"));
        let current = now.div_euclid(self.lifetime);
        let ahead = window == current + 1
            && window.saturating_mul(self.lifetime).saturating_sub(now) <= skew;
        let state = if window == current || ahead {
            NonceState::Current
        } else if window == current - 1 {
            NonceState::Previous
        } else {
            return NonceState::Invalid;
        };
        // A constant-time comparison of the tag.
        if hmac::Mac::verify_truncated_left(self.mac(window), &raw[8..]).is_err() {
            return NonceState::Invalid;
        }
        state
    }
}

/// What an accepted proof leaves to do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ProofAccepted {
    /// A fresh nonce to send in `DPoP-Nonce` (the proof's is about to expire).
    pub(crate) next_nonce: Option<String>,
}

/// Proof `jti`s seen recently (keyed by the SHA-256 of the proof key's thumbprint and the
/// `jti`), until their `iat` is too old to pass again. Bounded: past the capacity, a new
/// proof is refused (the client makes another) rather than an old one forgotten early.
#[derive(Debug)]
pub(crate) struct ReplayCache {
    inner: Mutex<Seen>,
    capacity: usize,
    /// Most live proofs of one client key: one client minting proofs as fast as it can
    /// fills its own share, not the whole cache.
    per_key: usize,
}

#[derive(Debug, Default)]
struct Seen {
    /// Proof (the first 128 bits of its digest) -> (remembered until, the client key's
    /// thumbprint, its first 64 bits): 32 bytes an entry. A digest collision only refuses
    /// a fresh proof as a replay (closed), and needs about 2^64 proofs.
    proofs: HashMap<[u8; 16], (i64, u64)>,
    /// Live proofs per client key (by the first 64 bits of its thumbprint).
    by_key: HashMap<u64, usize>,
    /// When expired proofs were last swept out.
    swept: i64,
}

/// How often expired proofs are swept out even while the cache has room, so its memory
/// follows the proofs of the last `maxAge` rather than growing to the capacity.
const SWEEP_EVERY: i64 = 30;

impl ReplayCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::default(),
            capacity,
            per_key: (capacity / 10).max(1),
        }
    }

    /// Records a proof of client key `jkt`; false when it was seen before, or there is no
    /// room (the cache, or this key's share of it, is full of live proofs).
    fn first_use(&self, proof: [u8; 32], jkt: [u8; 32], until: i64, now: i64) -> bool {
        let proof: [u8; 16] = proof[..16].try_into().expect("16 bytes");
        let jkt = u64::from_be_bytes(jkt[..8].try_into().expect("8 bytes"));
        let mut s = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if s.proofs.get(&proof).is_some_and(|(t, _)| *t > now) {
            return false;
        }
        let full = s.proofs.len() >= self.capacity
            || s.by_key.get(&jkt).is_some_and(|n| *n >= self.per_key);
        // Swept when full (at most once a second), and every SWEEP_EVERY seconds anyway.
        if (full && s.swept < now) || now.saturating_sub(s.swept) >= SWEEP_EVERY {
            s.swept = now;
            let Seen { proofs, by_key, .. } = &mut *s;
            proofs.retain(|_, (t, k)| {
                let live = *t > now;
                if !live && let Some(n) = by_key.get_mut(k) {
                    *n = n.saturating_sub(1);
                }
                live
            });
            by_key.retain(|_, n| *n > 0);
            if proofs.capacity() > 4 * proofs.len().max(1024) {
                proofs.shrink_to_fit();
            }
        }
        if s.proofs.len() >= self.capacity || s.by_key.get(&jkt).is_some_and(|n| *n >= self.per_key)
        {
            return false;
        }
        if let Some((_, old)) = s.proofs.insert(proof, (until, jkt))
            && let Some(n) = s.by_key.get_mut(&old)
        {
            // An expired entry of the same proof replaced: not counted twice.
            *n = n.saturating_sub(1);
        }
        *s.by_key.entry(jkt).or_default() += 1;
        true
    }

    /// Proofs remembered now (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .proofs
            .len()
    }
}

/// The request a proof must be about.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProofTarget<'a> {
    pub(crate) method: &'a str,
    /// `http` or `https`, as the client reached the gateway.
    pub(crate) scheme: &'a str,
    /// Host, with or without a port.
    pub(crate) host: &'a str,
    /// The canonical path.
    pub(crate) path: &'a str,
}

/// Checks one DPoP proof for a token whose SHA-256 is `token_sha256`, bound to the key
/// with thumbprint `jkt`. Any failure is [`DenyReason::InvalidDpopProof`].
#[allow(clippy::too_many_arguments)] // each is one input of section 4.3's checks
pub(crate) fn check_proof(
    proof: &str,
    target: ProofTarget<'_>,
    token_sha256: &[u8; 32],
    jkt: &[u8; 32],
    cfg: &DpopConfig,
    skew: i64,
    now: i64,
    replay: &ReplayCache,
) -> Result<ProofAccepted, DenyReason> {
    const BAD: DenyReason = DenyReason::InvalidDpopProof;
    if proof.len() > 8 * 1024 {
        return Err(BAD);
    }
    let mut parts = proof.split('.');
    let (Some(h), Some(p), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(BAD);
    };
    let header = crate::token::decode_object(h).map_err(|_| BAD)?;
    let claims = crate::token::decode_object(p).map_err(|_| BAD)?;
    // Section 4.2: explicit type, and no extension this code does not understand.
    if header.get("typ").and_then(Value::as_str) != Some("dpop+jwt") || header.contains_key("crit")
    {
        return Err(BAD);
    }
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .and_then(crate::keys::parse_algorithm)
        .filter(|a| cfg.algorithms.contains(a))
        .ok_or(BAD)?;
    // A public key only (`from_jwks` refuses `d` and shared secrets); the private members
    // of RSA are refused here too.
    let jwk = header.get("jwk").and_then(Value::as_object).ok_or(BAD)?;
    if ["d", "p", "q", "dp", "dq", "qi", "oth", "k"]
        .iter()
        .any(|m| jwk.contains_key(*m))
    {
        return Err(BAD);
    }
    let keys = KeySet::from_jwks(&serde_json::json!({"keys": [jwk]}), false).map_err(|_| BAD)?;
    let key = match keys.lookup(None, alg) {
        KeyLookup::Found(k) => k,
        _ => return Err(BAD),
    };
    let signing_input = &proof[..h.len() + 1 + p.len()];
    if !matches!(
        jsonwebtoken::crypto::verify(sig, signing_input.as_bytes(), &key.key, alg),
        Ok(true)
    ) {
        return Err(BAD);
    }
    // Section 6.1: the key proven is the key the token is bound to.
    if key.thumbprint != *jkt {
        return Err(BAD);
    }
    let str_claim = |n: &str| claims.get(n).and_then(Value::as_str);
    if str_claim("htm") != Some(target.method) {
        return Err(BAD);
    }
    if !htu_matches(str_claim("htu").ok_or(BAD)?, target) {
        return Err(BAD);
    }
    let iat = claims.get("iat").and_then(Value::as_i64).ok_or(BAD)?;
    if iat > now.saturating_add(skew) || iat < now.saturating_sub(cfg.max_age).saturating_sub(skew)
    {
        return Err(BAD);
    }
    let ath = URL_SAFE_NO_PAD.encode(token_sha256);
    if str_claim("ath") != Some(ath.as_str()) {
        return Err(BAD);
    }
    let jti = str_claim("jti")
        .filter(|j| !j.is_empty() && j.len() <= 256)
        .ok_or(BAD)?;
    // Section 9: a nonce this gateway issued, current or just expired. Checked after the
    // signature (an unsigned claim says nothing) and before the proof is recorded as
    // used, so the retry section 9 asks for is a new proof anyway.
    let mut accepted = ProofAccepted::default();
    if let Some(key) = &cfg.nonce {
        match str_claim("nonce").map_or(NonceState::Invalid, |n| key.check(n, now, skew)) {
            NonceState::Current => {}
            NonceState::Previous => accepted.next_nonce = Some(key.issue(now)),
            NonceState::Invalid => return Err(DenyReason::UseDpopNonce),
        }
    }
    // Section 11.1: a proof is used once.
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(jkt);
    h.update(jti.as_bytes());
    // Remembered past the last second the proof could still pass (`iat` has a one-second
    // grain): from `until` on, its `iat` refuses it anyway.
    let until = iat
        .saturating_add(cfg.max_age)
        .saturating_add(skew.saturating_mul(2))
        .saturating_add(1);
    if !replay.first_use(h.finalize().into(), *jkt, until, now) {
        return Err(DenyReason::DpopReplay);
    }
    Ok(accepted)
}

/// Whether a proof's `htu` names the request (RFC 9449 section 4.3 step 9: query and
/// fragment ignored; scheme and host compared case-insensitively, a default port equal to
/// none, the path normalized as the gateway normalizes request paths).
pub(crate) fn htu_matches(htu: &str, t: ProofTarget<'_>) -> bool {
    let Some((scheme, rest)) = htu.split_once("://") else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case(t.scheme) {
        return false;
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if authority.contains('@') {
        return false;
    }
    let path = tail.split(['?', '#']).next().unwrap_or_default();
    let path = if path.is_empty() { "/" } else { path };
    let default = if scheme.eq_ignore_ascii_case("https") {
        ":443"
    } else {
        ":80"
    };
    let norm = |a: &str| {
        let a = a.to_ascii_lowercase();
        a.strip_suffix(default).map(str::to_owned).unwrap_or(a)
    };
    if norm(authority) != norm(t.host) {
        return false;
    }
    match crate::target::canonical_path(path, &crate::target::PathOptions::default()) {
        Ok(p) => p == t.path,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: ProofTarget<'static> = ProofTarget {
        method: "GET",
        scheme: "https",
        host: "api.example.com",
        path: "/orders/1",
    };

    #[test]
    fn htu_compares_as_rfc_3986_section_6_2_normalizes() {
        assert!(htu_matches("https://api.example.com/orders/1", T));
        assert!(htu_matches("HTTPS://API.example.COM:443/orders/1?x=1#f", T));
        assert!(htu_matches("https://api.example.com/orders/%31", T));
        assert!(htu_matches("https://api.example.com/orders/x/../1", T));
        assert!(!htu_matches("http://api.example.com/orders/1", T));
        assert!(!htu_matches("https://api.example.com:8443/orders/1", T));
        assert!(!htu_matches("https://evil.example.com/orders/1", T));
        assert!(!htu_matches("https://api.example.com/orders/2", T));
        assert!(!htu_matches("https://user@api.example.com/orders/1", T));
        assert!(!htu_matches("api.example.com/orders/1", T));
    }

    /// RFC 9449 section 9: nonces the server issued, for a limited time, and no others.
    #[test]
    fn rfc9449_section_9_nonces_are_issued_checked_and_expire() {
        let k = NonceKey::new(&[7; 32], "https://issuer.example", 300);
        let n = k.issue(1_000_000);
        assert_eq!(k.check(&n, 1_000_000, 0), NonceState::Current);
        assert_eq!(k.check(&n, 1_000_000 + 300, 0), NonceState::Previous);
        assert_eq!(
            k.check(&n, 1_000_000 + 600, 0),
            NonceState::Invalid,
            "expired"
        );
        assert_eq!(
            k.check(&n, 1_000_000 - 300, 0),
            NonceState::Invalid,
            "from the future"
        );
        // Another key, or the same key for another issuer, makes other nonces.
        let other = NonceKey::new(&[8; 32], "https://issuer.example", 300);
        assert_eq!(other.check(&n, 1_000_000, 0), NonceState::Invalid);
        let elsewhere = NonceKey::new(&[7; 32], "https://other.example", 300);
        assert_eq!(elsewhere.check(&n, 1_000_000, 0), NonceState::Invalid);
        // A forged window with the old tag, a truncated or garbled nonce.
        let mut raw = URL_SAFE_NO_PAD.decode(&n).unwrap();
        raw[7] ^= 1;
        let moved = URL_SAFE_NO_PAD.encode(&raw);
        assert_eq!(k.check(&moved, 1_000_000, 0), NonceState::Invalid);
        assert_eq!(
            k.check(&n[..n.len() - 2], 1_000_000, 0),
            NonceState::Invalid
        );
        assert_eq!(k.check("not base64!", 1_000_000, 0), NonceState::Invalid);
        assert_eq!(k.check("", 1_000_000, 0), NonceState::Invalid);
        assert!(
            !format!("{k:?}").contains("7, 7"),
            "the key is never printed"
        );
    }

    #[test]
    fn a_proof_is_used_once_and_the_cache_stays_bounded() {
        let c = ReplayCache::new(20);
        let (a, b) = ([7; 32], [8; 32]);
        assert!(c.first_use([1; 32], a, 100, 0));
        assert!(!c.first_use([1; 32], a, 100, 50), "replayed");
        assert!(c.first_use([2; 32], a, 100, 50));
        // One key gets a tenth of the cache: 2 of 20.
        assert!(!c.first_use([3; 32], a, 100, 50), "key a's share is full");
        assert!(
            c.first_use([4; 32], b, 100, 50),
            "another key is not locked out"
        );
        assert!(c.first_use([3; 32], a, 300, 150), "expired ones make room");
        assert!(
            !c.first_use([3; 32], a, 300, 151),
            "replayed after the sweep"
        );
        // With room to spare, expired proofs still leave within SWEEP_EVERY seconds.
        let c = ReplayCache::new(1000);
        for i in 0..50u8 {
            assert!(c.first_use([i; 32], a, 10, 0));
        }
        assert_eq!(c.len(), 50);
        assert!(c.first_use([200; 32], a, 100, SWEEP_EVERY));
        assert_eq!(c.len(), 1, "the 50 expired proofs were swept");
    }
}
