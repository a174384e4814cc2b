//! Identity events: OpenID Back-Channel Logout 1.0 logout tokens, validated against the
//! policy's issuers and turned into revocation entries (`subject` + `issuedBefore`,
//! `sessionId`), each with a `source` naming the event. Pure: the caller supplies the
//! time, sends the entries on (to the controller, or the standalone overlay) and keeps
//! the replay cache.

use std::sync::Arc;

use portcullis_api::{LogoutScope, Revocation, RevocationSource};
use serde_json::Value;

use crate::keys::KeyLookup;
use crate::policy::PolicyTrust;
use crate::snapshot::Snapshot;
use crate::token;

/// The `events` member of a logout token (Back-Channel Logout 1.0 section 2.4).
pub const BACKCHANNEL_LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// A policy's Back-Channel Logout settings, compiled.
#[derive(Debug, Clone)]
pub(crate) struct CompiledLogout {
    pub(crate) audiences: Vec<String>,
    /// Accepted issuers; empty: every issuer of the policy.
    pub(crate) issuers: Vec<String>,
    pub(crate) scope: LogoutScope,
    /// Largest age of `iat`, seconds.
    pub(crate) max_age: i64,
}

/// A policy's identity-event settings, compiled.
#[derive(Debug, Clone)]
pub(crate) struct CompiledEvents {
    pub(crate) logout: Option<CompiledLogout>,
    /// How long event revocations live, seconds.
    pub(crate) retention: i64,
}

/// Why an identity event was refused. The text is said to the sender (it never holds
/// the token).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// No such policy, or it does not accept this kind of event (404).
    #[error("this policy does not accept back-channel logout tokens")]
    NotAccepted,
    /// The token is not a valid event for this policy (400); the text says why.
    #[error("{0}")]
    Invalid(&'static str),
}

/// An event's `jti`, qualified by its issuer: the replay-cache key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EventId {
    /// `iss`.
    pub issuer: Arc<str>,
    /// `jti`.
    pub jti: Box<str>,
}

/// A validated identity event.
#[derive(Debug, Clone)]
pub struct ValidatedEvent {
    /// The policy, `namespace/name`.
    pub policy: Arc<str>,
    /// Issuer and `jti`.
    pub id: EventId,
    /// Until when the replay cache must remember it (seconds since the epoch): after
    /// this, its `iat` is too old to be accepted again.
    pub remember_until: i64,
    /// The revocation entries it asks for.
    pub revocations: Vec<Revocation>,
}

