//! The OpenAI Chat Completions API and the Anthropic Messages API, one into the other,
//! and usage as each reports it. Pure functions over JSON values and SSE events.
//!
//! ```text
//! OpenAI request  ── chat_to_messages ──▶ Anthropic request
//! Anthropic reply ── messages_to_chat ──▶ OpenAI reply
//! Anthropic SSE   ── MessagesToChat ────▶ OpenAI chunks (+ usage chunk, [DONE])
//! OpenAI SSE      ── ChatStream ────────▶ OpenAI chunks (usage chunk kept only if asked)
//! Anthropic SSE   ── MessagesStream ────▶ Anthropic events (native /v1/messages)
//! ```
//!
//! Usage is exact: what the provider reported, never estimated. Anthropic streams report
//! input tokens in `message_start` and cumulative output tokens in each `message_delta`:
//! the last value is assigned, never added.

use bytes::Bytes;
use serde_json::{Map, Value, json};

use crate::pipeline::SseEvent;

/// Tokens of one call, as the provider reported them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Input (prompt) tokens, cached ones included.
    pub input: u64,
    /// Output (completion) tokens.
    pub output: u64,
}

impl Usage {
    /// Takes the counts of an Anthropic `message_delta` usage: they are cumulative, so
    /// each one present replaces the last, never adds to it.
    fn assign_delta(&mut self, u: &Value) {
        if u.get("output_tokens").is_some() {
            self.output = num(u, "output_tokens");
        }
        if u.get("input_tokens").is_some() {
            self.input = anthropic_input(u);
        }
    }
}

fn num(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// The usage of an OpenAI response or chunk (`usage.prompt_tokens`,
/// `usage.completion_tokens`), if it carries one.
pub fn openai_usage(v: &Value) -> Option<Usage> {
    let u = v.get("usage").filter(|u| u.is_object())?;
    Some(Usage {
        input: num(u, "prompt_tokens"),
        output: num(u, "completion_tokens"),
    })
}

/// Input tokens of an Anthropic `usage` object: `input_tokens` plus the cache's
/// `cache_creation_input_tokens` and `cache_read_input_tokens`.
fn anthropic_input(u: &Value) -> u64 {
    // Saturating: a provider's numbers cannot wrap (or, in debug builds, panic) the meter.
    num(u, "input_tokens")
        .saturating_add(num(u, "cache_creation_input_tokens"))
        .saturating_add(num(u, "cache_read_input_tokens"))
}

/// The usage of an Anthropic message.
pub fn anthropic_usage(msg: &Value) -> Usage {
    let u = msg.get("usage").unwrap_or(&Value::Null);
    Usage {
        input: anthropic_input(u),
        output: num(u, "output_tokens"),
    }
}

/// An OpenAI-format error body.
pub fn openai_error(message: &str, kind: &str, code: Option<&str>) -> Value {
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
}

/// An Anthropic-format error body.
pub fn anthropic_error(kind: &str, message: &str) -> Value {
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

/// An Anthropic error body as an OpenAI one (same message; the Anthropic type as `type`).
pub fn anthropic_error_to_openai(body: &Value) -> Value {
    let e = body.get("error").unwrap_or(&Value::Null);
    let message = e
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("the provider refused the request");
    let kind = e.get("type").and_then(Value::as_str).unwrap_or("api_error");
    openai_error(message, kind, None)
}

/// The OpenAI `finish_reason` of an Anthropic `stop_reason`.
pub fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop",
    }
}

/// A request the translation cannot express: answered 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Untranslatable(pub String);

fn bad(msg: impl Into<String>) -> Untranslatable {
    Untranslatable(msg.into())
}

/// Text of an OpenAI message content: a string, or the text parts of an array joined.
fn text_of(content: &Value) -> Result<String, Untranslatable> {
    match content {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut out = String::new();
            for p in parts {
                match (p.get("type").and_then(Value::as_str), p.get("text")) {
                    (Some("text"), Some(Value::String(t))) => out.push_str(t),
                    _ => return Err(bad("only text parts are allowed here")),
                }
            }
            Ok(out)
        }
        _ => Err(bad("message content must be a string or an array of parts")),
    }
}

