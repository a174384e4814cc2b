//! Identity events a TokenPolicy listens to (`spec.identityEvents`): revocations announced
//! by identity providers, by OpenID Back-Channel Logout 1.0 and by Shared Signals (SSF 1.0
//! with CAEP and RISC events). Each accepted event becomes entries of
//! `spec.revocations` (with a `source`), carried to every proxy like any revocation.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Identity events: Back-Channel Logout and Shared Signals streams.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct IdentityEventsSpec {
    /// Accept OpenID Back-Channel Logout 1.0 logout tokens from the policy's issuers,
    /// posted to `/.portcullis/backchannel-logout/<namespace>/<policy>` on any proxy (give
    /// that URL to the identity provider as the client's `backchannel_logout_uri`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub back_channel_logout: Option<BackChannelLogoutSpec>,

    /// How long an event's revocation entries are kept: after this, every token the event
    /// revoked has expired anyway. Default: the policy's `maxTokenLifetime` plus
    /// `clockSkew`, or 24h when the policy sets no `maxTokenLifetime` (tokens living longer
    /// than `retention` would work again after it: set `maxTokenLifetime`).
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(crate::token_policy::DURATION_RULE).message("retention must be a positive duration such as 1h or 24h"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<String>,

    /// Shared Signals (SSF 1.0) streams whose CAEP and RISC events revoke tokens:
    /// `session-revoked`, `credential-change`, `account-disabled` and
    /// `credential-compromise`, delivered by push (RFC 8935) or poll (RFC 8936).
    #[schemars(length(max = 8))]
    #[x_kube(validation = Rule::new("self.all(s, self.exists_one(t, t.name == s.name))").message("sharedSignals names must be unique"))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shared_signals: Vec<SharedSignalsSpec>,
}

/// One Shared Signals stream from a transmitter.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.push) != has(self.poll)").message("a stream is delivered by exactly one of push or poll")
)]
pub struct SharedSignalsSpec {
    /// The stream's name: a DNS label, used in the push URL, status and metrics.
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("name must be a DNS label such as okta"))]
    pub name: String,

    /// The transmitter's issuer: the SETs' `iss`. Its configuration (keys, verification
    /// endpoint) is read from `<transmitter>/.well-known/ssf-configuration`, whose
    /// `issuer` must equal this. `https://` (plain http only for loopback).
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://127.0.0.1') || self.startsWith('http://localhost') || self.startsWith('http://[::1]')").message("transmitter must be an https:// URL (plain http only for loopback addresses)"))]
    pub transmitter: String,

    /// What the SETs' `aud` must hold: this gateway's audience at the transmitter (the
    /// stream's `aud`).
    #[schemars(length(min = 1, max = 2048))]
    pub audience: String,

    /// Signature algorithms accepted (never `none`). Default RS256, PS256, ES256.
    #[schemars(length(max = 8), inner(length(max = 8)))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub algorithms: Vec<String>,

    /// The stream's id at the transmitter: verification requests name it, and
    /// verification and stream-updated events are checked against it.
    #[schemars(length(max = 256))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_id: Option<String>,

    /// Push delivery (RFC 8935): the transmitter POSTs SETs to
    /// `/.portcullis/ssf/<namespace>/<policy>/<name>` on any proxy, with the
    /// `Authorization` header value held in this Secret key (the stream's
    /// `authorization_header`); anything else is refused 401.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<SsfPush>,

    /// Poll delivery (RFC 8936): the receiver (the controller's leader, or the standalone
    /// process) polls the transmitter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll: Option<SsfPoll>,

    /// A bearer token for the transmitter's management API (the verification endpoint),
    /// from a Secret. Without it no verification is asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub management_secret_ref: Option<crate::token_policy::SecretKeyRef>,

    /// How often a verification event is asked for (SSF 1.0 section 8.1.4), as a
    /// duration. Default `1h`; the stream's status shows the last one received.
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(crate::token_policy::DURATION_RULE).message("verifyInterval must be a positive duration such as 1h"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_interval: Option<String>,

    /// Which subject identifier formats (RFC 9493) are acted on, and how they name tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subjects: Option<SsfSubjects>,

    /// The events acted on. Default all four: `session-revoked`, `credential-change`,
    /// `account-disabled`, `credential-compromise`. Others are acknowledged and ignored.
    #[schemars(length(max = 8))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<SsfEvent>,
}

/// Push delivery settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SsfPush {
    /// The Secret key holding the exact `Authorization` header value the transmitter
    /// sends (e.g. `Bearer 0f3a...`).
    pub authorization_secret_ref: crate::token_policy::SecretKeyRef,
}

/// Poll delivery settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SsfPoll {
    /// The poll endpoint (the stream's `delivery.endpoint_url`).
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://127.0.0.1') || self.startsWith('http://localhost') || self.startsWith('http://[::1]')").message("poll.endpoint must be an https:// URL (plain http only for loopback addresses)"))]
    pub endpoint: String,
    /// Time between polls when nothing is pending, as a duration from `1s` to `5m`.
    /// Default `5s`. When a poll says more is available, the next follows at once.
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(crate::token_policy::DURATION_RULE).message("interval must be a positive duration such as 5s"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// A bearer token for the poll endpoint, from a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_secret_ref: Option<crate::token_policy::SecretKeyRef>,
}

