//! The AI gateway: routes whose backend is an LLM provider (`spec.backend.llm`).
//!
//! ```text
//! allowed request ─▶ operation (path ending + method, or the rule's prompt)
//!                 ─▶ body: read ≤ maxRequestBytes, JSON, model ─▶ 404 unknown model
//!                 ─▶ model scope (model:<name>, model:*) ──────▶ 403 insufficient_scope
//!                 ─▶ provider request: model mapped, translated (OpenAI -> Anthropic),
//!                    stream_options.include_usage forced on OpenAI streams
//!                 ─▶ exchange task (spawned: survives the client): key pool pick,
//!                    401/429 -> key out of rotation, retried once with the next key
//!                        ├─ JSON: read, translate back, meter, answer
//!                        └─ SSE: parse, translate event by event into a channel the
//!                           client reads; client gone -> keep reading (bounded) to
//!                           meter; usage recorded when the stream ends
//! ```
//!
//! The client's `Authorization` never reaches the provider: the provider request is built
//! from scratch with the provider key; the key never reaches the client or a log (its
//! header value is marked sensitive; logs name it `secret/key`). Errors are answered in
//! the format of the API the client called (OpenAI or Anthropic).

mod budget;
mod keys;
mod metrics;
pub mod translate;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use portcullis_api::{LlmKeyHeader, LlmProvider};
use portcullis_policy::Principal;
use portcullis_policy::llm::{LlmRoute, grants};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

pub use keys::{CooldownReason, KeyPools, MAX_COOLDOWN};
pub use metrics::GenAiMetrics;
use translate::{
    ChatStream, MessagesStream, MessagesToChat, StreamTranslator, Untranslatable, Usage,
    anthropic_error, anthropic_error_to_openai, anthropic_usage, chat_to_messages,
    messages_to_chat, openai_error, openai_usage,
};

use crate::metrics::Metrics;
use crate::pipeline::{
    ProxyBody, ProxyError, RequestBody, SseEvent, SseParser, UpstreamClient, read_limited, response,
};

/// The `anthropic-version` sent when the client named none.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";
/// Most bytes of a non-streamed provider answer read.
const MAX_RESPONSE_BYTES: usize = 32 << 20;
/// Most bytes of an SSE event.
const MAX_EVENT_BYTES: usize = 1 << 20;
/// After the client went away, how long and how many more bytes the stream is read for
/// its usage.
pub const DRAIN_MAX_TIME: Duration = Duration::from_secs(300);
/// See [`DRAIN_MAX_TIME`].
pub const DRAIN_MAX_BYTES: usize = 64 << 20;

/// The LLM call an allowed request becomes: what the exchange needs from the decision.
pub(crate) struct LlmCall {
    pub(crate) llm: Arc<LlmRoute>,
    pub(crate) route_id: Arc<str>,
    pub(crate) rule: usize,
    pub(crate) principal: Option<Arc<Principal>>,
    pub(crate) path: String,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    /// The budgets and rate limits of the route's policy.
    pub(crate) quotas: Option<Arc<portcullis_policy::quota::Quotas>>,
}

/// What the client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `POST .../chat/completions`.
    Chat,
    /// `POST .../embeddings`.
    Embeddings,
    /// `GET .../models`.
    Models,
    /// `POST .../messages` (Anthropic).
    Messages,
    /// `POST` to a prompt rule.
    Prompt,
}

impl Operation {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Chat => "chat",
            Operation::Embeddings => "embeddings",
            Operation::Models => "models",
            Operation::Messages => "messages",
            Operation::Prompt => "prompt",
        }
    }

    /// The API whose error format the client reads.
    fn api(self) -> Api {
        if self == Operation::Messages {
            Api::Anthropic
        } else {
            Api::OpenAi
        }
    }
}

/// The operation of a request on an LLM route: the rule's prompt, else the API endpoint
/// the path names (`LlmRoute::endpoint`: exact, no extra segments or trailing slash).
pub fn operation(method: &Method, endpoint: Option<&str>, prompt_rule: bool) -> Option<Operation> {
    match (method, endpoint) {
        (&Method::POST, _) if prompt_rule => Some(Operation::Prompt),
        (&Method::POST, Some("/chat/completions")) => Some(Operation::Chat),
        (&Method::POST, Some("/embeddings")) => Some(Operation::Embeddings),
        (&Method::POST, Some("/messages")) => Some(Operation::Messages),
        (&Method::GET, Some("/models" | "/models/")) => Some(Operation::Models),
        _ => None,
    }
}

/// Top-level request fields passed to the provider, by operation. Anything else is
/// refused (400): provider-specific fields can pick another model than the one whose
/// scope was checked (a router's `models`/`fallbacks`), or add cost that is not counted
/// as tokens (`service_tier`, built-in tools, stored conversations).
const CHAT_FIELDS: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "n",
    "stream",
    "stream_options",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "response_format",
    "seed",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "user",
    "reasoning_effort",
];
const EMBEDDINGS_FIELDS: &[&str] = &["model", "input", "encoding_format", "dimensions", "user"];
const MESSAGES_FIELDS: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "system",
    "temperature",
    "top_p",
    "top_k",
    "stop_sequences",
    "stream",
    "tools",
    "tool_choice",
    "metadata",
    "thinking",
];