fn rfc3339(t: i64) -> String {
    k8s_openapi::jiff::Timestamp::from_second(t)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

impl Snapshot {
    /// Validates a Back-Channel Logout token posted for `policy` (`namespace/name`), as
    /// OpenID Back-Channel Logout 1.0 section 2.6 asks: a JWS signed by a key of one of
    /// the policy's issuers with an allowed algorithm (never `none`), `typ` absent or
    /// `logout+jwt`, `iss` accepted, `aud` holding one of `audiences`, `iat` within
    /// `maxAge` and not in the future, `exp` (if any) not passed, an `events` member with
    /// the back-channel-logout event as a JSON object, `sub` or `sid` (or both), a `jti`,
    /// and no `nonce`. `now` is seconds since the epoch. Replays are the caller's to
    /// refuse (by [`ValidatedEvent::id`]).
    pub fn logout_token(
        &self,
        policy: &str,
        raw: &str,
        now: i64,
    ) -> Result<ValidatedEvent, EventError> {
        use EventError::Invalid;
        let p = self
            .policies
            .iter()
            .find(|p| &*p.id == policy)
            .ok_or(EventError::NotAccepted)?;
        let (events, logout) = match &p.events {
            Some(e) => match &e.logout {
                Some(l) => (e, l),
                None => return Err(EventError::NotAccepted),
            },
            None => return Err(EventError::NotAccepted),
        };
        if raw.len() > self.max_token_bytes {
            return Err(Invalid("the logout token is too large"));
        }
        let jws = token::parse_jws(raw).map_err(|_| Invalid("the logout token is not a JWS"))?;
        // Section 2.4: explicit typing with `logout+jwt` is recommended; any other `typ`
        // (an access or ID token) is refused (RFC 8725 section 3.11).
        if let Some(typ) = &jws.typ {
            let t = typ.to_ascii_lowercase();
            if t != "logout+jwt" && t != "application/logout+jwt" {
                return Err(Invalid("typ must be logout+jwt"));
            }
        }
        let claims = &jws.claims;
        let iss = token::string_claim(claims, "iss")
            .ok()
            .flatten()
            .ok_or(Invalid("iss is missing"))?;
        if !logout.issuers.is_empty() && !logout.issuers.iter().any(|i| i == iss) {
            return Err(Invalid(
                "the issuer may not send logout tokens to this policy",
            ));
        }
        let issuer = p
            .issuers
            .get(iss)
            .ok_or(Invalid("the issuer is not trusted by this policy"))?;
        if !issuer.algorithms.contains(&jws.alg) {
            return Err(Invalid("the algorithm is not allowed for this issuer"));
        }
        let key = match issuer.keys.lookup(jws.kid.as_deref(), jws.alg) {
            KeyLookup::Found(k) => k,
            KeyLookup::Unknown => return Err(Invalid("the signing key is unknown")),
            KeyLookup::Mismatch => return Err(Invalid("the key does not fit the algorithm")),
        };
        if !matches!(
            jsonwebtoken::crypto::verify(
                jws.signature,
                jws.signing_input.as_bytes(),
                &key.key,
                jws.alg
            ),
            Ok(true)
        ) {
            return Err(Invalid("the signature is invalid"));
        }
        check_logout_claims(p, logout, claims, now)?;
        let jti = token::string_claim(claims, "jti")
            .ok()
            .flatten()
            .ok_or(Invalid("jti is missing"))?;
        let sub =
            token::string_claim(claims, "sub").map_err(|_| Invalid("sub must be a string"))?;
        let sid =
            token::string_claim(claims, "sid").map_err(|_| Invalid("sid must be a string"))?;
        if sub.is_none() && sid.is_none() {
            return Err(Invalid("a logout token needs sub or sid"));
        }
        let source = RevocationSource {
            kind: "backChannelLogout".into(),
            issuer: iss.to_owned(),
            jti: jti.to_owned(),
            event: None,
            received_at: Some(rfc3339(now)),
        };
        let expires_at = Some(rfc3339(now.saturating_add(events.retention)));
        let mut revocations = Vec::new();
        if let Some(sub) = sub
            && (sid.is_none() || logout.scope == LogoutScope::Subject)
        {
            // Every token of the user issued before now: the logout ended them.
            revocations.push(Revocation {
                subject: Some(sub.to_owned()),
                issued_before: Some(rfc3339(now)),
                issuer: Some(iss.to_owned()),
                expires_at: expires_at.clone(),
                source: Some(source.clone()),
                ..Default::default()
            });
        }
        if let Some(sid) = sid {
            revocations.push(Revocation {
                session_id: Some(sid.to_owned()),
                issuer: Some(iss.to_owned()),
                expires_at,
                source: Some(source),
                ..Default::default()
            });
        }
        Ok(ValidatedEvent {
            policy: p.id.clone(),
            id: EventId {
                issuer: iss.into(),
                jti: jti.into(),
            },
            remember_until: now.saturating_add(logout.max_age + p.clock_skew),
            revocations,
        })
    }

    /// Whether `policy` accepts Back-Channel Logout tokens.
    pub fn accepts_logout_tokens(&self, policy: &str) -> bool {
        self.policies
            .iter()
            .any(|p| &*p.id == policy && p.events.as_ref().is_some_and(|e| e.logout.is_some()))
    }
}

/// Section 2.6, steps 3 to 6: `aud`, `iat`, `exp`, `events`, no `nonce`.
fn check_logout_claims(
    p: &PolicyTrust,
    logout: &CompiledLogout,
    claims: &serde_json::Map<String, Value>,
    now: i64,
) -> Result<(), EventError> {
    use EventError::Invalid;
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => logout.audiences.iter().any(|x| x == a),
        Some(Value::Array(list)) => list.iter().any(|a| {
            a.as_str()
                .is_some_and(|a| logout.audiences.iter().any(|x| x == a))
        }),
        _ => false,
    };
    if !aud_ok {
        return Err(Invalid("aud does not name this gateway's client"));
    }
    let iat = token::numeric_date(claims, "iat")
        .ok()
        .flatten()
        .ok_or(Invalid("iat is missing"))?;
    if iat > now.saturating_add(p.clock_skew) {
        return Err(Invalid("iat is in the future"));
    }
    if now.saturating_sub(iat) > logout.max_age.saturating_add(p.clock_skew) {
        return Err(Invalid("the logout token is too old"));
    }
    if let Ok(Some(exp)) = token::numeric_date(claims, "exp")
        && now.saturating_sub(p.clock_skew) >= exp
    {
        return Err(Invalid("the logout token has expired"));
    }
    let ok = claims
        .get("events")
        .and_then(Value::as_object)
        .and_then(|e| e.get(BACKCHANNEL_LOGOUT_EVENT))
        .is_some_and(Value::is_object);
    if !ok {
        return Err(Invalid("events must hold the back-channel-logout event"));
    }
    // Section 2.4: a logout token must not hold a nonce (so an ID token cannot pass).
    if claims.contains_key("nonce") {
        return Err(Invalid("a logout token must not contain nonce"));
    }
    Ok(())
}
