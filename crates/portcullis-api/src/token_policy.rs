//! `TokenPolicy`: which tokens are trusted, how they are checked, and which are revoked.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::status::ResourceStatus;

/// The CEL rule every duration field carries: Go-style positive durations (`30s`, `5m`,
/// `1h30m`, `500ms`). A leading minus sign or an unknown unit fails it.
pub(crate) const DURATION_RULE: &str = "self.matches('^([0-9]+(\\\\.[0-9]+)?(ns|us|ms|s|m|h))+$')";

/// A TokenPolicy says which bearer tokens are trusted (issuers, audiences, algorithms and
/// keys), how their lifetime and claims are checked, which claims reach the backend, and
/// which tokens are revoked. ApiRoutes name it in `policyRef`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "portcullis.dev",
    version = "v1alpha1",
    kind = "TokenPolicy",
    plural = "tokenpolicies",
    singular = "tokenpolicy",
    shortname = "tp",
    category = "portcullis",
    namespaced,
    status = "ResourceStatus",
    derive = "PartialEq",
    doc = "TokenPolicy says which bearer tokens are trusted, how their lifetime and claims are checked, and which are revoked.",
    printcolumn(
        name = "Issuers",
        type_ = "string",
        json_path = ".spec.issuers[*].issuer"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Programmed\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        priority = 1,
        json_path = ".status.conditions[?(@.type==\"Programmed\")].reason"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.issuers.size() > 0 || has(self.apiKeys)").message("spec.issuers must list at least one trusted issuer (or spec.apiKeys must select API keys)")
)]
pub struct TokenPolicySpec {
    /// Trusted token issuers. A token whose `iss` claim names none of them is refused.
    /// May be empty only when `apiKeys` is set.
    #[schemars(length(max = 16))]
    #[x_kube(
        validation = Rule::new("self.filter(i, has(i.introspection)).size() <= 1").message("at most one issuer per policy may use introspection: an opaque token names no issuer, so only one endpoint can judge it")
    )]
    #[serde(default)]
    pub issuers: Vec<IssuerSpec>,
    /// API keys this policy accepts: Secrets of the policy's namespace labelled
    /// `portcullis.dev/api-key: "true"` and matching `selector`. Each Secret holds the SHA-256
    /// of one key (never the key), its consumer, scopes and optional expiry; create them with
    /// `portcullis apikey create`. A key is sent as `Authorization: Bearer pcl_...` or in
    /// the `header` named here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_keys: Option<ApiKeysSpec>,

    /// The claim that holds the token's scopes: a space-separated string (`scope`, as in
    /// RFC 8693) or an array of strings (`scp`). Default `scope`.
    #[schemars(length(min = 1, max = 128))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope_claim: Option<String>,

    /// Leeway allowed when checking `exp`, `nbf` and `iat` against the clock, as a
    /// duration (`30s`, `1m`). Default `30s`.
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(DURATION_RULE).message("clockSkew must be a positive duration such as 30s, 5m or 1h"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_skew: Option<String>,

    /// Refuse tokens whose lifetime (`exp - iat`) is longer than this duration (`15m`,
    /// `1h`). Tokens without `iat` are refused when this is set. Unset: no limit.
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(DURATION_RULE).message("maxTokenLifetime must be a positive duration such as 15m or 1h"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_token_lifetime: Option<String>,

    /// Claims every token must carry (e.g. `sub`, `jti`).
    #[schemars(length(max = 32), inner(length(min = 1, max = 128)))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_claims: Vec<String>,

    /// Claims copied into request headers for the backend, as `claim: Header-Name`
    /// (e.g. `sub: X-User`). A client-sent header of the same name is removed first, so it
    /// cannot be forged. An array claim is sent as its elements joined with `,`; other
    /// non-string values as JSON. A claim that cannot be sent faithfully refuses the
    /// token (401, `unforwardable_claim`) rather than reaching the backend without it:
    /// control characters (CR, LF, NUL, tab...), leading or trailing whitespace (backends
    /// trim it), or a `,` in a string claim or in an element of an array claim (the list
    /// separator of RFC 9110 section 5.3). Non-ASCII text is sent as raw UTF-8 bytes.
    #[schemars(extend("maxProperties" = 32, "additionalProperties" = {"type": "string", "maxLength": 64}))]
    #[x_kube(validation = Rule::new("self.all(k, self[k].matches('^[A-Za-z0-9][-A-Za-z0-9]*$'))").message("forwardClaims values must be HTTP header names such as X-User (letters, digits and dashes)"))]
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub forward_claims: BTreeMap<String, String>,

    /// Revoked tokens. Each entry names exactly one of `jti`, `tokenSha256`, `subject`
    /// (with `issuedBefore`), `keyId` or `jwkThumbprint`, and may carry `expiresAt`, after
    /// which it is ignored and pruned.
    #[schemars(length(max = 5000))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revocations: Vec<Revocation>,

    /// LLM token budgets per consumer, on the LLM routes that use this policy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub llm_budgets: Vec<crate::quota::LlmBudgetSpec>,

    /// Request rate limits per consumer, on every route that uses this policy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub rate_limits: Vec<crate::quota::RateLimitSpec>,

    /// Revocations announced by identity providers: OpenID Back-Channel Logout tokens
    /// and Shared Signals events, turned into `revocations` entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_events: Option<crate::events::IdentityEventsSpec>,
}

/// A trusted issuer: its name, accepted audiences, and how its tokens are checked: signed
/// JWTs verified with keys from `jwks`, opaque tokens judged by the issuer's RFC 7662
/// `introspection` endpoint, or both. With both, a token shaped like a compact JWS (three
/// dot-separated parts) is verified as a JWT and never sent to the endpoint; any other
/// token is introspected. Either judge is authoritative, so the shape chooses the judge,
/// never the verdict.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.jwks) || has(self.introspection)").message("an issuer needs jwks (signed JWTs), introspection (opaque tokens), or both"),
    validation = Rule::new("!has(self.jwks) || (has(self.algorithms) && self.algorithms.size() > 0)").message("algorithms must list at least one signature algorithm, e.g. RS256"),
    validation = Rule::new("!has(self.jwks) || !has(self.algorithms) || !self.algorithms.exists(a, a.startsWith('HS')) || has(self.jwks.secretRef)").message("HS256/HS384/HS512 need a shared secret kept in a Secret: set jwks.secretRef"),
    validation = Rule::new("!has(self.algorithms) || !self.algorithms.exists(a, a.startsWith('HS')) || self.algorithms.all(a, a.startsWith('HS'))").message("do not mix HS* with public-key algorithms in one issuer: a shared secret and a public key cannot share a key set"),
    validation = Rule::new("!has(self.jwks) || !has(self.jwks.discovery) || !self.jwks.discovery || self.issuer.startsWith('https://') || self.issuer.startsWith('http://127.0.0.1') || self.issuer.startsWith('http://localhost') || self.issuer.startsWith('http://[::1]')").message("jwks.discovery reads <issuer>/.well-known/openid-configuration, so the issuer must be an https:// URL (plain http only for loopback addresses)"),
    validation = Rule::new("!has(self.requireType) || !self.requireType || !has(self.acceptedTypes) || self.acceptedTypes.size() > 0").message("requireType with an empty acceptedTypes would refuse every token: list the accepted types, e.g. [at+jwt]")
)]
pub struct IssuerSpec {
    /// The issuer identifier, compared exactly with the token's `iss` claim
    /// (e.g. `https://auth.example.com/`). With `jwks.discovery` it is also where the
    /// OpenID configuration is read from.
    #[schemars(length(min = 1, max = 512))]
    pub issuer: String,

