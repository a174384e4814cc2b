//! Verification keys of one issuer: parsed from a JWKS, a PEM public key, or an HMAC
//! secret, and looked up by `kid` and algorithm. Every key gets its RFC 7638 JWK
//! thumbprint, so a key can be named (and revoked) whether or not it has a `kid`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// What kind of key this is; decides which algorithms it may verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
    Hmac,
}

impl KeyKind {
    fn fits(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            KeyKind::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            KeyKind::EcP256 => alg == ES256,
            KeyKind::EcP384 => alg == ES384,
            KeyKind::Ed25519 => alg == EdDSA,
            KeyKind::Hmac => matches!(alg, HS256 | HS384 | HS512),
        }
    }
}

/// One verification key.
#[derive(Clone)]
pub(crate) struct VerifyKey {
    pub(crate) kid: Option<String>,
    pub(crate) kind: KeyKind,
    /// The one algorithm the key is for, when its JWK says so.
    pub(crate) alg: Option<Algorithm>,
    pub(crate) key: DecodingKey,
    /// The RFC 7638 JWK thumbprint (SHA-256), computed from the key itself, whatever form
    /// it came in: the name `jwkThumbprint` revocations match.
    pub(crate) thumbprint: [u8; 32],
}

impl VerifyKey {
    /// A key with its thumbprint computed from the key material.
    fn new(
        kid: Option<String>,
        kind: KeyKind,
        alg: Option<Algorithm>,
        key: DecodingKey,
    ) -> Result<Self, ThumbprintError> {
        let thumbprint = thumbprint(kind, &key)?;
        Ok(Self {
            kid,
            kind,
            alg,
            key,
            thumbprint,
        })
    }
}

/// Why a key's RFC 7638 members could not be read from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ThumbprintError(&'static str);

/// The RFC 7638 thumbprint of a key: SHA-256 of the JSON object of its required members,
/// in lexicographic order, without whitespace (section 3.2). Member values are the
/// canonical base64url of the key's numbers as RFC 7518 writes them (RSA `n` and `e`
/// without leading zero octets, section 6.3.1; EC coordinates at the full size of the
/// curve, section 6.2.1.2, or the key is refused), so the same key gives the same
/// thumbprint from a JWK, a PEM or a Secret.
fn thumbprint(kind: KeyKind, key: &DecodingKey) -> Result<[u8; 32], ThumbprintError> {
    use jsonwebtoken::DecodingKeyKind;
    let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
    let json = match kind {
        KeyKind::Rsa => {
            let (n, e) = match key.kind() {
                DecodingKeyKind::RsaModulusExponent { n, e } => (n.as_slice(), e.as_slice()),
                // A PEM key: the PKCS#1 `RSAPublicKey` DER (what jsonwebtoken keeps of both
                // PKCS#1 and SPKI PEMs).
                DecodingKeyKind::SecretOrDer(der) => rsa_public_key_der(der)?,
            };
            let (n, e) = (strip_leading_zeros(n), strip_leading_zeros(e));
            if n.is_empty() || e.is_empty() {
                return Err(ThumbprintError("an RSA modulus or exponent of zero"));
            }
            format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, b64(e), b64(n))
        }
        KeyKind::EcP256 | KeyKind::EcP384 => {
            let (crv, size) = if kind == KeyKind::EcP256 {
                ("P-256", 32)
            } else {
                ("P-384", 48)
            };
            // Both JWK coordinates and PEM keys are kept as the SEC1 uncompressed point.
            let point = key
                .try_get_as_bytes()
                .map_err(|_| ThumbprintError("an EC key without a point"))?;
            // RFC 7518 section 6.2.1.2: coordinates are the full size of the curve; a
            // shorter one could not be verified with anyway.
            let (x, y) = match point.split_first() {
                Some((0x04, xy)) if xy.len() == 2 * size => xy.split_at(size),
                _ => {
                    return Err(ThumbprintError(
                        "x and y must each be the full size of the curve's coordinates",
                    ));
                }
            };
            format!(
                r#"{{"crv":"{crv}","kty":"EC","x":"{}","y":"{}"}}"#,
                b64(x),
                b64(y)
            )
        }
        KeyKind::Ed25519 => {
            let x = key
                .try_get_as_bytes()
                .map_err(|_| ThumbprintError("an Ed25519 key without bytes"))?;
            if x.len() != 32 {
                return Err(ThumbprintError("an Ed25519 public key is 32 bytes"));
            }
            format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#, b64(x))
        }
        KeyKind::Hmac => {
            let k = key
                .try_get_as_bytes()
                .map_err(|_| ThumbprintError("a secret without bytes"))?;
            format!(r#"{{"k":"{}","kty":"oct"}}"#, b64(k))
        }
    };
    Ok(Sha256::digest(json.as_bytes()).into())
}