/// The first field of `req` that `op` does not pass on, if any.
fn unknown_field(op: Operation, req: &Value) -> Option<String> {
    let allowed = match op {
        Operation::Chat | Operation::Prompt => CHAT_FIELDS,
        Operation::Embeddings => EMBEDDINGS_FIELDS,
        Operation::Messages => MESSAGES_FIELDS,
        Operation::Models => return None,
    };
    req.as_object()?
        .keys()
        .find(|k| !allowed.contains(&k.as_str()))
        .cloned()
}

/// The API a client called, for the format of errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    OpenAi,
    Anthropic,
}

/// An error answer in the called API's format.
fn api_error(api: Api, status: StatusCode, code: &str, message: &str) -> Response<ProxyBody> {
    let body = match api {
        Api::OpenAi => {
            let kind = match status.as_u16() {
                401 => "authentication_error",
                403 => "permission_error",
                404 => "invalid_request_error",
                429 => "rate_limit_error",
                400 | 413 | 422 => "invalid_request_error",
                _ => "api_error",
            };
            openai_error(message, kind, Some(code))
        }
        Api::Anthropic => {
            let kind = match status.as_u16() {
                401 => "authentication_error",
                403 => "permission_error",
                404 => "not_found_error",
                413 => "request_too_large",
                429 => "rate_limit_error",
                400 | 422 => "invalid_request_error",
                503 | 529 => "overloaded_error",
                _ => "api_error",
            };
            anthropic_error(kind, message)
        }
    };
    response(status, "application/json", body.to_string())
}

/// What the exchange answers the request with.
pub(crate) enum Reply {
    /// A whole response.
    Full(Response<ProxyBody>),
    /// A stream: the body is fed by the exchange task.
    Stream(Response<ProxyBody>),
}

/// How the provider's answer is turned into the client's.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// OpenAI chat from an OpenAI-family provider; `wants_usage`: the client asked for
    /// the usage chunk.
    Chat { wants_usage: bool },
    /// OpenAI chat from Anthropic.
    ChatFromMessages { wants_usage: bool },
    /// Embeddings.
    Embeddings,
    /// Native Anthropic messages.
    Messages,
}

/// Everything the exchange task needs, owned.
struct Exchange {
    client: UpstreamClient,
    pools: Arc<KeyPools>,
    metrics: Arc<Metrics>,
    llm: Arc<LlmRoute>,
    route_id: Arc<str>,
    model: Arc<str>,
    operation: Operation,
    shape: Shape,
    stream: bool,
    provider_path: &'static str,
    body: Bytes,
    request_id: HeaderValue,
    /// The metric label of the consumer (hashed, capped).
    consumer: Arc<str>,
    /// The consumer itself and the token's fingerprint, for the usage line.
    consumer_id: Option<Arc<str>>,
    token: String,
    anthropic_headers: Vec<(header::HeaderName, HeaderValue)>,
    connect_timeout: Duration,
    request_timeout: Duration,
    /// The call's budget reservations, settled by [`Exchange::meter`] (or with nothing
    /// when the exchange ends without usage).
    budget: std::sync::Mutex<Option<budget::BudgetHold>>,
}

