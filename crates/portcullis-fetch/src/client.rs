//! A small HTTPS client for key sets and introspection.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;

type Inner = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Why a fetch failed. Never contains a token or a client secret.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum FetchError {
    /// Not https, and not plain http to a loopback address.
    #[error("{0}: only https:// URLs are fetched (plain http only for loopback addresses)")]
    NotAllowed(String),
    /// The CA bundle holds no usable certificate.
    #[error("the CA bundle holds no usable PEM certificate")]
    BadCaBundle,
    /// Connecting or sending failed.
    #[error("{url}: {message}")]
    Transport {
        /// The URL.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The whole exchange took longer than allowed.
    #[error("{0}: timed out")]
    Timeout(String),
    /// The body is larger than allowed.
    #[error("{url}: the response is larger than {limit} bytes")]
    TooLarge {
        /// The URL.
        url: String,
        /// The limit.
        limit: usize,
    },
}

/// A response, its body read whole.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

/// Pooled clients, one per CA bundle.
pub struct HttpClient {
    connect_timeout: Duration,
    clients: Mutex<HashMap<u64, Inner>>,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new(Duration::from_secs(5))
    }
}

pub use portcullis_policy::url_allowed;

impl HttpClient {
    /// A client with this connect timeout.
    pub fn new(connect_timeout: Duration) -> Self {
        Self {
            connect_timeout,
            clients: Mutex::new(HashMap::new()),
        }
    }

    fn client(&self, ca_pem: &[Vec<u8>]) -> Result<Inner, FetchError> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        ca_pem.hash(&mut h);
        let key = h.finish();
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        for pem in ca_pem {
            let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
                .filter_map(Result::ok)
                .collect();
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(FetchError::BadCaBundle);
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|_| FetchError::BadCaBundle)?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(self.connect_timeout));
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(https);
        clients.insert(key, client.clone());
        Ok(client)
    }

    /// GET `url` (JSON wanted).
    pub async fn get(
        &self,
        url: &str,
        ca_pem: &[Vec<u8>],
        timeout: Duration,
        max_bytes: usize,
    ) -> Result<Response, FetchError> {
        let req = Request::builder()
            .method(Method::GET)
            .uri(url)
            .header(header::ACCEPT, "application/json")
            .header(header::USER_AGENT, "portcullis")
            .body(Full::new(Bytes::new()))
            .map_err(|e| FetchError::Transport {
                url: url.into(),
                message: e.to_string(),
            })?;
        self.send(url, req, ca_pem, timeout, max_bytes).await
    }

    /// POST a form with HTTP Basic client authentication (`client_secret_basic`, RFC 6749
    /// section 2.3.1: id and secret are form-encoded before the Basic encoding).
    pub async fn post_form(
        &self,
        url: &str,
        client_id: &str,
        client_secret: &str,
        form: &[(&str, &str)],
        timeout: Duration,
        max_bytes: usize,
    ) -> Result<Response, FetchError> {
        use base64::Engine;
        let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let basic = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            enc(client_id),
            enc(client_secret)
        ));
        let body: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let req = Request::builder()
            .method(Method::POST)
            .uri(url)
            .header(header::ACCEPT, "application/json")
            .header(header::USER_AGENT, "portcullis")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::AUTHORIZATION, format!("Basic {basic}"))
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| FetchError::Transport {
                url: url.into(),
                message: e.to_string(),
            })?;
        self.send(url, req, &[], timeout, max_bytes).await
    }

    /// POST a JSON body, with `bearer` as `Authorization: Bearer ...` when given.
    pub async fn post_json(
        &self,
        url: &str,
        bearer: Option<&str>,
        body: &serde_json::Value,
        timeout: Duration,
        max_bytes: usize,
    ) -> Result<Response, FetchError> {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(url)
            .header(header::ACCEPT, "application/json")
            .header(header::USER_AGENT, "portcullis")
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(t) = bearer {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| FetchError::Transport {
                url: url.into(),
                message: e.to_string(),
            })?;
        self.send(url, req, &[], timeout, max_bytes).await
    }

    async fn send(
        &self,
        url: &str,
        req: Request<Full<Bytes>>,
        ca_pem: &[Vec<u8>],
        timeout: Duration,
        max_bytes: usize,
    ) -> Result<Response, FetchError> {
        if !url_allowed(url) {
            return Err(FetchError::NotAllowed(url.into()));
        }
        let client = self.client(ca_pem)?;
        let exchange = async {
            let resp = client
                .request(req)
                .await
                .map_err(|e| FetchError::Transport {
                    url: url.into(),
                    message: error_chain(&e),
                })?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, max_bytes)
                .collect()
                .await
                .map_err(|e| {
                    if e.downcast_ref::<http_body_util::LengthLimitError>()
                        .is_some()
                    {
                        FetchError::TooLarge {
                            url: url.into(),
                            limit: max_bytes,
                        }
                    } else {
                        FetchError::Transport {
                            url: url.into(),
                            message: e.to_string(),
                        }
                    }
                })?
                .to_bytes();
            Ok(Response {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| FetchError::Timeout(url.into()))?
    }
}

