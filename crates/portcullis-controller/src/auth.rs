//! Who may open a config stream.
//!
//! In a cluster a proxy presents its projected ServiceAccount token (audience
//! `portcullis`); the controller asks the API server (TokenReview) who it is and checks
//! the answer against an allow-list of ServiceAccounts. Outside a cluster, proxies present
//! a shared bearer token read from a file. Either way, anyone else gets 401 (no or bad
//! credentials) or 403 (a valid identity that is not allowed), and nothing more.
//! Tokens are compared and cached by their SHA-256 only.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::PostParams;
use sha2::{Digest, Sha256};

/// Recent TokenReview answers by token SHA-256: the identity (None: not authenticated)
/// and when it was asked.
type ReviewCache = HashMap<[u8; 32], (Option<String>, Instant)>;

/// The audience proxies' ServiceAccount tokens must carry.
pub const AUDIENCE: &str = "portcullis";

/// Why a stream was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// No bearer token.
    #[error("no bearer token")]
    Missing,
    /// The token is not valid.
    #[error("invalid token")]
    Invalid,
    /// A valid identity that is not on the allow-list.
    #[error("{0} may not subscribe")]
    Forbidden(String),
    /// The TokenReview could not be made.
    #[error("token review failed: {0}")]
    Review(String),
}

impl AuthError {
    /// 401, 403 or 503.
    pub fn status(&self) -> u16 {
        match self {
            AuthError::Missing | AuthError::Invalid => 401,
            AuthError::Forbidden(_) => 403,
            AuthError::Review(_) => 503,
        }
    }

    /// A metric label.
    pub fn label(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing_token",
            AuthError::Invalid => "invalid_token",
            AuthError::Forbidden(_) => "forbidden",
            AuthError::Review(_) => "review_failed",
        }
    }
}

/// How proxies authenticate.
pub enum ProxyAuth {
    /// A shared token (outside a cluster), kept as its SHA-256.
    SharedToken([u8; 32]),
    /// TokenReview against the API server, with an allow-list of ServiceAccounts
    /// (`namespace/name`).
    TokenReview {
        /// The API client.
        client: kube::Client,
        /// Allowed ServiceAccounts, `namespace/name`.
        allowed: Vec<String>,
        /// Recent answers by token SHA-256: identity (or None: invalid) and when asked.
        cache: Mutex<ReviewCache>,
    },
}

impl std::fmt::Debug for ProxyAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProxyAuth::SharedToken(_) => f.write_str("SharedToken"),
            ProxyAuth::TokenReview { allowed, .. } => f
                .debug_struct("TokenReview")
                .field("allowed", allowed)
                .finish(),
        }
    }
}

const REVIEW_CACHE: Duration = Duration::from_secs(60);

impl ProxyAuth {
    /// A shared token.
    pub fn shared(token: &str) -> Self {
        ProxyAuth::SharedToken(Sha256::digest(token.trim().as_bytes()).into())
    }

    /// TokenReview with an allow-list of `namespace/name` ServiceAccounts.
    pub fn token_review(client: kube::Client, allowed: Vec<String>) -> Self {
        ProxyAuth::TokenReview {
            client,
            allowed,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Checks an `Authorization` header value; returns the proxy's identity.
    pub async fn check(&self, authorization: Option<&[u8]>) -> Result<String, AuthError> {
        let token = authorization
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| {
                let (scheme, rest) = h.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::Missing)?;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        match self {
            ProxyAuth::SharedToken(expected) => {
                // Compare digests: constant-time enough, and the token is never kept.
                if digest == *expected {
                    Ok("shared-token".into())
                } else {
                    Err(AuthError::Invalid)
                }
            }
            ProxyAuth::TokenReview {
                client,
                allowed,
                cache,
            } => {
                let cached = {
                    let c = cache.lock().unwrap_or_else(|e| e.into_inner());
                    c.get(&digest)
                        .filter(|(_, at)| at.elapsed() < REVIEW_CACHE)
                        .map(|(id, _)| id.clone())
                };
                let identity = match cached {
                    Some(id) => id,
                    None => {
                        let id = review(client, token).await?;
                        let mut c = cache.lock().unwrap_or_else(|e| e.into_inner());
                        c.retain(|_, (_, at)| at.elapsed() < REVIEW_CACHE);
                        c.insert(digest, (id.clone(), Instant::now()));
                        id
                    }
                };
                let identity = identity.ok_or(AuthError::Invalid)?;
                let sa = identity
                    .strip_prefix("system:serviceaccount:")
                    .map(|s| s.replacen(':', "/", 1));
                match sa {
                    Some(sa) if allowed.contains(&sa) => Ok(sa),
                    _ => Err(AuthError::Forbidden(identity)),
                }
            }
        }
    }
}

/// Asks the API server who holds `token`; None when it is not authenticated.
async fn review(client: &kube::Client, token: &str) -> Result<Option<String>, AuthError> {
    let api: kube::Api<TokenReview> = kube::Api::all(client.clone());
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.to_owned()),
            audiences: Some(vec![AUDIENCE.into()]),
        },
        ..Default::default()
    };
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        api.create(&PostParams::default(), &review),
    )
    .await
    .map_err(|_| AuthError::Review("timed out".into()))?
    .map_err(|e| AuthError::Review(e.to_string()))?;
    let status = answer.status.unwrap_or_default();
    if status.authenticated != Some(true) {
        return Ok(None);
    }
    if !status
        .audiences
        .unwrap_or_default()
        .iter()
        .any(|a| a == AUDIENCE)
    {
        return Ok(None);
    }
    Ok(status.user.and_then(|u| u.username))
}