impl crate::pipeline::Pipeline {
    /// Serves an allowed request on an LLM route.
    pub(crate) async fn llm_phase(
        &self,
        head: http::request::Parts,
        body: Incoming,
        call: LlmCall,
        request_id: HeaderValue,
        token: Option<portcullis_policy::Fingerprint>,
    ) -> Reply {
        let started = Instant::now();
        let has_prompt = call.llm.prompts.contains_key(&call.rule);
        let endpoint = call.llm.endpoint(call.rule, &call.path);
        let Some(op) = operation(&head.method, endpoint, has_prompt) else {
            return Reply::Full(api_error(
                Api::OpenAi,
                StatusCode::NOT_FOUND,
                "unknown_endpoint",
                "this LLM route serves POST .../chat/completions, POST .../embeddings, GET .../models and POST .../messages",
            ));
        };
        let api = op.api();
        let g = &self.metrics.gen_ai;
        let consumer: Arc<str> = call
            .principal
            .as_ref()
            .and_then(|p| p.consumer.as_deref())
            .map_or_else(
                || Arc::from("none"),
                |c| self.metrics.consumer_labels.label(c),
            );
        let scopes: &[Box<str>] = call.principal.as_deref().map_or(&[], |p| &p.scopes);
        let done = |model: &str, status: StatusCode| {
            g.requests
                .with_label_values(&[&call.route_id, model, op.as_str(), status.as_str()])
                .inc();
        };
        if op == Operation::Models && endpoint == Some("/models/") {
            // GET .../models/{model}: the model, if this token may use it (404 otherwise,
            // as for a model that does not exist: no probing of what others may use).
            let id = call.path.rsplit_once("/models/").map_or("", |(_, id)| id);
            let found = call.llm.allowed_models(scopes).find(|m| &*m.name == id);
            return Reply::Full(match found {
                Some(m) => {
                    done(&m.name, StatusCode::OK);
                    response(
                        StatusCode::OK,
                        "application/json",
                        model_json(&call.llm, m).to_string(),
                    )
                }
                None => {
                    done("", StatusCode::NOT_FOUND);
                    api_error(
                        api,
                        StatusCode::NOT_FOUND,
                        "model_not_found",
                        &format!("the model {id:?} does not exist on this route"),
                    )
                }
            });
        }
        if op == Operation::Models {
            let data: Vec<Value> = call
                .llm
                .allowed_models(scopes)
                .map(|m| model_json(&call.llm, m))
                .collect();
            done("", StatusCode::OK);
            return Reply::Full(response(
                StatusCode::OK,
                "application/json",
                json!({"object": "list", "data": data}).to_string(),
            ));
        }
        let fail = |status: StatusCode, code: &str, message: &str| {
            done("", status);
            Reply::Full(api_error(api, status, code, message))
        };
        // The body: bounded in size and time.
        let limit = call.llm.max_request_bytes;
        let read = read_limited(&head.headers, body, limit, call.request_timeout).await;
        let bytes = match read {
            Ok(b) => b,
            Err(ProxyError::RequestBodyTooLarge { .. }) => {
                return fail(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "request_too_large",
                    &format!("the request body is larger than {limit} bytes"),
                );
            }
            Err(ProxyError::RequestBodyTimeout) => {
                return fail(
                    StatusCode::REQUEST_TIMEOUT,
                    "request_timeout",
                    "the request body did not arrive in time",
                );
            }
            Err(_) => {
                return fail(
                    StatusCode::BAD_REQUEST,
                    "invalid_body",
                    "the request body could not be read",
                );
            }
        };
        let mut req: Value = match serde_json::from_slice(&bytes) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => {
                return fail(
                    StatusCode::BAD_REQUEST,
                    "invalid_json",
                    "the request body must be a JSON object",
                );
            }
            Err(e) => {
                return fail(
                    StatusCode::BAD_REQUEST,
                    "invalid_json",
                    &format!("the request body is not valid JSON: {e}"),
                );
            }
        };
        // A prompt endpoint: the body is the variables.
        if op == Operation::Prompt {
            let prompt = &call.llm.prompts[&call.rule];
            let messages = match prompt.render(&req) {
                Ok(m) => m,
                Err(e) => return fail(StatusCode::BAD_REQUEST, "invalid_variables", &e.0),
            };
            let mut chat = json!({"model": &*prompt.model, "messages": messages});
            if let Some(n) = prompt.max_tokens {
                chat["max_tokens"] = n.into();
            }
            if let Some(t) = prompt.temperature {
                chat["temperature"] = t.into();
            }
            req = chat;
        }
        let Some(name) = req.get("model").and_then(Value::as_str).map(str::to_owned) else {
            return fail(
                StatusCode::BAD_REQUEST,
                "missing_model",
                "the request needs a model",
            );
        };
        let Some(model) = call.llm.model(&name) else {
            return fail(
                StatusCode::NOT_FOUND,
                "model_not_found",
                &format!("the model {name:?} does not exist on this route"),
            );
        };
        if !grants(scopes, &model.scope) {
            done(&model.name, StatusCode::FORBIDDEN);
            let mut resp = api_error(
                api,
                StatusCode::FORBIDDEN,
                "insufficient_scope",
                &format!("the token lacks the scope {} for model {name}", model.scope),
            );
            // RFC 6750 section 3.1: insufficient_scope, with the scope needed.
            if let Ok(v) = HeaderValue::from_str(&format!(
                "Bearer error=\"insufficient_scope\", scope=\"{}\"",
                model.scope
            )) {
                resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
            return Reply::Full(resp);
        }
        if req
            .get("stream")
            .is_some_and(|v| !v.is_boolean() && !v.is_null())
        {
            return fail(
                StatusCode::BAD_REQUEST,
                "invalid_stream",
                "stream must be true or false",
            );
        }
        if let Some(field) = unknown_field(op, &req) {
            return fail(
                StatusCode::BAD_REQUEST,
                "unsupported_parameter",
                &format!("the parameter {field:?} is not accepted by this gateway"),
            );
        }
        let mut budget_hold = None;
        let mut budget_headers = Vec::new();
        if let Some(quotas) = call.quotas.clone().filter(|q| !q.budgets.is_empty()) {
            let asked = match budget::asked_max_tokens(&req) {
                Ok(n) => n,
                Err(field) => {
                    return fail(
                        StatusCode::BAD_REQUEST,
                        "invalid_max_tokens",
                        &format!("{field} must be a non-negative integer"),
                    );
                }
            };
            let Ok(choices) = budget::choices(&req) else {
                return fail(
                    StatusCode::BAD_REQUEST,
                    "invalid_n",
                    "n must be an integer from 1 to 128",
                );
            };
            let prompt_bytes = if op == Operation::Prompt {
                req.to_string().len()
            } else {
                bytes.len()
            } as u64;
            let admitted = budget::admit(
                &self.quota,
                &quotas,
                &model.name,
                call.principal.as_deref(),
                &self.metrics.consumer_labels,
                prompt_bytes,
                asked,
                choices,
                op != Operation::Embeddings,
                unix_now() as i64,
            )
            .await;
            match admitted {
                Ok(None) => {}
                Ok(Some(a)) => {
                    if let Some(n) = a.max_tokens {
                        // The Messages API and the translation read `max_tokens`; OpenAI
                        // itself wants `max_completion_tokens` (reasoning models refuse
                        // `max_tokens`); other OpenAI-compatible servers know `max_tokens`.
                        let field = match call.llm.provider {
                            LlmProvider::Openai if op != Operation::Messages => {
                                "max_completion_tokens"
                            }
                            _ => "max_tokens",
                        };
                        req[field] = n.into();
                    }
                    budget_hold = Some(a.hold);
                    budget_headers = a.headers;
                }
                Err(refused) => {
                    let (status, _) = crate::pipeline::quota::refusal_status(&refused.refusal);
                    let (code, message) = match refused.refusal.kind {
                        crate::quota::RefusalKind::Exhausted => (
                            "rate_limit_exceeded",
                            format!(
                                "the token budget {} is spent for this window: retry after {}s",
                                refused.budget, refused.refusal.retry_after
                            ),
                        ),
                        crate::quota::RefusalKind::Unreachable => (
                            "quota_unavailable",
                            "the budget service cannot be reached; retry shortly".to_owned(),
                        ),
                        crate::quota::RefusalKind::NoIdentity => (
                            "quota_no_identity",
                            format!(
                                "the budget {} counts calls per consumer and this call has none",
                                refused.budget
                            ),
                        ),
                    };
                    done(&model.name, status);
                    let mut resp = api_error(api, status, code, &message);
                    let mut headers = refused.headers;
                    crate::pipeline::quota::retry_after(&mut headers, &refused.refusal);
                    resp.headers_mut().extend(headers);
                    return Reply::Full(resp);
                }
            }
        }
        let provider_model = model.provider_model.clone();
        let public: Arc<str> = model.name.clone();
        let stream = req.get("stream").and_then(Value::as_bool) == Some(true)
            && matches!(op, Operation::Chat | Operation::Messages);
        let wants_usage = req
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            == Some(true);
        let anthropic = call.llm.provider == LlmProvider::Anthropic;
        let (provider_path, shape, upstream_body) = match (op, anthropic) {
            (Operation::Chat | Operation::Prompt, false) => {
                req["model"] = provider_model.into();
                if stream {
                    // Exact usage for the meter; removed again if the client did not ask.
                    match req.get_mut("stream_options").and_then(Value::as_object_mut) {
                        Some(o) => {
                            o.insert("include_usage".into(), true.into());
                        }
                        None => req["stream_options"] = json!({"include_usage": true}),
                    }
                }
                ("/chat/completions", Shape::Chat { wants_usage }, req)
            }
            (Operation::Chat | Operation::Prompt, true) => {
                match chat_to_messages(&req, &provider_model) {
                    Ok(b) => ("/messages", Shape::ChatFromMessages { wants_usage }, b),
                    Err(Untranslatable(e)) => {
                        return fail(StatusCode::BAD_REQUEST, "unsupported", &e);
                    }
                }
            }
            (Operation::Embeddings, false) => {
                req["model"] = provider_model.into();
                ("/embeddings", Shape::Embeddings, req)
            }
            (Operation::Embeddings, true) => {
                return fail(
                    StatusCode::BAD_REQUEST,
                    "unsupported",
                    "embeddings are not offered by anthropic backends",
                );
            }
            (Operation::Messages, true) => {
                req["model"] = provider_model.into();
                ("/messages", Shape::Messages, req)
            }
            (Operation::Messages, false) => {
                return fail(
                    StatusCode::NOT_FOUND,
                    "unsupported",
                    "the Messages API is served on anthropic backends only; call /v1/chat/completions",
                );
            }
            (Operation::Models, _) => unreachable!("answered above"),
        };
        let mut anthropic_headers = Vec::new();
        if anthropic {
            let version = head
                .headers
                .get("anthropic-version")
                .filter(|_| op == Operation::Messages)
                .cloned()
                .unwrap_or(HeaderValue::from_static(ANTHROPIC_VERSION));
            anthropic_headers.push((
                header::HeaderName::from_static("anthropic-version"),
                version,
            ));
            // `anthropic-beta` is not passed on: it switches on features (and costs) the
            // route's owner has not chosen.
        }
        let exchange = Exchange {
            client: self.client.clone(),
            pools: self.key_pools.clone(),
            metrics: self.metrics.clone(),
            llm: call.llm.clone(),
            route_id: call.route_id.clone(),
            model: public,
            operation: op,
            shape,
            stream,
            provider_path,
            body: Bytes::from(upstream_body.to_string()),
            request_id,
            consumer,
            consumer_id: call.principal.as_ref().and_then(|p| p.consumer.clone()),
            token: token.map_or_else(|| "-".to_owned(), |f| f.to_string()),
            anthropic_headers,
            connect_timeout: call.connect_timeout,
            request_timeout: call.request_timeout,
            budget: std::sync::Mutex::new(budget_hold),
        };
        let (tx, rx) = oneshot::channel();
        // Spawned: a client that goes away does not stop the exchange, so what the
        // provider used is still metered.
        // Durations count from the provider call, not from the client's upload.
        let _ = started;
        tokio::spawn(exchange.run(tx, Instant::now()));
        match rx.await {
            Ok(mut reply) => {
                let r = match &mut reply {
                    Reply::Full(r) | Reply::Stream(r) => r,
                };
                r.headers_mut().extend(budget_headers);
                reply
            }
            Err(_) => Reply::Full(api_error(
                api,
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the provider exchange failed",
            )),
        }
    }
}