/// An OpenAI message content as Anthropic content blocks.
fn blocks_of(content: &Value) -> Result<Vec<Value>, Untranslatable> {
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(s) => Ok(vec![json!({"type": "text", "text": s})]),
        Value::Array(parts) => parts
            .iter()
            .map(|p| match p.get("type").and_then(Value::as_str) {
                Some("text") => match p.get("text") {
                    Some(Value::String(t)) => Ok(json!({"type": "text", "text": t})),
                    _ => Err(bad("a text part needs text")),
                },
                Some("image_url") => {
                    let url = p
                        .pointer("/image_url/url")
                        .and_then(Value::as_str)
                        .ok_or_else(|| bad("an image_url part needs image_url.url"))?;
                    // RFC 2397: data:<media type>;base64,<data>
                    if let Some(rest) = url.strip_prefix("data:") {
                        let (meta, data) = rest
                            .split_once(',')
                            .ok_or_else(|| bad("a data: URL needs a comma"))?;
                        let media = meta
                            .strip_suffix(";base64")
                            .ok_or_else(|| bad("only base64 data: URLs are supported"))?;
                        Ok(json!({"type": "image", "source": {"type": "base64", "media_type": media, "data": data}}))
                    } else {
                        Ok(json!({"type": "image", "source": {"type": "url", "url": url}}))
                    }
                }
                other => Err(bad(format!(
                    "content part type {} is not supported by anthropic backends",
                    other.unwrap_or("(none)")
                ))),
            })
            .collect(),
        _ => Err(bad("message content must be a string or an array of parts")),
    }
}

/// Appends a message, merging it into the previous one of the same role (Anthropic turns
/// alternate; tool results follow as user content).
fn push_turn(out: &mut Vec<Value>, role: &str, blocks: Vec<Value>) {
    if let Some(last) = out.last_mut()
        && last["role"] == role
        && let Some(Value::Array(content)) = last.get_mut("content")
    {
        content.extend(blocks);
        return;
    }
    out.push(json!({"role": role, "content": blocks}));
}