    /// Audiences accepted in the token's `aud` claim; a token must name at least one. For
    /// introspected tokens, the answer's `aud` (or, without one, its `client_id`).
    #[schemars(length(max = 16), inner(length(min = 1, max = 512)))]
    #[x_kube(validation = Rule::new("self.size() > 0").message("audiences must list at least one audience: Portcullis refuses tokens not meant for it"))]
    pub audiences: Vec<String>,

    /// Signature algorithms accepted from this issuer (an allow-list): RS256, RS384, RS512,
    /// PS256, PS384, PS512, ES256, ES384, EdDSA, or HS256/384/512 with a shared secret from
    /// a Secret. `none` is never accepted. Required with `jwks`; unused with
    /// `introspection`.
    #[schemars(length(max = 12), inner(length(max = 16)))]
    #[x_kube(
        validation = Rule::new("self.all(a, a.lowerAscii() != 'none')").message("algorithm none is never allowed: tokens must be signed"),
        validation = Rule::new("self.all(a, a.lowerAscii() == 'none' || a in ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'EdDSA', 'HS256', 'HS384', 'HS512'])").message("unknown algorithm: use RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA, HS256, HS384 or HS512")
    )]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub algorithms: Vec<String>,

    /// Where the verification keys of this issuer's signed JWTs come from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<JwksSource>,

    /// JWS `typ` header values accepted in this issuer's signed JWTs (explicit typing,
    /// RFC 8725 section 3.11). Compared case-insensitively, with an `application/` prefix
    /// ignored (RFC 7515 section 4.1.9): `at+jwt` also accepts `application/at+jwt` and
    /// `AT+JWT`. Default `[JWT, at+jwt]`. A token with no `typ` is accepted unless
    /// `requireType` is set.
    ///
    /// An issuer that types its access tokens `at+jwt` (RFC 9068 section 2.1; npm
    /// oidc-provider does) can set `acceptedTypes: [at+jwt]` so its ID tokens, typed `JWT`,
    /// are refused here. Whatever this list says, `logout+jwt`, `secevent+jwt` and
    /// `dpop+jwt` are never accepted, and neither is a token carrying an `events` claim
    /// (a Security Event Token, RFC 8417, or an OpenID Back-Channel Logout token) or a
    /// `typ` claim of `ID`, `Logout`, `Refresh` or `Offline` (Keycloak's ID, logout and
    /// refresh tokens). Applies to signed JWTs only, not to introspected tokens.
    #[schemars(
        length(max = 8),
        inner(
            length(min = 1, max = 64),
            regex(pattern = "^[A-Za-z0-9!#$&^_.+-]+(/[A-Za-z0-9!#$&^_.+-]+)?$")
        )
    )]
    #[x_kube(validation = Rule::new("self.all(t, !t.lowerAscii().matches('^(application/)?(logout|secevent|dpop)[+]jwt$'))").message("acceptedTypes cannot list logout+jwt, secevent+jwt or dpop+jwt: logout tokens, security event tokens and DPoP proofs are never access tokens"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted_types: Option<Vec<String>>,

    /// Refuse this issuer's signed JWTs that have no `typ` header. Default false: a token
    /// without `typ` is accepted (many issuers leave it out), one with a `typ` must match
    /// `acceptedTypes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_type: Option<bool>,

    /// Judge this issuer's opaque tokens with its OAuth 2.0 introspection endpoint
    /// (RFC 7662). At most one introspection issuer per policy: an opaque token names no
    /// issuer, so there must be only one endpoint to ask. In a policy that also trusts
    /// signed JWTs, only tokens that are not shaped like a JWS are introspected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub introspection: Option<IntrospectionSpec>,

    /// DPoP (RFC 9449) for this issuer's tokens. A token bound to a key (`cnf.jkt`) is
    /// always accepted only with `Authorization: DPoP` and a valid proof of that key, never
    /// as `Bearer`; `mode` says what happens to tokens that are not bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dpop: Option<DpopSpec>,

    /// Certificate-bound tokens (RFC 8705 section 3) for this issuer. A token whose
    /// `cnf.x5t#S256` names a certificate is always accepted only from a client that
    /// presented that certificate over TLS to the proxy (`--tls-client-ca` verifies it).
    /// `Required`: every token must be certificate-bound. `Optional` (default) and `Off`:
    /// unbound tokens are bearer tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_bound: Option<CertificateBinding>,
}