fn strip_leading_zeros(b: &[u8]) -> &[u8] {
    let zeros = b.iter().take_while(|x| **x == 0).count();
    &b[zeros..]
}

/// Reads `n` and `e` from a DER PKCS#1 `RSAPublicKey ::= SEQUENCE { modulus INTEGER,
/// publicExponent INTEGER }` (RFC 8017 appendix A.1.1), strictly: nothing before, between
/// or after, so a private key (`RSAPrivateKey`, which starts with a version INTEGER) is
/// not misread as a public one.
fn rsa_public_key_der(der: &[u8]) -> Result<(&[u8], &[u8]), ThumbprintError> {
    const BAD: ThumbprintError = ThumbprintError("not a DER RSAPublicKey (a private key?)");
    let (body, rest) = der_element(der, 0x30).ok_or(BAD)?;
    if !rest.is_empty() {
        return Err(BAD);
    }
    let (n, body) = der_element(body, 0x02).ok_or(BAD)?;
    let (e, body) = der_element(body, 0x02).ok_or(BAD)?;
    if !body.is_empty() {
        return Err(BAD);
    }
    Ok((n, e))
}

/// One DER element of tag `tag` at the start of `input`: (contents, what follows).
fn der_element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = input.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let len = rest[..count]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[count..])
    };
    (rest.len() >= len).then(|| rest.split_at(len))
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("kind", &self.kind)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// Why key material could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// The document is not a JWKS.
    #[error("not a JWKS document: {0}")]
    NotJwks(String),
    /// A key in the JWKS could not be used.
    #[error("keys[{index}]: {message}")]
    BadJwk {
        /// Position in `keys`.
        index: usize,
        /// What is wrong.
        message: String,
    },
    /// The PEM could not be read as a public key.
    #[error("not a usable PEM public key (RSA, EC P-256/P-384 or Ed25519)")]
    BadPem,
    /// No usable key at all.
    #[error("no usable verification key")]
    Empty,
    /// An HMAC secret that is too short.
    #[error("an HMAC secret must be at least 32 bytes, found {0}")]
    ShortSecret(usize),
    /// A key kind the issuer's algorithms cannot use.
    #[error("no key fits the issuer's algorithms {0}")]
    NoFittingKey(String),
}

/// The keys of one issuer.
#[derive(Debug, Clone, Default)]
pub(crate) struct KeySet {
    pub(crate) keys: Vec<VerifyKey>,
}

/// The outcome of looking up a key for a token.
pub(crate) enum KeyLookup<'k> {
    Found(&'k VerifyKey),
    Unknown,
    Mismatch,
}

impl KeySet {
    /// Parses a JWKS document (JSON value). Keys marked `use: enc` are skipped; a key that
    /// cannot be used is an error naming its index. Symmetric keys (`oct`) are accepted
    /// only when `allow_oct` (they come from a Secret).
    pub(crate) fn from_jwks(doc: &Value, allow_oct: bool) -> Result<Self, KeyError> {
        Self::parse_jwks(doc, allow_oct, false)
    }

    /// Parses a JWKS fetched from a provider: keys Portcullis cannot use (other key types,
    /// curves or algorithms a provider also publishes, symmetric keys) are skipped rather
    /// than failing the set; a private key still fails it, and so does a set with no usable
    /// key.
    pub(crate) fn from_remote_jwks(doc: &Value) -> Result<Self, KeyError> {
        Self::parse_jwks(doc, false, true)
    }