/// Default `max_tokens` when the OpenAI request sets none (Anthropic requires one).
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// An OpenAI chat completion request as an Anthropic Messages request for
/// `provider_model`: system and developer messages become `system`, tool calls
/// `tool_use` blocks, tool messages `tool_result` blocks, `stop` `stop_sequences`,
/// `max_tokens`/`max_completion_tokens` `max_tokens`.
pub fn chat_to_messages(req: &Value, provider_model: &str) -> Result<Value, Untranslatable> {
    let obj = req
        .as_object()
        .ok_or_else(|| bad("the body must be a JSON object"))?;
    let msgs = obj
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("messages must be an array"))?;
    let mut system = Vec::new();
    let mut out: Vec<Value> = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("messages[{i}] needs a role")))?;
        let content = m.get("content").unwrap_or(&Value::Null);
        match role {
            "system" | "developer" => system.push(text_of(content)?),
            "user" => push_turn(&mut out, "user", blocks_of(content)?),
            "assistant" => {
                // Anthropic refuses empty text blocks (`content: ""` beside tool calls).
                let mut blocks: Vec<Value> = blocks_of(content)?
                    .into_iter()
                    .filter(|b| b.get("text").is_none_or(|t| t != ""))
                    .collect();
                for tc in m
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let f = tc.get("function").unwrap_or(&Value::Null);
                    let args = f.get("arguments").and_then(Value::as_str).unwrap_or("{}");
                    let input: Value = serde_json::from_str(args).map_err(|_| {
                        bad(format!(
                            "messages[{i}].tool_calls: arguments are not a JSON object"
                        ))
                    })?;
                    blocks.push(json!({
                        "type": "tool_use",
                        "id": tc.get("id").cloned().unwrap_or(Value::Null),
                        "name": f.get("name").cloned().unwrap_or(Value::Null),
                        "input": input,
                    }));
                }
                push_turn(&mut out, "assistant", blocks);
            }
            "tool" => {
                let id = m
                    .get("tool_call_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad(format!("messages[{i}] (tool) needs tool_call_id")))?;
                push_turn(
                    &mut out,
                    "user",
                    vec![
                        json!({"type": "tool_result", "tool_use_id": id, "content": text_of(content)?}),
                    ],
                );
            }
            other => {
                return Err(bad(format!(
                    "messages[{i}]: role {other:?} is not supported"
                )));
            }
        }
    }
    if obj.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return Err(bad("n > 1 is not supported by anthropic backends"));
    }
    let max_tokens = obj
        .get("max_completion_tokens")
        .filter(|v| !v.is_null())
        .or_else(|| obj.get("max_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_MAX_TOKENS);
    let mut body = Map::new();
    body.insert("model".into(), provider_model.into());
    body.insert("messages".into(), Value::Array(out));
    body.insert("max_tokens".into(), max_tokens.into());
    if !system.is_empty() {
        body.insert("system".into(), system.join("\n\n").into());
    }
    for key in ["temperature", "top_p", "stream"] {
        if let Some(v) = obj.get(key).filter(|v| !v.is_null()) {
            body.insert(key.into(), v.clone());
        }
    }
    match obj.get("stop") {
        Some(Value::String(s)) => {
            body.insert("stop_sequences".into(), json!([s]));
        }
        Some(Value::Array(a)) => {
            body.insert("stop_sequences".into(), Value::Array(a.clone()));
        }
        _ => {}
    }
    if let Some(tools) = obj.get("tools").and_then(Value::as_array) {
        let mut list = Vec::new();
        for t in tools {
            let f = t
                .get("function")
                .ok_or_else(|| bad("only function tools are supported"))?;
            let mut tool = Map::new();
            tool.insert("name".into(), f.get("name").cloned().unwrap_or(Value::Null));
            if let Some(d) = f.get("description") {
                tool.insert("description".into(), d.clone());
            }
            tool.insert(
                "input_schema".into(),
                f.get("parameters")
                    .cloned()
                    .unwrap_or_else(|| json!({"type": "object"})),
            );
            list.push(Value::Object(tool));
        }
        body.insert("tools".into(), Value::Array(list));
    }
    match obj.get("tool_choice") {
        Some(Value::String(s)) => {
            let choice = match s.as_str() {
                "required" => json!({"type": "any"}),
                "none" => json!({"type": "none"}),
                _ => json!({"type": "auto"}),
            };
            body.insert("tool_choice".into(), choice);
        }
        Some(Value::Object(c)) => {
            if let Some(name) = c.get("function").and_then(|f| f.get("name")) {
                body.insert("tool_choice".into(), json!({"type": "tool", "name": name}));
            }
        }
        _ => {}
    }
    if let Some(user) = obj.get("user").and_then(Value::as_str) {
        body.insert("metadata".into(), json!({"user_id": user}));
    }
    Ok(Value::Object(body))
}

/// An Anthropic message as an OpenAI `chat.completion` for `public_model`.
pub fn messages_to_chat(resp: &Value, public_model: &str, created: u64) -> Value {
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for b in resp
        .get("content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(b.get("text").and_then(Value::as_str).unwrap_or("")),
            Some("tool_use") => tool_calls.push(json!({
                "id": b.get("id").cloned().unwrap_or(Value::Null),
                "type": "function",
                "function": {
                    "name": b.get("name").cloned().unwrap_or(Value::Null),
                    "arguments": b.get("input").map(Value::to_string).unwrap_or_else(|| "{}".into()),
                },
            })),
            _ => {}
        }
    }
    let mut message = Map::new();
    message.insert("role".into(), "assistant".into());
    message.insert(
        "content".into(),
        if text.is_empty() && !tool_calls.is_empty() {
            Value::Null
        } else {
            text.into()
        },
    );
    if !tool_calls.is_empty() {
        message.insert("tool_calls".into(), Value::Array(tool_calls));
    }
    let usage = anthropic_usage(resp);
    let stop = resp
        .get("stop_reason")
        .and_then(Value::as_str)
        .unwrap_or("end_turn");
    json!({
        "id": resp.get("id").cloned().unwrap_or(Value::Null),
        "object": "chat.completion",
        "created": created,
        "model": public_model,
        "choices": [{
            "index": 0,
            "message": Value::Object(message),
            "finish_reason": finish_reason(stop),
            "logprobs": null,
        }],
        "usage": usage_json(usage),
    })
}

fn usage_json(u: Usage) -> Value {
    json!({"prompt_tokens": u.input, "completion_tokens": u.output, "total_tokens": u.input.saturating_add(u.output)})
}