/// Whether an issuer's tokens must be bound to a client certificate (RFC 8705).
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum CertificateBinding {
    /// Same as `Optional`: a bound token is never accepted without its certificate (it
    /// would be a bearer token a thief could replay); others are bearer tokens.
    Off,
    /// Bound tokens need their certificate; others are bearer tokens.
    #[default]
    Optional,
    /// Every token must be bound and come with its certificate.
    Required,
}

/// Sender-constrained tokens by DPoP (RFC 9449).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DpopSpec {
    /// `Required`: every token must be DPoP-bound and come with a proof (a token without
    /// `cnf.jkt` is refused). `Optional` (default): bound tokens need a proof, others may
    /// be sent as `Bearer`. `Off`: same as `Optional` (a bound token is never accepted
    /// without its proof: it would be a bearer token a thief could replay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<DpopMode>,
    /// Algorithms a proof may be signed with (asymmetric only). Default ES256, PS256,
    /// RS256, EdDSA.
    #[schemars(length(max = 8), inner(length(max = 8)))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub algorithms: Vec<String>,
    /// How old a proof's `iat` may be, as a duration. Default `60s`. A proof's `jti` is
    /// remembered this long (plus `clockSkew`) on each proxy: a proof is refused when seen
    /// again by the same proxy; another proxy could accept it once within this window.
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(DURATION_RULE).message("maxAge must be a positive duration such as 60s"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<String>,
    /// Server-provided nonces (RFC 9449 section 9). Every proof must carry a `nonce` this
    /// gateway issued, so a proof made in advance (by someone who held the client's key
    /// for a while) stops working when its nonce expires.
    ///
    /// A proof without a current nonce is answered 401 `use_dpop_nonce` with a fresh one
    /// in `DPoP-Nonce` (section 9: the client retries with it). The answer to an accepted
    /// request carries the next nonce once the current one is about to expire.
    ///
    /// Nonces hold no state: each is a MAC of its time window under the Secret's key, so
    /// every proxy accepts every other's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<DpopNonceSpec>,
}

