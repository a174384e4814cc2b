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