/// One SSE event, serialized: `data: <data>` (with an `event:` line when `event` is set).
pub fn sse_bytes(event: Option<&str>, data: &str) -> Bytes {
    let mut out = String::with_capacity(data.len() + 16);
    if let Some(e) = event {
        out.push_str("event: ");
        out.push_str(e);
        out.push('\n');
    }
    // A data value with line breaks takes one `data:` line per line.
    for line in data.split('\n') {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

/// A stream translator: upstream events in, client bytes out, and the usage seen.
pub trait StreamTranslator: Send {
    /// One upstream event; what to send the client is pushed onto `out`.
    fn event(&mut self, ev: &SseEvent, out: &mut Vec<Bytes>);
    /// The upstream stream ended (`complete`: normally); the last bytes go onto `out`.
    fn finish(&mut self, complete: bool, out: &mut Vec<Bytes>);
    /// The usage reported so far.
    fn usage(&self) -> Usage;
    /// Whether a chunk with content (not just the role) went out yet.
    fn started(&self) -> bool;
}

/// An OpenAI stream passed on: the model renamed to the client's name, usage read from
/// the usage chunk (which the gateway asked for), and that chunk (and the `usage: null`
/// fields) removed when the client did not ask for it.
pub struct ChatStream {
    public_model: String,
    client_wants_usage: bool,
    usage: Usage,
    started: bool,
    done: bool,
}

impl ChatStream {
    /// A translator for a client that did (or did not) ask for usage.
    pub fn new(public_model: &str, client_wants_usage: bool) -> Self {
        Self {
            public_model: public_model.to_owned(),
            client_wants_usage,
            usage: Usage::default(),
            started: false,
            done: false,
        }
    }
}

impl StreamTranslator for ChatStream {
    fn event(&mut self, ev: &SseEvent, out: &mut Vec<Bytes>) {
        if ev.data == "[DONE]" {
            self.done = true;
            out.push(sse_bytes(None, "[DONE]"));
            return;
        }
        let Ok(mut v) = serde_json::from_str::<Value>(&ev.data) else {
            out.push(sse_bytes(None, &ev.data));
            return;
        };
        if let Some(u) = openai_usage(&v) {
            self.usage = u;
        }
        let no_choices = v
            .get("choices")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty);
        if let Some(obj) = v.as_object_mut() {
            if !self.client_wants_usage {
                if no_choices && obj.get("usage").is_some_and(Value::is_object) {
                    return;
                }
                obj.remove("usage");
            }
            if obj.contains_key("model") {
                obj.insert("model".into(), self.public_model.as_str().into());
            }
        }
        if !no_choices {
            self.started = true;
        }
        out.push(sse_bytes(None, &v.to_string()));
    }

    fn finish(&mut self, _complete: bool, _out: &mut Vec<Bytes>) {}

    fn usage(&self) -> Usage {
        self.usage
    }

    fn started(&self) -> bool {
        self.started
    }
}

/// An Anthropic stream as OpenAI `chat.completion.chunk`s.
pub struct MessagesToChat {
    public_model: String,
    include_usage: bool,
    created: u64,
    id: String,
    usage: Usage,
    /// Anthropic content block index -> OpenAI tool call index.
    tools: Vec<(u64, u64)>,
    next_tool: u64,
    started: bool,
    stopped: bool,
}

impl MessagesToChat {
    /// A translator for `public_model`; `include_usage` when the client asked for the
    /// usage chunk (`stream_options.include_usage`).
    pub fn new(public_model: &str, include_usage: bool, created: u64) -> Self {
        Self {
            public_model: public_model.to_owned(),
            include_usage,
            created,
            id: String::new(),
            usage: Usage::default(),
            tools: Vec::new(),
            next_tool: 0,
            started: false,
            stopped: false,
        }
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> Bytes {
        let v = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.public_model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}],
        });
        sse_bytes(None, &v.to_string())
    }
}