/// Server-provided DPoP nonces.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DpopNonceSpec {
    /// A key in a Secret of this namespace holding at least 32 random bytes (e.g. the
    /// output of `openssl rand -base64 48`): the key nonces are made with. Keep it secret,
    /// since whoever has it can make nonces. Changing it ends every nonce at once, and
    /// clients retry with a new one.
    pub secret_ref: SecretKeyRef,
    /// How long a nonce is current, as a duration from `10s` to `1h`; default `5m`. A
    /// nonce is accepted in its window and the next, so for `lifetime` to twice that.
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(DURATION_RULE).message("lifetime must be a positive duration such as 5m"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime: Option<String>,
}

/// Whether an issuer's tokens must be DPoP-bound.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum DpopMode {
    /// Bound tokens need their proof; others are bearer tokens.
    Off,
    /// Bound tokens need their proof; others are bearer tokens.
    #[default]
    Optional,
    /// Every token must be bound and come with its proof.
    Required,
}

/// Key material for an issuer: exactly one of `inline`, `secretRef`, `uri` or
/// `discovery: true`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("[has(self.inline), has(self.secretRef), has(self.uri), has(self.discovery) && self.discovery].exists_one(x, x)").message("jwks needs exactly one of inline, secretRef, uri or discovery: true"),
    validation = Rule::new("!has(self.caBundleSecretRef) || has(self.uri) || (has(self.discovery) && self.discovery)").message("caBundleSecretRef only applies to keys fetched over HTTPS (uri or discovery)")
)]
pub struct JwksSource {
    /// A JWKS document written as YAML (`keys: [{kty: RSA, kid: ..., n: ..., e: AQAB}]`).
    /// Public keys only; shared secrets (`kty: oct`) belong in a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<JwkSet>,

    /// A key in a Secret of this namespace holding a JWKS (JSON), a PEM public key, or,
    /// for HS* algorithms, the raw shared secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,

