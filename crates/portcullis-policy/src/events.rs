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
    pub(crate) streams: Vec<CompiledStream>,
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
    /// Signed with a key the issuer's key set does not hold (yet): answered 503 so the
    /// sender retries once the keys are fetched again, never 400 (which would lose it).
    #[error("the signing key is unknown; retry later")]
    UnknownKey,
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
            KeyLookup::Unknown => return Err(EventError::UnknownKey),
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
        let iat = token::numeric_date(claims, "iat")
            .ok()
            .flatten()
            .unwrap_or(now);
        let expires_at = Some(rfc3339(now.saturating_add(events.retention)));
        let mut revocations = Vec::new();
        if let Some(sub) = sub
            && (sid.is_none() || logout.scope == LogoutScope::Subject)
        {
            // Every token of the user issued up to the logout: its `iat`, on the issuer's
            // clock (the clock the access tokens' `iat` come from), so a replay cannot move
            // the cut-off forward. `iat` has a one-second grain: the cut-off is the next
            // second, as a token issued in the logout's second cannot be told apart.
            revocations.push(Revocation {
                subject: Some(sub.to_owned()),
                issued_before: Some(rfc3339(iat.saturating_add(1))),
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
            // Accepted until `iat + maxAge + skew`: remembered as long.
            remember_until: iat
                .saturating_add(logout.max_age)
                .saturating_add(p.clock_skew.saturating_mul(2)),
            revocations,
        })
    }

    /// The key refetch a logout token signed with an unknown `kid` calls for, when its
    /// issuer's keys are fetched.
    pub fn logout_refetch(&self, policy: &str, raw: &str) -> Option<crate::decision::Refetch> {
        self.policies
            .iter()
            .find(|p| &*p.id == policy)?
            .refetch_for(raw)
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

// === Shared Signals ===

/// The SSF verification event (SSF 1.0 section 8.1.4.1).
pub const VERIFICATION_EVENT: &str =
    "https://schemas.openid.net/secevent/ssf/event-type/verification";
/// The SSF stream-updated event (SSF 1.0 section 8.1.5).
pub const STREAM_UPDATED_EVENT: &str =
    "https://schemas.openid.net/secevent/ssf/event-type/stream-updated";

/// A Shared Signals stream, compiled.
#[derive(Debug, Clone)]
pub(crate) struct CompiledStream {
    pub(crate) info: StreamInfo,
    pub(crate) audience: String,
    pub(crate) algorithms: Vec<jsonwebtoken::Algorithm>,
    /// `None` while the transmitter's keys are not fetched: SETs wait (503).
    pub(crate) keys: Option<crate::keys::KeySet>,
    /// The exact `Authorization` value a push must carry.
    pub(crate) push_auth: Option<PushSecret>,
    pub(crate) formats: Vec<portcullis_api::SubjectFormat>,
    /// The issuer an `opaque` or `email` subject's `sub` belongs to.
    pub(crate) subject_issuer: Option<String>,
    /// The policy's issuers (an `iss_sub` subject must name one).
    pub(crate) policy_issuers: Vec<String>,
    pub(crate) events: Vec<portcullis_api::SsfEvent>,
}

/// A push stream's `Authorization` value: never printed.
#[derive(Clone)]
pub(crate) struct PushSecret(pub(crate) Box<[u8]>);

impl std::fmt::Debug for PushSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PushSecret(<redacted>)")
    }
}

/// What a receiver needs to know of a stream to poll it and ask for verification.
#[derive(Clone, PartialEq, Eq)]
pub struct StreamInfo {
    /// The policy, `namespace/name`.
    pub policy: Arc<str>,
    /// The stream's name.
    pub name: Arc<str>,
    /// The transmitter's issuer.
    pub transmitter: Arc<str>,
    /// The stream's id at the transmitter, if configured.
    pub stream_id: Option<String>,
    /// Poll delivery: endpoint, interval, bearer token.
    pub poll: Option<(String, std::time::Duration, Option<String>)>,
    /// The management API's bearer token (verification requests).
    pub management_token: Option<String>,
    /// How often verification is asked for.
    pub verify_interval: std::time::Duration,
}

impl std::fmt::Debug for StreamInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamInfo")
            .field("policy", &self.policy)
            .field("name", &self.name)
            .field("transmitter", &self.transmitter)
            .field("stream_id", &self.stream_id)
            .field("poll", &self.poll.as_ref().map(|(e, i, _)| (e, i)))
            .finish_non_exhaustive()
    }
}

