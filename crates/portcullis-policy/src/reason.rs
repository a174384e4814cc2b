//! Why a request was refused: [`DenyReason`], a closed set (a metric label), each with its
//! HTTP status and RFC 6750 error code.

/// Why a request was refused: a closed set, usable as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DenyReason {
    /// No route or rule matches host, path and method.
    NoRoute,
    /// No credentials were sent.
    MissingToken,
    /// More than one credential: an `Authorization` header and an API-key header, or two
    /// API-key headers. "Clients MUST NOT use more than one method to transmit the token in
    /// each request" (RFC 6750 section 2); refused rather than choosing one.
    MultipleCredentials,
    /// An API key whose id no selected Secret holds, whose SHA-256 does not match, or sent
    /// to a route whose policy takes no API keys.
    UnknownApiKey,
    /// An API key revoked by `revocations[].apiKeyId`.
    RevokedApiKey,
    /// An `Authorization` header with a scheme other than Bearer.
    UnsupportedScheme,
    /// A malformed `Authorization` header (no token, bad characters).
    MalformedHeader,
    /// More than one `Authorization` header.
    DuplicateHeader,
    /// A token in the query string (`access_token=`); refused without being verified.
    TokenInQuery,
    /// The token is longer than the limit.
    TokenTooLarge,
    /// Not a compact JWS: bad segments, base64 or JSON, duplicate or mistyped claims.
    MalformedToken,
    /// An encrypted token (JWE).
    EncryptedToken,
    /// `alg: none`.
    AlgorithmNone,
    /// An algorithm not on the issuer's allow-list.
    AlgorithmNotAllowed,
    /// A `crit` header: extensions Portcullis does not understand.
    CriticalHeader,
    /// `iss` names no trusted issuer.
    UnknownIssuer,
    /// No key with the token's `kid` (or, without `kid`, no single fitting key).
    UnknownKey,
    /// The key found does not fit the algorithm (e.g. HS256 against an RSA key).
    KeyAlgorithmMismatch,
    /// The signature does not verify.
    BadSignature,
    /// `aud` names none of the accepted audiences.
    WrongAudience,
    /// `exp` has passed.
    Expired,
    /// `nbf` or `iat` lies in the future.
    NotYetValid,
    /// The token has no `exp`.
    MissingExpiry,
    /// `exp - iat` exceeds the policy's `maxTokenLifetime`.
    LifetimeTooLong,
    /// A claim the policy requires is missing.
    MissingClaim,
    /// Revoked by `jti`.
    RevokedJti,
    /// Revoked by the token's SHA-256.
    RevokedToken,
    /// Revoked by `subject` + `issuedBefore`.
    RevokedSubject,
    /// Revoked by `sessionId`: its `sid` names a session that was logged out.
    RevokedSession,
    /// Verified by a revoked key: its JWK `kid`, the token's header `kid`, or the key's
    /// RFC 7638 thumbprint is revoked.
    RevokedKey,
    /// Not an access token (explicit typing, RFC 8725 section 3.11): a JWS `typ` the
    /// issuer does not accept or that is never accepted (`logout+jwt`, `secevent+jwt`,
    /// `dpop+jwt`), no `typ` where the issuer requires one, an `events` claim (a Security
    /// Event or Back-Channel Logout token), or a `typ` claim naming an ID, logout or
    /// refresh token.
    WrongTokenType,
    /// A claim the policy forwards (`forwardClaims`) cannot be sent faithfully as a header
    /// value: control characters, leading or trailing whitespace, or a `,` in a single
    /// value or an array element (the list separator, RFC 9110 section 5.3). The request is
    /// refused rather than forwarded without the identity the backend relies on.
    ///
    /// 401 `invalid_token`, not 403: the token is not usable at this resource server for a
    /// reason that lies in the token's own content ("invalid for other reasons", RFC 6750
    /// section 3.1), as with a mistyped claim, and no scope would help (403
    /// `insufficient_scope` would tell the client to ask for more scope). For an
    /// introspected token the first answer says `unforwardable_claim`; the verdict is then
    /// cached as inactive, so repeats within `negativeCacheTTL` say `inactive_token`.
    UnforwardableClaim,
    /// Valid token, missing scopes.
    InsufficientScope,
    /// The introspection endpoint says the token is not active (unknown, expired,
    /// revoked at the provider), or its answer does not fit the policy.
    InactiveToken,
    /// The introspection endpoint could not be reached in time: the token was not judged,
    /// so the answer is 503 with `Retry-After`, not 401.
    IntrospectionUnavailable,
    /// Credentials sent over plain HTTP to a route that requires TLS (`requireTls`): refused
    /// before the token is read (RFC 6750 section 5.3), 403.
    CleartextCredentials,
    /// A certificate-bound token (`cnf.x5t#S256`, RFC 8705 section 3) from a client that
    /// did not present that certificate over TLS.
    CertificateBoundToken,
    /// Where the issuer requires certificate-bound tokens, a token that is not bound.
    CertificateRequired,
    /// A DPoP proof (RFC 9449 section 4.3) that does not check out: missing, malformed,
    /// mistyped, an algorithm not allowed, a private or wrong key, another method, URI or
    /// token, too old (401 `invalid_dpop_proof`).
    InvalidDpopProof,
    /// A DPoP proof already used (its `jti`, section 11.1).
    DpopReplay,
    /// A DPoP-bound token (`cnf.jkt`) sent as `Bearer` (section 7.1), or a token bound to a
    /// key the request does not prove.
    DpopBoundToken,
    /// `Authorization: DPoP` with a token that is not DPoP-bound, or, where the issuer
    /// requires DPoP, a token that is not bound at all.
    DpopRequired,
    /// A DPoP proof without a nonce this gateway issued, or with an expired one, where the
    /// issuer's `dpop.nonce` asks for them (RFC 9449 section 9: 401 `use_dpop_nonce` and a
    /// fresh nonce in `DPoP-Nonce`).
    UseDpopNonce,
    /// MCP route: a browser `Origin` that is neither the resource's nor allowed (403, the
    /// Streamable HTTP transport's DNS-rebinding defence).
    McpOrigin,
    /// MCP route: a method or tool the route refuses whatever the token holds (403).
    McpDenied,
    /// The route is `Retired`, or past its `sunsetAt` (410 Gone, RFC 8594 section 1: the
    /// resource is gone for good); no credential is read.
    Retired,
}