    /// An HTTPS URL serving the issuer's JWKS, fetched and refreshed so keys can rotate
    /// without restarts. In a cluster the controller fetches it and sends the keys to
    /// every proxy.
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://127.0.0.1') || self.startsWith('http://localhost') || self.startsWith('http://[::1]')").message("jwks.uri must use https:// (plain http only for loopback addresses)"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,

    /// OpenID Connect discovery: read `jwks_uri` from
    /// `<issuer>/.well-known/openid-configuration` (whose `issuer` must equal this
    /// issuer), then fetch and refresh that key set as with `uri`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery: Option<bool>,

    /// Fetched keys are refreshed when the document's `Cache-Control: max-age` runs out,
    /// but never sooner than this; it also bounds refetches for tokens with an unknown
    /// `kid` (at most one per issuer per interval). A duration of at least `1s` (shorter
    /// counts as `1s`); default `1m`.
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(DURATION_RULE).message("minRefreshInterval must be a positive duration such as 30s or 1m"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_refresh_interval: Option<String>,

    /// Fetched keys are refreshed at least this often, whatever `max-age` says. A
    /// duration; default `1h`; never below `minRefreshInterval`.
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(DURATION_RULE).message("maxRefreshInterval must be a positive duration such as 10m or 1h"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_refresh_interval: Option<String>,

    /// A key in a Secret of this namespace holding PEM CA
    /// certificates trusted for the HTTPS fetch in addition to the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle_secret_ref: Option<SecretKeyRef>,
}

/// An OAuth 2.0 token introspection endpoint (RFC 7662) and how to call it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct IntrospectionSpec {
    /// The endpoint URL: https:// (plain http only for loopback addresses), verified with
    /// the system's CA roots (a private CA is not supported here yet).
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://127.0.0.1') || self.startsWith('http://localhost') || self.startsWith('http://[::1]')").message("introspection.endpoint must use https:// (plain http only for loopback addresses)"))]
    pub endpoint: String,

    /// A Secret of this namespace with the client credentials Portcullis authenticates
    /// with (`client_secret_basic`): keys `client-id` and `client-secret`.
    pub credentials_secret_ref: SecretRef,

    /// How long an active answer is reused (never past the token's `exp`). Scopes and
    /// revocations are still checked on every request. A duration of at least `1s`
    /// (shorter rounds up); default `60s`.
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(DURATION_RULE).message("cacheTTL must be a positive duration such as 30s or 5m"))]
    #[serde(default, rename = "cacheTTL", skip_serializing_if = "Option::is_none")]
    pub cache_ttl: Option<String>,

    /// How long an inactive answer is reused, so a bad token sent again and again costs one
    /// call per interval (distinct bad tokens are bounded by the proxy's cap on calls in
    /// flight per endpoint). A duration of at least `1s`; default `10s`.
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(DURATION_RULE).message("negativeCacheTTL must be a positive duration such as 5s or 1m"))]
    #[serde(
        default,
        rename = "negativeCacheTTL",
        skip_serializing_if = "Option::is_none"
    )]
    pub negative_cache_ttl: Option<String>,

    /// Time allowed for one call, connect included. A duration; default `2s`.
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(DURATION_RULE).message("timeout must be a positive duration such as 500ms or 2s"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

/// Which API keys a TokenPolicy accepts, and where clients send them.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeysSpec {
    /// Selects API-key Secrets of the policy's namespace by label (all of `matchLabels`);
    /// only Secrets that also carry `portcullis.dev/api-key: "true"` are considered. An
    /// empty selector selects every API-key Secret of the namespace.
    #[serde(default)]
    pub selector: ApiKeySelector,
    /// A request header that may carry the key instead of `Authorization: Bearer`, e.g.
    /// `x-api-key` (the default). The header is removed before the request is forwarded.
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(
        validation = Rule::new("self.matches('^[A-Za-z0-9][-A-Za-z0-9]*$')").message("apiKeys.header must be an HTTP header name (letters, digits and dashes)"),
        validation = Rule::new("!(self.lowerAscii() in ['authorization', 'proxy-authorization', 'cookie', 'set-cookie', 'dpop', 'host', 'content-length', 'transfer-encoding', 'connection', 'te', 'upgrade', 'trailer', 'keep-alive', 'proxy-connection', 'expect', 'user-agent', 'forwarded', 'via', 'x-request-id', 'x-real-ip']) && !self.lowerAscii().startsWith('content-') && !self.lowerAscii().startsWith('accept') && !self.lowerAscii().startsWith('x-forwarded-')").message("apiKeys.header cannot be Authorization, Cookie, DPoP, Host, a framing, content or forwarding header: send keys as Authorization: Bearer pcl_... or in a header of your own such as x-api-key")
    )]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
}