/// `text` with every key of `keys` (and a 12-character prefix of it) replaced by
/// `[redacted]`: some providers quote the key they refuse.
fn redact_keys(mut text: String, keys: &[portcullis_policy::llm::ProviderKey]) -> String {
    for k in keys {
        let Ok(v) = k.value.to_str() else { continue };
        let raw = v.strip_prefix("Bearer ").unwrap_or(v);
        for needle in [raw, raw.get(..12).unwrap_or(raw)] {
            if needle.len() >= 8 && text.contains(needle) {
                text = text.replace(needle, "[redacted]");
            }
        }
    }
    text
}

/// An OpenAI `model` object.
fn model_json(llm: &LlmRoute, m: &portcullis_policy::llm::Model) -> Value {
    json!({"id": &*m.name, "object": "model", "created": 0, "owned_by": llm.provider_name()})
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

impl Exchange {
    fn api(&self) -> Api {
        self.operation.api()
    }

    fn provider_request(&self, key: usize) -> Option<Request<RequestBody>> {
        let up = &self.llm.upstream;
        let mut pq = String::with_capacity(up.base_path.len() + 32);
        pq.push_str(&up.base_path);
        pq.push_str(self.provider_path);
        if let Some(q) = &self.llm.query {
            pq.push('?');
            pq.push_str(q);
        }
        let uri = Uri::builder()
            .scheme(up.scheme.clone())
            .authority(up.authority.clone())
            .path_and_query(pq)
            .build()
            .ok()?;
        let mut req = Request::new(RequestBody::Full(Some(self.body.clone())));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = uri;
        let h = req.headers_mut();
        h.insert(header::HOST, up.host_header.clone());
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(self.body.len()));
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static(if self.stream {
                "text/event-stream"
            } else {
                "application/json"
            }),
        );
        h.insert(header::USER_AGENT, HeaderValue::from_static("portcullis"));
        h.insert("x-request-id", self.request_id.clone());
        let name = match self.llm.key_header {
            LlmKeyHeader::Authorization => header::AUTHORIZATION,
            LlmKeyHeader::XApiKey => header::HeaderName::from_static("x-api-key"),
            LlmKeyHeader::ApiKey => header::HeaderName::from_static("api-key"),
        };
        h.insert(name, self.llm.keys[key].value.clone());
        for (n, v) in &self.anthropic_headers {
            h.insert(n.clone(), v.clone());
        }
        Some(req)
    }

    /// `text` (a provider's error, passed on to the client) with every key of the pool
    /// replaced: some providers quote the key they refused, and it must not reach the
    /// client.
    fn redact(&self, text: String) -> String {
        redact_keys(text, &self.llm.keys)
    }

    /// A stream chunk on its way to the client: an error event is redacted like an error
    /// body (other chunks are the model's output, passed as they are).
    fn redact_chunk(&self, b: Bytes) -> Bytes {
        if !b.windows(7).any(|w| w == b"\"error\"") {
            return b;
        }
        Bytes::from(self.redact(String::from_utf8_lossy(&b).into_owned()))
    }

    fn count(&self, status: StatusCode) {
        self.metrics
            .gen_ai
            .requests
            .with_label_values(&[
                &self.route_id,
                &self.model,
                self.operation.as_str(),
                status.as_str(),
            ])
            .inc();
    }

    fn provider_error(&self, status: &str) {
        self.metrics
            .gen_ai
            .provider_errors
            .with_label_values(&[&self.route_id, self.llm.provider_name(), status])
            .inc();
    }

    /// Answers with a gateway error and counts it.
    fn error(&self, reply: oneshot::Sender<Reply>, status: StatusCode, code: &str, msg: &str) {
        self.count(status);
        let _ = reply.send(Reply::Full(api_error(self.api(), status, code, msg)));
    }

    async fn run(self, reply: oneshot::Sender<Reply>, started: Instant) {
        let g = &self.metrics.gen_ai;
        let mut tried = Vec::new();
        let resp = loop {
            let key = match self
                .pools
                .pick(&self.route_id, &self.llm, &tried, Instant::now())
            {
                Ok(k) => k,
                Err(wait) => {
                    self.pools.report(&self.route_id, &self.llm, g);
                    let mut r = api_error(
                        self.api(),
                        StatusCode::SERVICE_UNAVAILABLE,
                        "no_provider_key",
                        "every provider key of this route is out of rotation; retry later",
                    );
                    r.headers_mut().insert(
                        header::RETRY_AFTER,
                        HeaderValue::from(wait.as_secs().max(1)),
                    );
                    self.count(StatusCode::SERVICE_UNAVAILABLE);
                    let _ = reply.send(Reply::Full(r));
                    return;
                }
            };
            tried.push(key);
            let Some(req) = self.provider_request(key) else {
                return self.error(
                    reply,
                    StatusCode::BAD_GATEWAY,
                    "bad_upstream",
                    "the provider URL is unusable",
                );
            };
            let call = tokio::time::timeout(self.request_timeout, self.client.request(req));
            let result = crate::pipeline::with_connect_timeout(self.connect_timeout, call).await;
            let resp = match result {
                Err(_) => {
                    self.provider_error("timeout");
                    // The provider may be generating still: charged as reserved.
                    self.charge_unread();
                    return self.error(
                        reply,
                        StatusCode::GATEWAY_TIMEOUT,
                        "provider_timeout",
                        "the provider did not answer in time",
                    );
                }
                Ok(Err(e)) => {
                    self.provider_error("connect");
                    warn!(route = %self.route_id, error = %portcullis_fetch::client::error_chain(&e), "LLM provider call failed");
                    return self.error(
                        reply,
                        StatusCode::BAD_GATEWAY,
                        "provider_unreachable",
                        "the provider could not be reached",
                    );
                }
                Ok(Ok(r)) => r,
            };
            let status = resp.status();
            // 401: the provider does not take the key. 429: the key's limit is spent (for
            // `Retry-After` when given). A 403 is about what was asked (a model or feature
            // the account lacks): the client's answer, no key rests for it.
            let reason = match status.as_u16() {
                401 => Some(CooldownReason::Unauthorized),
                429 => Some(CooldownReason::RateLimited),
                _ => None,
            };
            if let Some(reason) = reason {
                self.provider_error(status.as_str());
                let span = self.pools.cool_down(
                    &self.route_id,
                    &self.llm,
                    key,
                    reason,
                    retry_after(resp.headers()),
                    g,
                );
                // The gauge shows the key back once its rest is over, traffic or not.
                let (pools, llm, route, metrics) = (
                    self.pools.clone(),
                    self.llm.clone(),
                    self.route_id.clone(),
                    self.metrics.clone(),
                );
                tokio::spawn(async move {
                    tokio::time::sleep(span + Duration::from_millis(10)).await;
                    pools.report(&route, &llm, &metrics.gen_ai);
                });
                // Retried once, with the next key: a request the provider refuses for what
                // it is (too large for any key's limit) cannot rest the whole pool.
                if tried.len() < 2 && tried.len() < self.llm.keys.len() {
                    continue;
                }
            } else if !status.is_success() {
                self.provider_error(status.as_str());
            } else {
                self.pools.report(&self.route_id, &self.llm, g);
            }
            break resp;
        };
        let status = resp.status();
        if !status.is_success() {
            return self.relay_error(reply, resp).await;
        }
        let is_sse = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
        if self.stream && is_sse {
            self.relay_stream(reply, resp, started).await;
        } else {
            self.relay_full(reply, resp, started).await;
        }
    }

    /// A provider error, in the client's API format. A refused key (401/403) is the
    /// gateway's problem, not the client's: 502.
    async fn relay_error(self, reply: oneshot::Sender<Reply>, resp: Response<Incoming>) {
        let status = resp.status();
        let retry = resp.headers().get(header::RETRY_AFTER).cloned();
        let body = tokio::time::timeout(
            self.request_timeout,
            http_body_util::Limited::new(resp.into_body(), 1 << 20).collect(),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .map(|c| c.to_bytes())
        .unwrap_or_default();
        let parsed: Option<Value> = serde_json::from_slice(&body).ok();
        let (status, out) = if matches!(status.as_u16(), 401 | 403) {
            (
                StatusCode::BAD_GATEWAY,
                api_error(
                    self.api(),
                    StatusCode::BAD_GATEWAY,
                    "provider_key_refused",
                    "the provider refused every key of this route",
                ),
            )
        } else {
            let message = parsed
                .as_ref()
                .and_then(|v| v.pointer("/error/message"))
                .and_then(Value::as_str)
                .unwrap_or("the provider answered with an error")
                .to_owned();
            let provider_anthropic = self.llm.provider == LlmProvider::Anthropic;
            let body = match (self.api(), provider_anthropic, &parsed) {
                (Api::OpenAi, true, Some(v)) => anthropic_error_to_openai(v),
                (Api::OpenAi, false, Some(v)) if v.get("error").is_some() => v.clone(),
                (Api::Anthropic, true, Some(v)) if v.get("error").is_some() => v.clone(),
                _ => {
                    let message = self.redact(message);
                    return self.error(reply, status, "provider_error", &message);
                }
            };
            (
                status,
                response(status, "application/json", self.redact(body.to_string())),
            )
        };
        let mut out = out;
        if let Some(r) = retry {
            out.headers_mut().insert(header::RETRY_AFTER, r);
        }
        self.count(status);
        let _ = reply.send(Reply::Full(out));
    }

    async fn relay_full(
        self,
        reply: oneshot::Sender<Reply>,
        resp: Response<Incoming>,
        started: Instant,
    ) {
        let read = tokio::time::timeout(
            self.request_timeout,
            http_body_util::Limited::new(resp.into_body(), MAX_RESPONSE_BYTES).collect(),
        )
        .await;
        let Some(bytes) = read.ok().and_then(Result::ok).map(|c| c.to_bytes()) else {
            self.provider_error("body");
            // A 2xx whose body timed out or passed the limit: the work was done.
            self.charge_unread();
            return self.error(
                reply,
                StatusCode::BAD_GATEWAY,
                "provider_body",
                "the provider's answer could not be read",
            );
        };
        let Ok(mut v) = serde_json::from_slice::<Value>(&bytes) else {
            self.provider_error("body");
            return self.error(
                reply,
                StatusCode::BAD_GATEWAY,
                "provider_body",
                "the provider's answer is not JSON",
            );
        };
        let usage = match self.shape {
            Shape::Chat { .. } | Shape::Embeddings => {
                let u = openai_usage(&v).unwrap_or_default();
                if let Some(o) = v.as_object_mut()
                    && o.contains_key("model")
                {
                    o.insert("model".into(), (*self.model).into());
                }
                u
            }
            Shape::ChatFromMessages { .. } => {
                let u = anthropic_usage(&v);
                v = messages_to_chat(&v, &self.model, unix_now());
                u
            }
            Shape::Messages => {
                let u = anthropic_usage(&v);
                if let Some(o) = v.as_object_mut() {
                    o.insert("model".into(), (*self.model).into());
                }
                u
            }
        };
        self.meter(usage, started, true);
        self.count(StatusCode::OK);
        let _ = reply.send(Reply::Full(response(
            StatusCode::OK,
            "application/json",
            v.to_string(),
        )));
    }

    async fn relay_stream(
        self,
        reply: oneshot::Sender<Reply>,
        resp: Response<Incoming>,
        started: Instant,
    ) {
        let g = &self.metrics.gen_ai;
        let (tx, rx) = mpsc::channel::<Bytes>(32);
        let mut out_resp = Response::new(ChannelBody { rx }.map_err(|n| match n {}).boxed());
        out_resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        out_resp
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        self.count(StatusCode::OK);
        let _ = reply.send(Reply::Stream(out_resp));

        let mut translator: Box<dyn StreamTranslator> = match self.shape {
            Shape::Chat { wants_usage } => Box::new(ChatStream::new(&self.model, wants_usage)),
            Shape::ChatFromMessages { wants_usage } => {
                Box::new(MessagesToChat::new(&self.model, wants_usage, unix_now()))
            }
            Shape::Messages | Shape::Embeddings => Box::new(MessagesStream::new(&self.model)),
        };
        let mut parser = SseParser::new(MAX_EVENT_BYTES);
        let mut body = resp.into_body();
        let mut events: Vec<SseEvent> = Vec::new();
        let mut out: Vec<Bytes> = Vec::new();
        let mut gone_at: Option<Instant> = None;
        let mut drained = 0usize;
        let mut first_token = false;
        let complete = loop {
            let wait = match gone_at {
                Some(t) => DRAIN_MAX_TIME.saturating_sub(t.elapsed()),
                None => self.request_timeout,
            };
            let frame = match tokio::time::timeout(wait, body.frame()).await {
                Err(_) => break false,
                Ok(None) => break true,
                Ok(Some(Err(_))) => break false,
                Ok(Some(Ok(f))) => f,
            };
            let Some(data) = frame.data_ref() else {
                continue;
            };
            if gone_at.is_some() {
                drained += data.len();
                if drained > DRAIN_MAX_BYTES {
                    break false;
                }
            }
            parser.feed(data, &mut |ev| events.push(ev));
            for ev in events.drain(..) {
                translator.event(&ev, &mut out);
            }
            if !first_token && translator.started() {
                first_token = true;
                g.time_to_first_token
                    .with_label_values(&[&self.route_id, &self.model])
                    .observe(started.elapsed().as_secs_f64());
            }
            if gone_at.is_none() {
                for b in out.drain(..) {
                    let b = self.redact_chunk(b);
                    // A client that stops reading is treated as gone: the stream is
                    // drained for its usage rather than held open by the client.
                    let sent = tokio::time::timeout(self.request_timeout, tx.send(b)).await;
                    if !matches!(sent, Ok(Ok(()))) {
                        gone_at = Some(Instant::now());
                        break;
                    }
                }
            }
            out.clear();
        };
        translator.finish(complete, &mut out);
        if gone_at.is_none() {
            if !complete {
                let e = match self.api() {
                    Api::OpenAi => translate::sse_bytes(
                        None,
                        &openai_error(
                            "the provider's stream broke off",
                            "api_error",
                            Some("provider_stream"),
                        )
                        .to_string(),
                    ),
                    Api::Anthropic => translate::sse_bytes(
                        Some("error"),
                        &anthropic_error("api_error", "the provider's stream broke off")
                            .to_string(),
                    ),
                };
                out.push(e);
            }
            for b in out.drain(..) {
                let b = self.redact_chunk(b);
                if tx.send(b).await.is_err() {
                    break;
                }
            }
        } else {
            g.stream_drains
                .with_label_values(&[
                    &*self.route_id,
                    if complete { "complete" } else { "truncated" },
                ])
                .inc();
        }
        drop(tx);
        self.meter_stream(translator.usage(), started, gone_at.is_none(), complete);
    }

    /// Settles the call's budgets at its reservation: the provider was called and may
    /// have done the work, but no usage can be read.
    fn charge_unread(&self) {
        if let Some(mut hold) = self.budget.lock().unwrap_or_else(|e| e.into_inner()).take() {
            hold.unread();
        }
    }

    /// [`Exchange::meter`] for a stream: `client_stayed` and `complete` (the provider's
    /// stream read to its end, by the client or by the drain after it left).
    fn meter_stream(&self, usage: Usage, started: Instant, client_stayed: bool, complete: bool) {
        self.settle(&usage, complete);
        self.log_usage(usage, started, client_stayed && complete);
    }

    /// Settles the call's budgets: from `usage`, and at no less than the reservation
    /// when the answer was cut short (`complete` false).
    fn settle(&self, usage: &Usage, complete: bool) {
        if let Some(mut hold) = self.budget.lock().unwrap_or_else(|e| e.into_inner()).take() {
            hold.used(usage.input, usage.output, complete);
        }
    }

    /// Settles and counts a whole answer's tokens and writes the usage line.
    fn meter(&self, usage: Usage, started: Instant, complete: bool) {
        self.settle(&usage, complete);
        self.log_usage(usage, started, complete);
    }

    /// Counts the tokens and writes the usage line of the access log.
    fn log_usage(&self, usage: Usage, started: Instant, complete: bool) {
        let g = &self.metrics.gen_ai;
        for (kind, n) in [("input", usage.input), ("output", usage.output)] {
            g.tokens
                .with_label_values(&[&self.route_id, &self.model, kind, &self.consumer])
                .inc_by(n);
        }
        g.operation_duration
            .with_label_values(&[&self.route_id, &self.model, self.operation.as_str()])
            .observe(started.elapsed().as_secs_f64());
        info!(
            target: "portcullis::access",
            request_id = self.request_id.to_str().unwrap_or("-"),
            route = %self.route_id,
            model = %self.model,
            provider = self.llm.provider_name(),
            operation = self.operation.as_str(),
            consumer = self.consumer_id.as_deref().unwrap_or("-"),
            consumer_label = %self.consumer,
            token = %self.token,
            input_tokens = usage.input,
            output_tokens = usage.output,
            complete,
            "usage"
        );
    }
}

