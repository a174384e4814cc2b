//! Revoked tokens of one policy, held in hash maps so every request checks them in O(1),
//! whether or not its token came from the cache.
//!
//! Revocations are keyed on meaning, not on bytes: a `tokenSha256` entry refuses every
//! valid encoding of the signed token it names, and a `keyId` or `jwkThumbprint` entry
//! refuses every token the key verified, whatever the token's header says.

use std::collections::HashMap;

use crate::principal::Principal;
use crate::reason::DenyReason;
use crate::token::TokenDigest;

/// An entry's expiry: `None` lives forever; `Some(t)` is ignored from `t` on.
type Expiry = Option<i64>;

/// The issuer an entry is narrowed to (`None`: every issuer's tokens).
type Issuer = Option<Box<str>>;

/// A "tokens issued before" entry: the cut-off (`iat` below it is revoked), the issuer it
/// is narrowed to, and its expiry.
type CutOff = (i64, Issuer, Expiry);

/// The revocations of one TokenPolicy.
#[derive(Debug, Default, Clone)]
pub(crate) struct RevocationSet {
    jti: HashMap<Box<str>, Expiry>,
    token: HashMap<[u8; 32], Expiry>,
    /// subject -> (issuedBefore, issuer, expiry) entries; an issuer narrows the entry to
    /// that issuer's tokens.
    subject: HashMap<Box<str>, Vec<CutOff>>,
    /// email -> (issuedBefore, issuer, expiry) entries.
    email: HashMap<Box<str>, Vec<CutOff>>,
    /// session id (`sid`) -> (issuer, expiry) entries.
    session: HashMap<Box<str>, Vec<(Issuer, Expiry)>>,
    key_id: HashMap<Box<str>, Expiry>,
    /// RFC 7638 JWK thumbprints (SHA-256) of revoked keys.
    jwk_thumbprint: HashMap<[u8; 32], Expiry>,
    /// Ids of revoked API keys.
    api_key_id: HashMap<Box<str>, Expiry>,
    /// Every `(field, value)` seen, to count distinct entries.
    len: usize,
}

fn live(expiry: &Expiry, now: i64) -> bool {
    expiry.is_none_or(|t| now < t)
}

/// Keeps the later expiry of two entries for the same key (`None` = never).
fn merge(old: &mut Expiry, new: Expiry) {
    *old = match (*old, new) {
        (None, _) | (_, None) => None,
        (Some(a), Some(b)) => Some(a.max(b)),
    };
}

impl RevocationSet {
    pub(crate) fn add_jti(&mut self, jti: &str, expiry: Expiry) {
        self.len += 1;
        self.jti
            .entry(jti.into())
            .and_modify(|e| merge(e, expiry))
            .or_insert(expiry);
    }

    pub(crate) fn add_token(&mut self, digest: [u8; 32], expiry: Expiry) {
        self.len += 1;
        self.token
            .entry(digest)
            .and_modify(|e| merge(e, expiry))
            .or_insert(expiry);
    }

    pub(crate) fn add_subject(
        &mut self,
        subject: &str,
        issued_before: i64,
        issuer: Option<&str>,
        expiry: Expiry,
    ) {
        self.len += 1;
        self.subject.entry(subject.into()).or_default().push((
            issued_before,
            issuer.map(Box::from),
            expiry,
        ));
    }

    pub(crate) fn add_email(
        &mut self,
        email: &str,
        issued_before: i64,
        issuer: Option<&str>,
        expiry: Expiry,
    ) {
        self.len += 1;
        self.email.entry(email.into()).or_default().push((
            issued_before,
            issuer.map(Box::from),
            expiry,
        ));
    }

    pub(crate) fn add_session(&mut self, sid: &str, issuer: Option<&str>, expiry: Expiry) {
        self.len += 1;
        self.session
            .entry(sid.into())
            .or_default()
            .push((issuer.map(Box::from), expiry));
    }

    pub(crate) fn add_key_id(&mut self, kid: &str, expiry: Expiry) {
        self.len += 1;
        self.key_id
            .entry(kid.into())
            .and_modify(|e| merge(e, expiry))
            .or_insert(expiry);
    }

    pub(crate) fn add_jwk_thumbprint(&mut self, thumbprint: [u8; 32], expiry: Expiry) {
        self.len += 1;
        self.jwk_thumbprint
            .entry(thumbprint)
            .and_modify(|e| merge(e, expiry))
            .or_insert(expiry);
    }