/// A label selector (equality only).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeySelector {
    /// Labels a Secret must carry, each with exactly this value.
    #[schemars(extend("maxProperties" = 16))]
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
}

/// A Secret of the same namespace, by name.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct SecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A key inside a Secret of the same namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret's data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A JSON Web Key Set (RFC 7517).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct JwkSet {
    /// The keys.
    #[schemars(length(max = 64))]
    pub keys: Vec<Jwk>,
}

/// One public JSON Web Key (RFC 7517/7518/8037). Private parameters are not accepted.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct Jwk {
    /// Key type: `RSA`, `EC` or `OKP`.
    #[schemars(length(max = 8))]
    #[x_kube(validation = Rule::new("self in ['RSA', 'EC', 'OKP']").message("kty must be RSA, EC or OKP; shared secrets (oct) belong in a Secret"))]
    pub kty: String,
    /// Key ID, matched against the token header's `kid`.
    #[schemars(length(max = 256))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// The one algorithm this key is for, if the issuer says so.
    #[schemars(length(max = 16))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    /// Intended use; keys marked `enc` are ignored.
    #[schemars(length(max = 8))]
    #[serde(default, rename = "use", skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
    /// Curve, for EC (`P-256`, `P-384`) and OKP (`Ed25519`) keys.
    #[schemars(length(max = 16))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    /// RSA modulus, base64url. Quote the key in YAML (`"n": ...`): YAML 1.1 readers such
    /// as kubectl take a bare `n` for the boolean false.
    #[schemars(length(max = 4096))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    /// RSA public exponent, base64url (usually `AQAB`).
    #[schemars(length(max = 16))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    /// EC x coordinate or OKP public key, base64url.
    #[schemars(length(max = 256))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    /// EC y coordinate, base64url. Quote the key in YAML (`"y": ...`): YAML 1.1 readers
    /// such as kubectl take a bare `y` for the boolean true.
    #[schemars(length(max = 256))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
}

/// A revoked token or set of tokens. Exactly one selector: `jti`, `tokenSha256`,
/// `subject` + `issuedBefore`, `sessionId`, `keyId`, `jwkThumbprint`, or `apiKeyId`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("[has(self.jti), has(self.tokenSha256), has(self.subject), has(self.email), has(self.sessionId), has(self.keyId), has(self.jwkThumbprint), has(self.apiKeyId)].exists_one(x, x)").message("a revocation needs exactly one of jti, tokenSha256, subject (with issuedBefore), email (with issuedBefore), sessionId, keyId, jwkThumbprint or apiKeyId"),
    validation = Rule::new("(has(self.subject) || has(self.email)) == has(self.issuedBefore)").message("subject (or email) and issuedBefore go together: they revoke the subject's tokens issued before that instant"),
    validation = Rule::new("!has(self.issuer) || has(self.subject) || has(self.email) || has(self.sessionId)").message("issuer narrows a subject, email or sessionId revocation to one issuer's tokens; it needs one of them")
)]
pub struct Revocation {
    /// Revoke the token with this `jti` claim.
    #[schemars(length(min = 1, max = 512))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,