/// A response body fed by the exchange task, chunk by chunk. When the client goes away
/// the body is dropped, the channel closes and the task notices on its next send.
struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_policy::llm::ProviderKey;

    fn key(value: &str) -> ProviderKey {
        ProviderKey {
            name: "s/k".into(),
            priority: 0,
            value: HeaderValue::from_str(value).unwrap(),
        }
    }

    #[test]
    fn keys_quoted_by_a_provider_are_redacted() {
        let keys = [
            key("Bearer sk-live-0123456789abcdef"),
            key("xk-other-secret-key"),
        ];
        let out = redact_keys(
            "bad key sk-live-0123456789abcdef; also sk-live-0123 and xk-other-secret-key".into(),
            &keys,
        );
        assert!(!out.contains("sk-live-0123"), "{out}");
        assert!(!out.contains("xk-other-secret-key"), "{out}");
        assert_eq!(out.matches("[redacted]").count(), 3, "{out}");
        // Text without a key is left alone; short keys never redact common words.
        let short = [key("Bearer abc")];
        assert_eq!(redact_keys("abc def".into(), &short), "abc def");
    }

    #[test]
    fn operations_are_decided_by_method_and_exact_endpoint() {
        assert_eq!(
            operation(&Method::POST, Some("/chat/completions"), false),
            Some(Operation::Chat)
        );
        assert_eq!(
            operation(&Method::GET, Some("/chat/completions"), false),
            None
        );
        assert_eq!(
            operation(&Method::GET, Some("/models/"), false),
            Some(Operation::Models)
        );
        assert_eq!(
            operation(&Method::POST, None, true),
            Some(Operation::Prompt)
        );
        assert_eq!(operation(&Method::POST, None, false), None);
    }

    #[test]
    fn only_listed_fields_go_upstream() {
        let ok = json!({"model": "m", "messages": [], "stream": true, "tools": []});
        assert_eq!(unknown_field(Operation::Chat, &ok), None);
        let bad = json!({"model": "m", "messages": [], "fallbacks": ["x"]});
        assert_eq!(
            unknown_field(Operation::Chat, &bad).as_deref(),
            Some("fallbacks")
        );
        assert_eq!(
            unknown_field(
                Operation::Messages,
                &json!({"model": "m", "service_tier": "x"})
            )
            .as_deref(),
            Some("service_tier")
        );
        assert_eq!(
            unknown_field(
                Operation::Embeddings,
                &json!({"model": "m", "input": "x", "dimensions": 8})
            ),
            None
        );
    }
}
