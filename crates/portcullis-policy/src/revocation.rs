//! Revoked tokens of one policy, held in hash maps so every request checks them in O(1),
//! whether or not its token came from the cache.

use std::collections::HashMap;

use crate::decision::DenyReason;
use crate::token::{TokenDigest, VerifiedToken};

/// An entry's expiry: `None` lives forever; `Some(t)` is ignored from `t` on.
type Expiry = Option<i64>;

/// The revocations of one TokenPolicy.
#[derive(Debug, Default, Clone)]
pub(crate) struct RevocationSet {
    jti: HashMap<Box<str>, Expiry>,
    token: HashMap<[u8; 32], Expiry>,
    /// subject -> (issuedBefore, expiry) entries.
    subject: HashMap<Box<str>, Vec<(i64, Expiry)>>,
    key_id: HashMap<Box<str>, Expiry>,
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

    pub(crate) fn add_subject(&mut self, subject: &str, issued_before: i64, expiry: Expiry) {
        self.len += 1;
        self.subject
            .entry(subject.into())
            .or_default()
            .push((issued_before, expiry));
    }

    pub(crate) fn add_key_id(&mut self, kid: &str, expiry: Expiry) {
        self.len += 1;
        self.key_id
            .entry(kid.into())
            .and_modify(|e| merge(e, expiry))
            .or_insert(expiry);
    }

    /// Number of entries, expired ones included.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether the token is revoked at `now`, and how.
    pub(crate) fn check(
        &self,
        digest: &TokenDigest,
        token: &VerifiedToken,
        now: i64,
    ) -> Result<(), DenyReason> {
        if self.len == 0 {
            return Ok(());
        }
        if self.token.get(&digest.0).is_some_and(|e| live(e, now)) {
            return Err(DenyReason::RevokedToken);
        }
        if let Some(jti) = &token.jti
            && self.jti.get(&**jti).is_some_and(|e| live(e, now))
        {
            return Err(DenyReason::RevokedJti);
        }
        if let Some(kid) = &token.key_id
            && self.key_id.get(&**kid).is_some_and(|e| live(e, now))
        {
            return Err(DenyReason::RevokedKey);
        }
        if let Some(sub) = &token.subject
            && let Some(entries) = self.subject.get(&**sub)
        {
            // A token without `iat` cannot prove it came after the cut-off: revoked.
            let iat = token.issued_at.unwrap_or(i64::MIN);
            if entries
                .iter()
                .any(|(before, exp)| live(exp, now) && iat < *before)
            {
                return Err(DenyReason::RevokedSubject);
            }
        }
        Ok(())
    }

    /// Number of entries whose `expiresAt` has passed at `now` (ignored, awaiting pruning).
    pub(crate) fn expired(&self, now: i64) -> usize {
        let dead = |e: &Expiry| !live(e, now);
        self.jti.values().filter(|e| dead(e)).count()
            + self.token.values().filter(|e| dead(e)).count()
            + self.key_id.values().filter(|e| dead(e)).count()
            + self
                .subject
                .values()
                .flat_map(|v| v.iter())
                .filter(|(_, e)| dead(e))
                .count()
    }
}