/// Why a SET was refused: the RFC 8935 section 2.3 error code, and a description.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {description}")]
pub struct SetError {
    /// `invalid_request`, `invalid_key`, `invalid_issuer`, `invalid_audience`,
    /// `authentication_failed`, `access_denied`, or `not_found` (no such stream),
    /// `unavailable` (keys not fetched yet).
    pub code: &'static str,
    /// What is wrong; never holds the SET.
    pub description: &'static str,
}

fn set_err(code: &'static str, description: &'static str) -> SetError {
    SetError { code, description }
}

/// A validated Security Event Token.
#[derive(Debug, Clone)]
pub struct ValidatedSet {
    /// The policy, `namespace/name`.
    pub policy: Arc<str>,
    /// The stream's name.
    pub stream: Arc<str>,
    /// Issuer and `jti` (the replay-cache key, and the poll acknowledgement).
    pub id: EventId,
    /// The event type acted on (or seen).
    pub event: String,
    /// The revocations it asks for (empty: acknowledged and ignored, or a verification).
    pub revocations: Vec<Revocation>,
    /// A verification event's `state`.
    pub verification: Option<String>,
    /// Until when the replay cache must remember it.
    pub remember_until: i64,
}

/// SETs are not replayed older than this (RFC 8417 has no `exp`; SSF forbids it): a SET
/// whose `iat` is older is still applied once (a poll may deliver late) but its `jti`
/// is remembered this long.
const SET_REPLAY_WINDOW: i64 = 7 * 24 * 3600;

impl Snapshot {
    /// The Shared Signals streams of every policy.
    pub fn ssf_streams(&self) -> Vec<StreamInfo> {
        self.policies
            .iter()
            .filter_map(|p| p.events.as_ref())
            .flat_map(|e| e.streams.iter().map(|s| s.info.clone()))
            .collect()
    }

    /// The key refetch a SET of `policy`'s stream `stream` signed with an unknown key (or
    /// arriving before the transmitter's keys were fetched) calls for.
    pub fn ssf_refetch(&self, policy: &str, stream: &str) -> Option<crate::decision::Refetch> {
        let s = self.stream(policy, stream).ok()?;
        let (key, _, _) = crate::remote::ssf_source(&s.info.transmitter);
        Some(crate::decision::Refetch {
            url: key.into(),
            issuer: s.info.transmitter.clone(),
            min_interval: crate::remote::DEFAULT_MIN_REFRESH
                .min(std::time::Duration::from_secs(10)),
        })
    }

    /// Checks a push request's `Authorization` value for `policy`'s stream `stream`
    /// (constant time). `Err` when there is no such push stream.
    pub fn ssf_push_authorized(
        &self,
        policy: &str,
        stream: &str,
        authorization: Option<&[u8]>,
    ) -> Result<bool, SetError> {
        let s = self.stream(policy, stream)?;
        let Some(want) = &s.push_auth else {
            return Err(set_err("not_found", "no push stream of this name"));
        };
        let got = authorization.unwrap_or_default();
        use subtle_eq::ct_eq;
        Ok(ct_eq(&want.0, got))
    }

    fn stream(&self, policy: &str, stream: &str) -> Result<&CompiledStream, SetError> {
        self.policies
            .iter()
            .find(|p| &*p.id == policy)
            .and_then(|p| p.events.as_ref())
            .and_then(|e| e.streams.iter().find(|s| &*s.info.name == stream))
            .ok_or(set_err("not_found", "no stream of this name"))
    }