/// An error and its sources, joined with `: ` (hyper's own messages are terse).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// The `max-age` of a `Cache-Control` header; `no-cache`/`no-store` count as zero.
pub fn max_age(headers: &HeaderMap) -> Option<Duration> {
    let mut out = None;
    for v in headers.get_all(header::CACHE_CONTROL) {
        let Ok(v) = v.to_str() else { continue };
        for d in v.split(',') {
            let d = d.trim();
            if d.eq_ignore_ascii_case("no-cache") || d.eq_ignore_ascii_case("no-store") {
                return Some(Duration::ZERO);
            }
            if let Some((k, val)) = d.split_once('=')
                && k.trim().eq_ignore_ascii_case("max-age")
                && let Ok(secs) = val.trim().trim_matches('"').parse::<u64>()
            {
                out = Some(Duration::from_secs(secs));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_or_loopback_http() {
        assert!(url_allowed("https://idp.example.com/jwks"));
        assert!(url_allowed("http://127.0.0.1:8080/jwks"));
        assert!(url_allowed("http://localhost/jwks"));
        assert!(url_allowed("http://[::1]:9/jwks"));
        assert!(!url_allowed("http://idp.example.com/jwks"));
        assert!(!url_allowed("http://10.0.0.1/jwks"));
        assert!(!url_allowed("ftp://127.0.0.1/jwks"));
        assert!(!url_allowed("not a url"));
    }

    #[test]
    fn cache_control_max_age() {
        let mut h = HeaderMap::new();
        assert_eq!(max_age(&h), None);
        h.insert(
            header::CACHE_CONTROL,
            "public, max-age=300".parse().unwrap(),
        );
        assert_eq!(max_age(&h), Some(Duration::from_secs(300)));
        h.insert(header::CACHE_CONTROL, "no-store".parse().unwrap());
        assert_eq!(max_age(&h), Some(Duration::ZERO));
        h.insert(header::CACHE_CONTROL, "max-age=junk".parse().unwrap());
        assert_eq!(max_age(&h), None);
    }

    proptest::proptest! {
        /// Any Cache-Control value a provider sends is read without panicking, and a
        /// `max-age=N` among other directives is found.
        #[test]
        fn cache_control_never_panics(v in "[ -~]{0,64}", n in 0u64..1_000_000, other in "[a-z-]{1,12}") {
            let mut h = HeaderMap::new();
            if let Ok(v) = http::HeaderValue::from_str(&v) {
                h.insert(header::CACHE_CONTROL, v);
                let _ = max_age(&h);
            }
            h.insert(header::CACHE_CONTROL, format!("{other}, max-age={n}").parse().unwrap());
            let want = if other == "no-cache" || other == "no-store" { 0 } else { n };
            proptest::prop_assert_eq!(max_age(&h), Some(Duration::from_secs(want)));
        }
    }
}