impl DenyReason {
    /// Every reason, for pre-registering metric label values.
    pub const ALL: &'static [DenyReason] = &[
        DenyReason::NoRoute,
        DenyReason::MissingToken,
        DenyReason::MultipleCredentials,
        DenyReason::UnknownApiKey,
        DenyReason::RevokedApiKey,
        DenyReason::UnsupportedScheme,
        DenyReason::MalformedHeader,
        DenyReason::DuplicateHeader,
        DenyReason::TokenInQuery,
        DenyReason::TokenTooLarge,
        DenyReason::MalformedToken,
        DenyReason::EncryptedToken,
        DenyReason::AlgorithmNone,
        DenyReason::AlgorithmNotAllowed,
        DenyReason::CriticalHeader,
        DenyReason::UnknownIssuer,
        DenyReason::UnknownKey,
        DenyReason::KeyAlgorithmMismatch,
        DenyReason::BadSignature,
        DenyReason::WrongAudience,
        DenyReason::Expired,
        DenyReason::NotYetValid,
        DenyReason::MissingExpiry,
        DenyReason::LifetimeTooLong,
        DenyReason::MissingClaim,
        DenyReason::RevokedJti,
        DenyReason::RevokedToken,
        DenyReason::RevokedSubject,
        DenyReason::RevokedKey,
        DenyReason::WrongTokenType,
        DenyReason::UnforwardableClaim,
        DenyReason::InsufficientScope,
        DenyReason::InactiveToken,
        DenyReason::IntrospectionUnavailable,
        DenyReason::RevokedSession,
        DenyReason::CleartextCredentials,
        DenyReason::CertificateBoundToken,
        DenyReason::CertificateRequired,
        DenyReason::InvalidDpopProof,
        DenyReason::DpopReplay,
        DenyReason::DpopBoundToken,
        DenyReason::DpopRequired,
        DenyReason::UseDpopNonce,
        DenyReason::McpOrigin,
        DenyReason::McpDenied,
        DenyReason::Retired,
    ];

    /// The HTTP status this reason becomes.
    pub fn status(self) -> u16 {
        use DenyReason::*;
        match self {
            NoRoute => 404,
            MalformedHeader | DuplicateHeader | TokenInQuery | MultipleCredentials => 400,
            InsufficientScope | McpOrigin | McpDenied | CleartextCredentials => 403,
            IntrospectionUnavailable => 503,
            Retired => 410,
            _ => 401,
        }
    }

    /// The RFC 6750 error code, if the challenge carries one.
    pub fn error_code(self) -> Option<&'static str> {
        use DenyReason::*;
        match self {
            NoRoute
            | MissingToken
            | UnsupportedScheme
            | IntrospectionUnavailable
            | McpOrigin
            | McpDenied
            | Retired => None,
            MalformedHeader | DuplicateHeader | TokenInQuery | MultipleCredentials => {
                Some("invalid_request")
            }
            InsufficientScope => Some("insufficient_scope"),
            InvalidDpopProof | DpopReplay => Some("invalid_dpop_proof"),
            UseDpopNonce => Some("use_dpop_nonce"),
            _ => Some("invalid_token"),
        }
    }

    /// A stable snake_case label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        use DenyReason::*;
        match self {
            NoRoute => "no_route",
            MissingToken => "missing_token",
            MultipleCredentials => "multiple_credentials",
            UnknownApiKey => "unknown_api_key",
            RevokedApiKey => "revoked_api_key",
            UnsupportedScheme => "unsupported_scheme",
            MalformedHeader => "malformed_header",
            DuplicateHeader => "duplicate_header",
            TokenInQuery => "token_in_query",
            TokenTooLarge => "token_too_large",
            MalformedToken => "malformed_token",
            EncryptedToken => "encrypted_token",
            AlgorithmNone => "algorithm_none",
            AlgorithmNotAllowed => "algorithm_not_allowed",
            CriticalHeader => "critical_header",
            UnknownIssuer => "unknown_issuer",
            UnknownKey => "unknown_key",
            KeyAlgorithmMismatch => "key_algorithm_mismatch",
            BadSignature => "bad_signature",
            WrongAudience => "wrong_audience",
            Expired => "expired",
            NotYetValid => "not_yet_valid",
            MissingExpiry => "missing_expiry",
            LifetimeTooLong => "lifetime_too_long",
            MissingClaim => "missing_claim",
            RevokedJti => "revoked_jti",
            RevokedToken => "revoked_token",
            RevokedSubject => "revoked_subject",
            RevokedSession => "revoked_session",
            InvalidDpopProof => "invalid_dpop_proof",
            CleartextCredentials => "cleartext_credentials",
            CertificateBoundToken => "certificate_bound_token",
            CertificateRequired => "certificate_required",
            DpopReplay => "dpop_replay",
            DpopBoundToken => "dpop_bound_token",
            DpopRequired => "dpop_required",
            UseDpopNonce => "use_dpop_nonce",
            McpOrigin => "mcp_origin",
            McpDenied => "mcp_denied",
            Retired => "retired",
            RevokedKey => "revoked_key",
            WrongTokenType => "wrong_token_type",
            UnforwardableClaim => "unforwardable_claim",
            InsufficientScope => "insufficient_scope",
            InactiveToken => "inactive_token",
            IntrospectionUnavailable => "introspection_unavailable",
        }
    }

    /// The `error_description` sent to the client: short, and never containing the token.
    pub fn description(self) -> &'static str {
        use DenyReason::*;
        match self {
            NoRoute => "no route",
            MissingToken | UnsupportedScheme => "a bearer token is required",
            MalformedHeader => "the Authorization header is not a valid Bearer credential",
            DuplicateHeader => "more than one Authorization header",
            MultipleCredentials => "more than one credential was sent",
            UnknownApiKey => "the API key is not valid here",
            TokenInQuery => "tokens are accepted only in the Authorization header",
            TokenTooLarge => "the token is too large",
            MalformedToken => "the token is malformed",
            EncryptedToken => "encrypted tokens are not accepted",
            AlgorithmNone => "unsigned tokens are not accepted",
            AlgorithmNotAllowed => "the token's algorithm is not allowed",
            CriticalHeader => "the token has critical header parameters",
            UnknownIssuer => "the token's issuer is not trusted",
            UnknownKey => "the token's signing key is unknown",
            KeyAlgorithmMismatch => "the token's algorithm does not fit its key",
            BadSignature => "the token's signature is invalid",
            WrongAudience => "the token is not meant for this audience",
            Expired => "the token has expired",
            NotYetValid => "the token is not valid yet",
            MissingExpiry => "the token has no expiry",
            LifetimeTooLong => "the token's lifetime exceeds the maximum",
            MissingClaim => "the token lacks a required claim",
            RevokedJti | RevokedToken | RevokedSubject | RevokedSession | RevokedKey
            | RevokedApiKey => "the token has been revoked",
            McpOrigin => "this origin may not call the MCP server",
            InvalidDpopProof => "the DPoP proof is invalid",
            CertificateBoundToken => {
                "the token is bound to a client certificate this connection did not present"
            }
            CertificateRequired => "a token bound to the client's certificate is required",
            CleartextCredentials => {
                "credentials were sent without TLS: use https, and treat the token as disclosed"
            }
            DpopReplay => "the DPoP proof was already used",
            DpopBoundToken => "the token is bound to a key: send it as DPoP with a proof",
            DpopRequired => "a DPoP-bound token and its proof are required",
            UseDpopNonce => "Resource server requires nonce in DPoP proof",
            McpDenied => "this MCP method or tool is not available",
            Retired => "this API has been retired",
            WrongTokenType => "the token is not an access token",
            UnforwardableClaim => "a claim of the token cannot be passed on",
            InsufficientScope => "the token lacks a required scope",
            InactiveToken => "the token is not active",
            IntrospectionUnavailable => "the token could not be checked; retry later",
        }
    }
}

impl DenyReason {
    /// Whether the challenge for this reason is a `DPoP` one (RFC 9449 section 7.1).
    pub fn dpop_challenge(self) -> bool {
        matches!(
            self,
            DenyReason::InvalidDpopProof
                | DenyReason::DpopReplay
                | DenyReason::DpopBoundToken
                | DenyReason::DpopRequired
                | DenyReason::UseDpopNonce
        )
    }
}

impl std::fmt::Display for DenyReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