    /// Validates a Security Event Token of `policy`'s stream `stream` (RFC 8417, SSF 1.0
    /// section 4 and 10): `typ` `secevent+jwt`, signed by the transmitter's keys with an
    /// allowed algorithm, `iss` the transmitter, `aud` holding the stream's audience,
    /// `iat` not in the future, a `jti`, no `sub` or `exp`, and `events`; then maps a
    /// CAEP/RISC event on a subject the stream acts on to revocations. Unknown events and
    /// subjects are valid and map to nothing.
    pub fn security_event(
        &self,
        policy: &str,
        stream: &str,
        raw: &str,
        now: i64,
    ) -> Result<ValidatedSet, SetError> {
        let p = self
            .policies
            .iter()
            .find(|p| &*p.id == policy)
            .ok_or(set_err("not_found", "no such policy"))?;
        let s = self.stream(policy, stream)?;
        if raw.len() > self.max_token_bytes {
            return Err(set_err("invalid_request", "the SET is too large"));
        }
        let jws = token::parse_jws(raw).map_err(|_| set_err("invalid_request", "not a JWS"))?;
        match jws.typ.as_deref().map(str::to_ascii_lowercase).as_deref() {
            Some("secevent+jwt" | "application/secevent+jwt") => {}
            _ => return Err(set_err("invalid_request", "typ must be secevent+jwt")),
        }
        let Some(keys) = &s.keys else {
            return Err(set_err(
                "unavailable",
                "the transmitter's keys are not fetched yet",
            ));
        };
        if !s.algorithms.contains(&jws.alg) {
            return Err(set_err("invalid_key", "the algorithm is not allowed"));
        }
        let key = match keys.lookup(jws.kid.as_deref(), jws.alg) {
            KeyLookup::Found(k) => k,
            // Perhaps rotated in since the last fetch: wait for the keys (503, not acked),
            // never refuse (the transmitter would drop the event).
            KeyLookup::Unknown => {
                return Err(set_err(
                    "unavailable",
                    "the signing key is unknown; retry later",
                ));
            }
            KeyLookup::Mismatch => {
                return Err(set_err("invalid_key", "the key does not fit the algorithm"));
            }
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
            return Err(set_err("invalid_key", "the signature is invalid"));
        }
        let claims = &jws.claims;
        match token::string_claim(claims, "iss") {
            Ok(Some(i)) if i == &*s.info.transmitter => {}
            _ => return Err(set_err("invalid_issuer", "iss is not the transmitter")),
        }
        let aud_ok = match claims.get("aud") {
            Some(Value::String(a)) => *a == s.audience,
            Some(Value::Array(l)) => l.iter().any(|a| a.as_str() == Some(&s.audience)),
            _ => false,
        };
        if !aud_ok {
            return Err(set_err(
                "invalid_audience",
                "aud does not name this receiver",
            ));
        }
        let iat = token::numeric_date(claims, "iat")
            .ok()
            .flatten()
            .ok_or(set_err("invalid_request", "iat is missing"))?;
        if iat > now.saturating_add(p.clock_skew) {
            return Err(set_err("invalid_request", "iat is in the future"));
        }
        // SSF section 4.1.8/4.1.9: no `sub` (the subject is `sub_id`), no `exp`.
        if claims.contains_key("sub") || claims.contains_key("exp") {
            return Err(set_err(
                "invalid_request",
                "a SET holds neither sub nor exp",
            ));
        }
        let jti = token::string_claim(claims, "jti")
            .ok()
            .flatten()
            .ok_or(set_err("invalid_request", "jti is missing"))?;
        let events = claims
            .get("events")
            .and_then(Value::as_object)
            .filter(|e| !e.is_empty())
            .ok_or(set_err("invalid_request", "events is missing"))?;
        // SSF 1.0 section 4.1.4: one event per SET; more would be acknowledged unread.
        if events.len() > 1 {
            return Err(set_err(
                "invalid_request",
                "a SET carries exactly one event",
            ));
        }
        let (event_type, event) = events.iter().next().expect("not empty");
        let mut out = ValidatedSet {
            policy: p.id.clone(),
            stream: s.info.name.clone(),
            id: EventId {
                issuer: s.info.transmitter.clone(),
                jti: jti.into(),
            },
            event: event_type.clone(),
            revocations: Vec::new(),
            verification: None,
            remember_until: now.saturating_add(
                p.events
                    .as_ref()
                    .map_or(SET_REPLAY_WINDOW, |e| e.retention.min(SET_REPLAY_WINDOW)),
            ),
        };
        if event_type == VERIFICATION_EVENT {
            out.verification = Some(
                event
                    .get("state")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
            );
            return Ok(out);
        }
        let Some(kind) = s.events.iter().find(|e| e.uri() == event_type) else {
            return Ok(out);
        };
        let sub_id = claims
            .get("sub_id")
            .or_else(|| event.get("subject"))
            .ok_or(set_err("invalid_request", "sub_id is missing"))?;
        let events_ret = p.events.as_ref().map_or(86_400, |e| e.retention);
        // When it happened, on the transmitter's clock: `event_timestamp` (CAEP) when
        // given and not in the future, else `iat`. A replay cannot move the cut-off.
        let happened = event
            .get("event_timestamp")
            .and_then(Value::as_i64)
            .filter(|t| *t <= now.saturating_add(p.clock_skew))
            .map_or(iat, |t| t.max(iat));
        if happened.saturating_add(events_ret) < now {
            // Older than every token the policy still honours: nothing left to revoke.
            return Ok(out);
        }
        let source = RevocationSource {
            kind: "sharedSignals".into(),
            issuer: s.info.transmitter.to_string(),
            jti: jti.to_owned(),
            event: Some(format!("{}: {}", s.info.name, kind.uri())),
            received_at: Some(rfc3339(now)),
        };
        out.revocations = subject_revocations(s, sub_id, *kind, happened, now, events_ret, &source);
        Ok(out)
    }
}