    fn parse_jwks(doc: &Value, allow_oct: bool, skip_unusable: bool) -> Result<Self, KeyError> {
        let keys = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| KeyError::NotJwks("expected an object with a `keys` array".into()))?;
        let mut out = Vec::with_capacity(keys.len());
        for (index, jwk) in keys.iter().enumerate() {
            let bad = |message: String| KeyError::BadJwk { index, message };
            if jwk.get("use").and_then(Value::as_str) == Some("enc") {
                continue;
            }
            let str_field = |name: &str| jwk.get(name).and_then(Value::as_str);
            let kty = str_field("kty").ok_or_else(|| bad("missing kty".into()))?;
            if jwk.get("d").is_some() {
                return Err(bad(
                    "holds a private key (`d`); publish public keys only".into()
                ));
            }
            let alg = match str_field("alg") {
                None => None,
                Some(a) => match parse_algorithm(a) {
                    Some(alg) => Some(alg),
                    None if skip_unusable => continue,
                    None => return Err(bad(format!("unsupported alg {a:?}"))),
                },
            };
            let supported = matches!(
                (kty, str_field("crv")),
                ("RSA", _) | ("EC", Some("P-256" | "P-384")) | ("OKP", Some("Ed25519"))
            ) || (kty == "oct" && !skip_unusable);
            if skip_unusable && !supported {
                continue;
            }
            let need = |name: &str| {
                str_field(name).ok_or_else(|| bad(format!("{kty} key lacks `{name}`")))
            };
            let (kind, key) = match kty {
                "RSA" => {
                    let key = DecodingKey::from_rsa_components(need("n")?, need("e")?)
                        .map_err(|e| bad(format!("bad RSA key: {e}")))?;
                    (KeyKind::Rsa, key)
                }
                "EC" => {
                    let kind = match need("crv")? {
                        "P-256" => KeyKind::EcP256,
                        "P-384" => KeyKind::EcP384,
                        other => return Err(bad(format!("unsupported EC curve {other:?}"))),
                    };
                    let key = DecodingKey::from_ec_components(need("x")?, need("y")?)
                        .map_err(|e| bad(format!("bad EC key: {e}")))?;
                    (kind, key)
                }
                "OKP" => {
                    if need("crv")? != "Ed25519" {
                        return Err(bad("only the Ed25519 OKP curve is supported".into()));
                    }
                    let key = DecodingKey::from_ed_components(need("x")?)
                        .map_err(|e| bad(format!("bad Ed25519 key: {e}")))?;
                    (KeyKind::Ed25519, key)
                }
                "oct" if allow_oct => {
                    let k = need("k")?;
                    let raw = base64_url(k).ok_or_else(|| bad("`k` is not base64url".into()))?;
                    if raw.len() < 32 {
                        return Err(KeyError::ShortSecret(raw.len()));
                    }
                    let key = DecodingKey::from_secret(&raw)
                        .map_err(|e| bad(format!("bad secret: {e}")))?;
                    (KeyKind::Hmac, key)
                }
                "oct" => {
                    return Err(bad(
                        "shared secrets (kty oct) belong in a Secret, not inline".into(),
                    ));
                }
                other => return Err(bad(format!("unsupported kty {other:?}"))),
            };
            if let Some(alg) = alg
                && !kind.fits(alg)
            {
                return Err(bad(format!("alg {alg:?} does not fit a {kty} key")));
            }
            let key = match VerifyKey::new(str_field("kid").map(str::to_owned), kind, alg, key) {
                Ok(key) => key,
                // A provider's key Portcullis could not verify with anyway.
                Err(_) if skip_unusable => continue,
                Err(e) => return Err(bad(format!("bad {kty} key: {}", e.0))),
            };
            out.push(key);
        }
        if out.is_empty() {
            return Err(KeyError::Empty);
        }
        Ok(Self { keys: out })
    }

    /// Parses a PEM public key (SPKI or PKCS#1 RSA).
    pub(crate) fn from_pem(pem: &[u8]) -> Result<Self, KeyError> {
        let (kind, key) = if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
            (KeyKind::Rsa, k)
        } else if let Ok(k) = DecodingKey::from_ed_pem(pem) {
            (KeyKind::Ed25519, k)
        } else if let Ok(k) = DecodingKey::from_ec_pem(pem) {
            // The curve is not exposed by the PEM parser: tell P-256 from P-384 by the size
            // of the uncompressed point (65 or 97 bytes).
            let kind = match k.try_get_as_bytes().map(<[u8]>::len) {
                Ok(65) => KeyKind::EcP256,
                Ok(97) => KeyKind::EcP384,
                _ => return Err(KeyError::BadPem),
            };
            (kind, k)
        } else {
            return Err(KeyError::BadPem);
        };
        let key = VerifyKey::new(None, kind, None, key).map_err(|_| KeyError::BadPem)?;
        Ok(Self { keys: vec![key] })
    }

    /// An HMAC shared secret (at least 32 bytes).
    pub(crate) fn from_secret(secret: &[u8]) -> Result<Self, KeyError> {
        if secret.len() < 32 {
            return Err(KeyError::ShortSecret(secret.len()));
        }
        let key = DecodingKey::from_secret(secret).map_err(|_| KeyError::Empty)?;
        let key = VerifyKey::new(None, KeyKind::Hmac, None, key).map_err(|_| KeyError::Empty)?;
        Ok(Self { keys: vec![key] })
    }

    /// Reads Secret data: a JWKS (JSON), a PEM public key, or else a raw HMAC secret.
    pub(crate) fn from_secret_data(data: &[u8]) -> Result<Self, KeyError> {
        let trimmed = data.trim_ascii();
        if trimmed.starts_with(b"{") {
            let doc: Value = serde_json::from_slice(trimmed)
                .map_err(|e| KeyError::NotJwks(format!("invalid JSON: {e}")))?;
            Self::from_jwks(&doc, true)
        } else if trimmed.starts_with(b"-----BEGIN") {
            Self::from_pem(trimmed)
        } else {
            Self::from_secret(data)
        }
    }

    /// Keeps only keys that fit at least one of `algs`; an error if none is left.
    pub(crate) fn retain_fitting(&mut self, algs: &[Algorithm]) -> Result<(), KeyError> {
        self.keys.retain(|k| {
            algs.iter()
                .any(|a| k.kind.fits(*a) && k.alg.is_none_or(|ka| ka == *a))
        });
        if self.keys.is_empty() {
            return Err(KeyError::NoFittingKey(format!("{algs:?}")));
        }
        Ok(())
    }

    /// Finds the key for a token: by `kid` when the token has one; otherwise the one key
    /// that fits the algorithm (several fitting keys without a `kid` is ambiguous: refused).
    pub(crate) fn lookup(&self, kid: Option<&str>, alg: Algorithm) -> KeyLookup<'_> {
        let fits = |k: &&VerifyKey| k.kind.fits(alg) && k.alg.is_none_or(|a| a == alg);
        match kid {
            Some(kid) => {
                let mut seen = false;
                for k in self.keys.iter().filter(|k| k.kid.as_deref() == Some(kid)) {
                    if fits(&k) {
                        return KeyLookup::Found(k);
                    }
                    seen = true;
                }
                if seen {
                    return KeyLookup::Mismatch;
                }
                // A key published without a kid (a PEM public key, say) answers for any
                // kid, but only when it is the one such key that fits.
                let mut anonymous = self.keys.iter().filter(|k| k.kid.is_none()).filter(fits);
                match (anonymous.next(), anonymous.next()) {
                    (Some(k), None) => KeyLookup::Found(k),
                    _ => KeyLookup::Unknown,
                }
            }
            None => {
                let mut fitting = self.keys.iter().filter(fits);
                match (fitting.next(), fitting.next()) {
                    (Some(k), None) => KeyLookup::Found(k),
                    (Some(_), Some(_)) => KeyLookup::Unknown,
                    (None, _) if self.keys.is_empty() => KeyLookup::Unknown,
                    (None, _) => KeyLookup::Mismatch,
                }
            }
        }
    }
}