    /// Number of entries, expired ones included.
    pub(crate) fn add_api_key_id(&mut self, id: &str, expiry: Expiry) {
        self.len += 1;
        self.api_key_id
            .entry(id.into())
            .and_modify(|e| merge(e, expiry))
            .or_insert(expiry);
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether the token is revoked at `now`, and how. `digest` is the SHA-256 of the
    /// token as presented; the token's equivalent encodings are checked too, so a
    /// re-encoded twin of a revoked token is refused, cached or not.
    pub(crate) fn check(
        &self,
        digest: &TokenDigest,
        token: &Principal,
        now: i64,
    ) -> Result<(), DenyReason> {
        if self.len == 0 {
            return Ok(());
        }
        if let Some(id) = &token.api_key_id
            && self.api_key_id.get(&**id).is_some_and(|e| live(e, now))
        {
            return Err(DenyReason::RevokedApiKey);
        }
        // Empty maps are skipped: a policy revoking only by jti hashes nothing else.
        let revoked_digest = |d: &TokenDigest| self.token.get(&d.0).is_some_and(|e| live(e, now));
        if !self.token.is_empty()
            && (revoked_digest(digest) || token.equivalent_digests.iter().any(revoked_digest))
        {
            return Err(DenyReason::RevokedToken);
        }
        if let Some(jti) = &token.jti
            && self.jti.get(&**jti).is_some_and(|e| live(e, now))
        {
            return Err(DenyReason::RevokedJti);
        }
        let revoked_kid = |kid: &Option<Box<str>>| {
            kid.as_deref()
                .is_some_and(|k| self.key_id.get(k).is_some_and(|e| live(e, now)))
        };
        if !self.key_id.is_empty()
            && (revoked_kid(&token.key_id) || revoked_kid(&token.token_key_id))
        {
            return Err(DenyReason::RevokedKey);
        }
        if !self.jwk_thumbprint.is_empty()
            && token
                .key_thumbprint
                .is_some_and(|t| self.jwk_thumbprint.get(&t).is_some_and(|e| live(e, now)))
        {
            return Err(DenyReason::RevokedKey);
        }
        // An entry naming an issuer holds only for that issuer's tokens (a `sub` or `sid`
        // is unique only within its issuer).
        let same_issuer = |iss: &Option<Box<str>>| {
            iss.as_deref()
                .is_none_or(|i| token.issuer.as_deref() == Some(i))
        };
        if let Some(sub) = &token.subject
            && let Some(entries) = self.subject.get(&**sub)
        {
            // A token without `iat` cannot prove it came after the cut-off: revoked.
            let iat = token.issued_at.unwrap_or(i64::MIN);
            if entries
                .iter()
                .any(|(before, iss, exp)| live(exp, now) && iat < *before && same_issuer(iss))
            {
                return Err(DenyReason::RevokedSubject);
            }
        }
        if let Some(email) = &token.email
            && let Some(entries) = self.email.get(&**email)
        {
            let iat = token.issued_at.unwrap_or(i64::MIN);
            if entries
                .iter()
                .any(|(before, iss, exp)| live(exp, now) && iat < *before && same_issuer(iss))
            {
                return Err(DenyReason::RevokedSubject);
            }
        }
        if let Some(sid) = &token.session_id
            && let Some(entries) = self.session.get(&**sid)
            && entries
                .iter()
                .any(|(iss, exp)| live(exp, now) && same_issuer(iss))
        {
            return Err(DenyReason::RevokedSession);
        }
        Ok(())
    }

    /// Number of entries whose `expiresAt` has passed at `now` (ignored, awaiting pruning).
    pub(crate) fn expired(&self, now: i64) -> usize {
        let dead = |e: &Expiry| !live(e, now);
        self.jti.values().filter(|e| dead(e)).count()
            + self.token.values().filter(|e| dead(e)).count()
            + self.key_id.values().filter(|e| dead(e)).count()
            + self.jwk_thumbprint.values().filter(|e| dead(e)).count()
            + self.api_key_id.values().filter(|e| dead(e)).count()
            + self
                .subject
                .values()
                .flat_map(|v| v.iter())
                .filter(|(_, _, e)| dead(e))
                .count()
            + self
                .email
                .values()
                .flat_map(|v| v.iter())
                .filter(|(_, _, e)| dead(e))
                .count()
            + self
                .session
                .values()
                .flat_map(|v| v.iter())
                .filter(|(_, e)| dead(e))
                .count()
    }
}

/// A problem with one revocation entry: the field path and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RevocationError {
    /// e.g. `spec.revocations[3].tokenSha256`.
    pub(crate) path: String,
    /// What is wrong, and what to do.
    pub(crate) message: String,
}