/// The revocations a subject (RFC 9493) names, by the stream's mapping. A subject in a
/// format the stream does not act on maps to nothing.
fn subject_revocations(
    s: &CompiledStream,
    sub_id: &Value,
    kind: portcullis_api::SsfEvent,
    happened: i64,
    now: i64,
    retention: i64,
    source: &RevocationSource,
) -> Vec<Revocation> {
    use portcullis_api::SubjectFormat as F;
    let entry = |r: Revocation| Revocation {
        expires_at: Some(rfc3339(now.saturating_add(retention))),
        source: Some(source.clone()),
        ..r
    };
    let str_of = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let mut out = Vec::new();
    let add_simple = |v: &Value, out: &mut Vec<Revocation>| {
        let format = v.get("format").and_then(Value::as_str).unwrap_or_default();
        match format {
            "iss_sub" if s.formats.contains(&F::IssSub) => {
                // The named issuer must be one this stream may speak for: `subjects.issuer`
                // when set (else any issuer of the policy).
                if let (Some(iss), Some(sub)) = (str_of(v, "iss"), str_of(v, "sub"))
                    && s.policy_issuers.contains(&iss)
                    && s.subject_issuer.as_ref().is_none_or(|i| *i == iss)
                {
                    out.push(entry(Revocation {
                        subject: Some(sub),
                        issued_before: Some(rfc3339(happened.saturating_add(1))),
                        issuer: Some(iss),
                        ..Default::default()
                    }));
                }
            }
            "email" if s.formats.contains(&F::Email) => {
                if let Some(email) = str_of(v, "email") {
                    out.push(entry(Revocation {
                        // Compared case-insensitively (RFC 5321's local part may be
                        // case-sensitive, but no provider issues two users that differ in
                        // case only; a miss would fail open).
                        email: Some(email.to_lowercase()),
                        issued_before: Some(rfc3339(happened.saturating_add(1))),
                        issuer: s.subject_issuer.clone(),
                        ..Default::default()
                    }));
                }
            }
            "opaque" if s.formats.contains(&F::Opaque) => {
                if let Some(id) = str_of(v, "id") {
                    out.push(entry(Revocation {
                        subject: Some(id),
                        issued_before: Some(rfc3339(happened.saturating_add(1))),
                        issuer: s.subject_issuer.clone(),
                        ..Default::default()
                    }));
                }
            }
            _ => {}
        }
    };
    if sub_id.get("format").and_then(Value::as_str) == Some("complex") {
        // SSF section 3.2: members describe one principal. `user` names whose tokens;
        // a session-revoked event naming a `session` ends only that session.
        let session = sub_id
            .get("session")
            .filter(|_| kind == portcullis_api::SsfEvent::SessionRevoked)
            .and_then(|s| s.get("id"))
            .and_then(Value::as_str);
        // The session's issuer: the stream's subject issuer, else the `user`'s when it is
        // an `iss_sub` of the policy. Without one, a `sid` cannot be scoped: the user's
        // tokens go instead (closed).
        let user_iss = sub_id
            .get("user")
            .filter(|u| u.get("format").and_then(Value::as_str) == Some("iss_sub"))
            .and_then(|u| str_of(u, "iss"))
            .filter(|i| s.policy_issuers.contains(i));
        match (session, s.subject_issuer.clone().or(user_iss)) {
            (Some(sid), Some(issuer)) => out.push(entry(Revocation {
                session_id: Some(sid.to_owned()),
                issuer: Some(issuer),
                ..Default::default()
            })),
            _ => {
                if let Some(user) = sub_id.get("user") {
                    add_simple(user, &mut out);
                }
            }
        }
    } else {
        add_simple(sub_id, &mut out);
    }
    out
}

/// Constant-time comparison of secrets.
mod subtle_eq {
    pub(super) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
        if a.len() != b.len() {
            return false;
        }
        a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}