/// How a SET's subject (`sub_id`, RFC 9493) names tokens.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SsfSubjects {
    /// Formats acted on, of `iss_sub` (the token's `iss` and `sub`; `iss` must be one of
    /// the policy's issuers), `email` (the token's `email` claim) and `opaque` (the
    /// token's `sub`, of `issuer`). Default all three. Other formats are ignored; in a
    /// `complex` subject, `user` is read (and, for `session-revoked`, `session`, as a
    /// `sid`). Email addresses compare case-insensitively.
    #[schemars(length(max = 3))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub formats: Vec<SubjectFormat>,
    /// The policy issuer this stream speaks for: whose `sub` an `opaque` or `email`
    /// subject names, and the only one an `iss_sub` subject may name. Default: the only
    /// issuer of the policy; with several and none named, `iss_sub` may name any of them
    /// and the other formats need this set.
    #[schemars(length(max = 2048))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
}

/// A subject identifier format (RFC 9493 section 3).
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum SubjectFormat {
    /// `{"format": "iss_sub", "iss": ..., "sub": ...}`.
    IssSub,
    /// `{"format": "email", "email": ...}`.
    Email,
    /// `{"format": "opaque", "id": ...}`.
    Opaque,
}

/// A CAEP or RISC event that revokes tokens.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum SsfEvent {
    /// CAEP `session-revoked`: the subject's sessions (or the one named) ended.
    SessionRevoked,
    /// CAEP `credential-change`: a credential was created, changed or removed.
    CredentialChange,
    /// RISC `account-disabled`.
    AccountDisabled,
    /// RISC `credential-compromise`.
    CredentialCompromise,
}

impl SsfEvent {
    /// Every event, in order.
    pub const ALL: [SsfEvent; 4] = [
        SsfEvent::SessionRevoked,
        SsfEvent::CredentialChange,
        SsfEvent::AccountDisabled,
        SsfEvent::CredentialCompromise,
    ];

    /// The event-type URI.
    pub fn uri(self) -> &'static str {
        match self {
            SsfEvent::SessionRevoked => {
                "https://schemas.openid.net/secevent/caep/event-type/session-revoked"
            }
            SsfEvent::CredentialChange => {
                "https://schemas.openid.net/secevent/caep/event-type/credential-change"
            }
            SsfEvent::AccountDisabled => {
                "https://schemas.openid.net/secevent/risc/event-type/account-disabled"
            }
            SsfEvent::CredentialCompromise => {
                "https://schemas.openid.net/secevent/risc/event-type/credential-compromise"
            }
        }
    }
}

/// Which logout tokens are accepted, and what they revoke.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BackChannelLogoutSpec {
    /// The client IDs this gateway is registered as at the identity providers: a logout
    /// token's `aud` must hold one of them (OpenID Back-Channel Logout 1.0 section 2.6).
    #[schemars(length(min = 1, max = 16), inner(length(min = 1, max = 512)))]
    #[x_kube(validation = Rule::new("self.size() > 0").message("backChannelLogout.audiences must list the client ID the identity provider sends logout tokens to"))]
    pub audiences: Vec<String>,

    /// Issuers (from `spec.issuers`, whose keys verify the logout tokens) accepted. Default:
    /// every issuer of the policy with `jwks`.
    #[schemars(length(max = 16), inner(length(max = 2048)))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub issuers: Vec<String>,

    /// What a logout token naming a session (`sid`) revokes: `Subject` (default: every
    /// token of the user issued before the logout, whether or not it carries `sid`; the
    /// safe choice when access tokens lack `sid`) or `Session` (only tokens whose `sid` is
    /// the session's; choose it only when the provider puts `sid` in access tokens). A
    /// logout token without `sid` always revokes the subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoke: Option<LogoutScope>,

    /// Largest age of a logout token's `iat` accepted, as a duration. Default `2m`.
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(crate::token_policy::DURATION_RULE).message("maxAge must be a positive duration such as 2m"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<String>,
}

/// What a logout token naming a session revokes.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum LogoutScope {
    /// Every token of the subject issued before the logout.
    #[default]
    Subject,
    /// Only the session's tokens (`sid`).
    Session,
}

/// The state of one Shared Signals stream, in the TokenPolicy's status (written by the
/// controller's leader).
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct StreamStatus {
    /// The stream's name.
    pub name: String,
    /// `push` or `poll`.
    pub delivery: String,
    /// When a verification event was last asked for (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification_requested_at: Option<String>,
    /// When the transmitter last answered one with the state asked for (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_at: Option<String>,
    /// When the transmitter was last polled successfully (RFC 3339; poll delivery).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_poll_at: Option<String>,
    /// The last failure talking to the transmitter, if the last attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}