/// Parses a JWS `alg` name into a supported algorithm; `none` and unknown names give None.
pub(crate) fn parse_algorithm(name: &str) -> Option<Algorithm> {
    use Algorithm::*;
    Some(match name {
        "RS256" => RS256,
        "RS384" => RS384,
        "RS512" => RS512,
        "PS256" => PS256,
        "PS384" => PS384,
        "PS512" => PS512,
        "ES256" => ES256,
        "ES384" => ES384,
        "EdDSA" => EdDSA,
        "HS256" => HS256,
        "HS384" => HS384,
        "HS512" => HS512,
        _ => return None,
    })
}

fn base64_url(s: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok()
}

/// One key's RFC 7638 thumbprint, as `portcullis token thumbprint` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyThumbprint {
    /// base64url SHA-256 thumbprint: a `jwkThumbprint` revocation's value.
    pub thumbprint: String,
    /// `RSA`, `EC`, `OKP` or `oct`.
    pub kty: &'static str,
    /// The key's `kid`, if it has one.
    pub kid: Option<String>,
}

/// The RFC 7638 thumbprints of the keys in `text` (a JWKS, one JWK, or a PEM public key),
/// computed exactly as the proxy computes them for `jwkThumbprint` revocations. Shared secrets (`kty: oct`) are accepted in a
/// JWK, since `portcullis token thumbprint` reads files, not manifests.
pub fn key_thumbprints(text: &str) -> Result<Vec<KeyThumbprint>, KeyError> {
    let text = text.trim();
    let set = if text.starts_with("-----BEGIN") {
        KeySet::from_pem(text.as_bytes())?
    } else {
        let doc: Value = serde_json::from_str(text).map_err(|e| {
            KeyError::NotJwks(format!("expected a JWKS, a JWK or a PEM public key: {e}"))
        })?;
        let doc = if doc.get("keys").is_some() {
            doc
        } else {
            serde_json::json!({ "keys": [doc] })
        };
        KeySet::from_jwks(&doc, true)?
    };
    Ok(set
        .keys
        .iter()
        .map(|k| {
            let kty = match k.kind {
                KeyKind::Rsa => "RSA",
                KeyKind::EcP256 | KeyKind::EcP384 => "EC",
                KeyKind::Ed25519 => "OKP",
                KeyKind::Hmac => "oct",
            };
            KeyThumbprint {
                thumbprint: URL_SAFE_NO_PAD.encode(k.thumbprint),
                kty,
                kid: k.kid.clone(),
            }
        })
        .collect())
}

/// Checks a JWKS fetched from a provider the way the compiler will read it: the number of
/// usable public keys, or why there is none (no `keys` array, a private or symmetric key,
/// a malformed key).
pub fn usable_keys(doc: &Value) -> Result<usize, KeyError> {
    KeySet::from_remote_jwks(doc).map(|k| k.keys.len())
}