impl StreamTranslator for MessagesToChat {
    fn event(&mut self, ev: &SseEvent, out: &mut Vec<Bytes>) {
        let Ok(v) = serde_json::from_str::<Value>(&ev.data) else {
            return;
        };
        let kind = v
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or(ev.event.as_str());
        match kind {
            "message_start" => {
                let msg = v.get("message").unwrap_or(&Value::Null);
                self.id = msg
                    .get("id")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                self.usage = anthropic_usage(msg);
                out.push(self.chunk(json!({"role": "assistant", "content": ""}), None));
            }
            "content_block_start" => {
                let block = v.get("content_block").unwrap_or(&Value::Null);
                if block.get("type").and_then(Value::as_str) == Some("tool_use") {
                    let index = num(&v, "index");
                    let tool = self.next_tool;
                    self.next_tool += 1;
                    self.tools.push((index, tool));
                    self.started = true;
                    out.push(self.chunk(
                        json!({"tool_calls": [{
                            "index": tool,
                            "id": block.get("id").cloned().unwrap_or(Value::Null),
                            "type": "function",
                            "function": {"name": block.get("name").cloned().unwrap_or(Value::Null), "arguments": ""},
                        }]}),
                        None,
                    ));
                }
            }
            "content_block_delta" => {
                let d = v.get("delta").unwrap_or(&Value::Null);
                match d.get("type").and_then(Value::as_str) {
                    Some("text_delta") => {
                        self.started = true;
                        let text = d.get("text").cloned().unwrap_or_else(|| "".into());
                        out.push(self.chunk(json!({"content": text}), None));
                    }
                    Some("input_json_delta") => {
                        let index = num(&v, "index");
                        if let Some(&(_, tool)) = self.tools.iter().find(|(i, _)| *i == index) {
                            let part = d.get("partial_json").cloned().unwrap_or_else(|| "".into());
                            out.push(self.chunk(
                                json!({"tool_calls": [{"index": tool, "function": {"arguments": part}}]}),
                                None,
                            ));
                        }
                    }
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(u) = v.get("usage") {
                    self.usage.assign_delta(u);
                }
                if let Some(stop) = v.pointer("/delta/stop_reason").and_then(Value::as_str) {
                    out.push(self.chunk(json!({}), Some(finish_reason(stop))));
                }
            }
            "message_stop" => self.stopped = true,
            "error" => {
                let e = anthropic_error_to_openai(&v);
                out.push(sse_bytes(None, &e.to_string()));
            }
            _ => {}
        }
    }

    fn finish(&mut self, complete: bool, out: &mut Vec<Bytes>) {
        if !(complete && self.stopped) {
            return;
        }
        if self.include_usage {
            let v = json!({
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.public_model,
                "choices": [],
                "usage": usage_json(self.usage),
            });
            out.push(sse_bytes(None, &v.to_string()));
        }
        out.push(sse_bytes(None, "[DONE]"));
    }

    fn usage(&self) -> Usage {
        self.usage
    }

    fn started(&self) -> bool {
        self.started
    }
}

/// A native Anthropic stream passed on: events re-sent as they came (the model renamed
/// in `message_start`), usage read along the way.
pub struct MessagesStream {
    public_model: String,
    usage: Usage,
    started: bool,
}

impl MessagesStream {
    /// A meter for a native stream of `public_model`.
    pub fn new(public_model: &str) -> Self {
        Self {
            public_model: public_model.to_owned(),
            usage: Usage::default(),
            started: false,
        }
    }
}

impl StreamTranslator for MessagesStream {
    fn event(&mut self, ev: &SseEvent, out: &mut Vec<Bytes>) {
        let event = (ev.event != "message").then_some(ev.event.as_str());
        let Ok(mut v) = serde_json::from_str::<Value>(&ev.data) else {
            out.push(sse_bytes(event, &ev.data));
            return;
        };
        match v.get("type").and_then(Value::as_str) {
            Some("message_start") => {
                if let Some(msg) = v.get_mut("message") {
                    self.usage = anthropic_usage(msg);
                    if let Some(m) = msg.as_object_mut() {
                        m.insert("model".into(), self.public_model.as_str().into());
                    }
                }
            }
            Some("message_delta") => {
                if let Some(u) = v.get("usage") {
                    self.usage.assign_delta(u);
                }
            }
            Some("content_block_delta") | Some("content_block_start") => self.started = true,
            _ => {}
        }
        out.push(sse_bytes(event, &v.to_string()));
    }

    fn finish(&mut self, _complete: bool, _out: &mut Vec<Bytes>) {}

    fn usage(&self) -> Usage {
        self.usage
    }

    fn started(&self) -> bool {
        self.started
    }
}

#[cfg(test)]
mod tests;