impl RevocationSet {
    /// Compiles `spec.revocations`. Entries with a problem are left out and reported; the
    /// others apply. Needs nothing but the list, so a revocation-only change can be
    /// compiled without the rest of the policy (snapshots are patched, not rebuilt).
    pub(crate) fn compile(list: &[portcullis_api::Revocation]) -> (Self, Vec<RevocationError>) {
        let mut set = RevocationSet::default();
        let mut errs = Vec::new();
        let mut err = |path: String, message: &str| {
            errs.push(RevocationError {
                path,
                message: message.to_owned(),
            })
        };
        for (i, r) in list.iter().enumerate() {
            let at = format!("spec.revocations[{i}]");
            let expiry = match r.expires_at.as_deref().map(parse_time) {
                None => None,
                Some(Ok(t)) => Some(t),
                Some(Err(e)) => {
                    err(format!("{at}.expiresAt"), &e);
                    continue;
                }
            };
            let selectors = [
                r.jti.is_some(),
                r.token_sha256.is_some(),
                r.subject.is_some(),
                r.email.is_some(),
                r.session_id.is_some(),
                r.key_id.is_some(),
                r.jwk_thumbprint.is_some(),
                r.api_key_id.is_some(),
            ];
            if selectors.iter().filter(|s| **s).count() != 1 {
                err(
                    at,
                    "a revocation needs exactly one of jti, tokenSha256, subject (with issuedBefore), email (with issuedBefore), sessionId, keyId, jwkThumbprint or apiKeyId",
                );
                continue;
            }
            if r.issuer.is_some()
                && r.subject.is_none()
                && r.email.is_none()
                && r.session_id.is_none()
            {
                err(
                    format!("{at}.issuer"),
                    "issuer narrows a subject or sessionId revocation; it needs subject or sessionId",
                );
                continue;
            }
            if let Some(jti) = &r.jti {
                set.add_jti(jti, expiry);
            } else if let Some(h) = &r.token_sha256 {
                let mut digest = [0u8; 32];
                match hex::decode_to_slice(h, &mut digest) {
                    Ok(()) if h.bytes().all(|b| !b.is_ascii_uppercase()) => {
                        set.add_token(digest, expiry)
                    }
                    _ => err(
                        format!("{at}.tokenSha256"),
                        "must be the lowercase hex SHA-256 of the token (64 characters)",
                    ),
                }
            } else if let Some(sub) = &r.subject {
                match r.issued_before.as_deref().map(parse_time) {
                    Some(Ok(before)) => set.add_subject(sub, before, r.issuer.as_deref(), expiry),
                    Some(Err(e)) => err(format!("{at}.issuedBefore"), &e),
                    None => err(format!("{at}.issuedBefore"), "subject needs issuedBefore"),
                }
            } else if let Some(email) = &r.email {
                match r.issued_before.as_deref().map(parse_time) {
                    Some(Ok(before)) => {
                        set.add_email(&email.to_lowercase(), before, r.issuer.as_deref(), expiry)
                    }
                    Some(Err(e)) => err(format!("{at}.issuedBefore"), &e),
                    None => err(format!("{at}.issuedBefore"), "email needs issuedBefore"),
                }
            } else if let Some(sid) = &r.session_id {
                set.add_session(sid, r.issuer.as_deref(), expiry);
            } else if let Some(kid) = &r.key_id {
                set.add_key_id(kid, expiry);
            } else if let Some(t) = &r.jwk_thumbprint {
                match parse_jwk_thumbprint(t) {
                    Some(t) => set.add_jwk_thumbprint(t, expiry),
                    None => err(
                        format!("{at}.jwkThumbprint"),
                        "must be an RFC 7638 JWK thumbprint: the base64url SHA-256 of the key, 43 characters without padding",
                    ),
                }
            } else if let Some(id) = &r.api_key_id {
                if id.len() == crate::apikey::ID_LEN
                    && id.bytes().all(|b| b.is_ascii_alphanumeric())
                {
                    set.add_api_key_id(id, expiry);
                } else {
                    err(
                        format!("{at}.apiKeyId"),
                        "must be an API key id: the 12 letters and digits after pcl_",
                    );
                }
            }
        }
        (set, errs)
    }
}

/// Decodes a `jwkThumbprint`: strict base64url (no padding, no stray bits) of 32 bytes.
fn parse_jwk_thumbprint(t: &str) -> Option<[u8; 32]> {
    use base64::Engine;
    let mut buf = [0u8; 48];
    match base64::engine::general_purpose::URL_SAFE_NO_PAD.decode_slice(t, &mut buf) {
        Ok(32) if t.len() == 43 => buf[..32].try_into().ok(),
        _ => None,
    }
}

/// RFC 3339 -> seconds since the epoch.
pub(crate) fn parse_time(s: &str) -> Result<i64, String> {
    s.parse::<k8s_openapi::jiff::Timestamp>()
        .map(|t| t.as_second())
        .map_err(|_| format!("{s:?} is not an RFC 3339 time such as 2026-01-31T12:00:00Z"))
}