    /// Revoke the token whose SHA-256 (lowercase hex of the whole compact token, as in
    /// `printf %s "$TOKEN" | sha256sum`) is this. `portcullis revoke --token -` computes it
    /// without storing the token. It also revokes every other valid encoding of the same
    /// signed token: an ES256/ES384 signature `(r, s)` can be re-encoded as `(r, n - s)`,
    /// which verifies too, and is refused as well.
    #[schemars(length(min = 64, max = 64), regex(pattern = "^[0-9a-f]{64}$"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_sha256: Option<String>,

    /// Revoke this subject's (`sub`) tokens issued before `issuedBefore` ("log out
    /// everywhere"). Tokens without `iat` are treated as issued before.
    #[schemars(length(min = 1, max = 512))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,

    /// With `subject` or `email`: an RFC 3339 instant; the subject's tokens with an
    /// earlier `iat` are revoked.
    #[schemars(length(max = 64))]
    #[schemars(extend("format" = "date-time"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_before: Option<String>,

    /// With `issuedBefore`: revoke the tokens whose `email` claim is this, issued before
    /// that instant (a Shared Signals subject in the `email` format).
    #[schemars(length(min = 1, max = 512))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,

    /// Revoke every token whose `sid` claim (the OpenID session id) is this: the tokens of
    /// one login session, as ended by a Back-Channel Logout token carrying `sid`.
    #[schemars(length(min = 1, max = 512))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,

    /// With `subject`, `email` or `sessionId`: only tokens whose `iss` is this issuer are revoked
    /// (a `sub` or `sid` is unique only within its issuer). Unset: every issuer's.
    #[schemars(length(min = 1, max = 2048))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,

    /// Revoke every token signed with this key ID (a leaked signing key): every token
    /// verified by the key whose JWK `kid` this is, whether or not the token names it,
    /// and every token whose header `kid` is this. For a key without a `kid` (a PEM key,
    /// a kid-less JWK), use `jwkThumbprint`.
    #[schemars(length(min = 1, max = 256))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,

    /// Revoke every token verified by the key with this RFC 7638 JWK thumbprint: the
    /// base64url (no padding, 43 characters) SHA-256 of the key's required members in
    /// lexicographic order without whitespace, e.g. for RSA
    /// `{"e":"AQAB","kty":"RSA","n":"..."}` (`step crypto jwk thumbprint`, `jose jwk thp`).
    /// Names any key, with or without a `kid`, from a JWKS, a PEM public key or a Secret.
    #[schemars(length(min = 43, max = 43), regex(pattern = "^[A-Za-z0-9_-]{43}$"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwk_thumbprint: Option<String>,

    /// Revoke the API key with this id (the 12 characters after `pcl_`; the Secret's
    /// `keyId`). Travels to every proxy like any revocation, without touching the Secret.
    #[schemars(length(min = 12, max = 12), regex(pattern = "^[0-9A-Za-z]{12}$"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_id: Option<String>,

    /// An RFC 3339 instant after which this entry is ignored and pruned (set it to the
    /// revoked token's `exp`; after that the token is dead anyway).
    #[schemars(length(max = 64))]
    #[schemars(extend("format" = "date-time"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,

    /// Where the entry came from, when an identity provider's event made it (written by
    /// the gateway; informational, and the replay check for the event's `jti`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<RevocationSource>,
}

/// The identity event a revocation entry was made from.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RevocationSource {
    /// `backChannelLogout` (an OpenID Back-Channel Logout token) or `sharedSignals` (a
    /// Security Event Token from a Shared Signals stream).
    #[schemars(length(max = 32))]
    pub kind: String,
    /// The event's issuer (`iss`).
    #[schemars(length(max = 2048))]
    pub issuer: String,
    /// The event's `jti`: an event is applied once.
    #[schemars(length(max = 512))]
    pub jti: String,
    /// The event type (for Shared Signals, e.g.
    /// `https://schemas.openid.net/secevent/caep/event-type/session-revoked`) or stream.
    #[schemars(length(max = 512))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// When the gateway received it (RFC 3339).
    #[schemars(length(max = 64))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_at: Option<String>,
}
