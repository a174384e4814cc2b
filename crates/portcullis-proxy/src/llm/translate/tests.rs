use proptest::prelude::*;

use super::*;
use crate::pipeline::SseParser;

fn ev(event: &str, data: Value) -> SseEvent {
    SseEvent {
        event: event.into(),
        data: data.to_string(),
        id: String::new(),
    }
}

fn text(out: &[Bytes]) -> String {
    out.iter()
        .map(|b| std::str::from_utf8(b).unwrap())
        .collect()
}

/// The data payloads of a serialized stream.
fn datas(s: &str) -> Vec<String> {
    s.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            e.lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect()
}

#[test]
fn chat_request_becomes_a_messages_request() {
    let req = json!({
        "model": "claude",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "No lists."}]},
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            {"role": "user", "content": "Thanks"},
        ],
        "max_completion_tokens": 50,
        "temperature": 0.5,
        "stop": "END",
        "stream": true,
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "w", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
        "tool_choice": "required",
        "user": "u-1",
    });
    let out = chat_to_messages(&req, "claude-3-5-haiku").unwrap();
    assert_eq!(out["model"], "claude-3-5-haiku");
    assert_eq!(out["system"], "Be brief.\n\nNo lists.");
    assert_eq!(out["max_tokens"], 50);
    assert_eq!(out["temperature"], 0.5);
    assert_eq!(out["stream"], true);
    assert_eq!(out["stop_sequences"], json!(["END"]));
    assert_eq!(out["tool_choice"], json!({"type": "any"}));
    assert_eq!(out["metadata"], json!({"user_id": "u-1"}));
    assert_eq!(
        out["tools"][0]["input_schema"]["properties"]["city"]["type"],
        "string"
    );
    let msgs = out["messages"].as_array().unwrap();
    // user, assistant (tool_use), user (tool_result + "Thanks" merged): turns alternate.
    assert_eq!(msgs.len(), 3);
    assert_eq!(msgs[1]["content"][0]["type"], "tool_use");
    assert_eq!(msgs[1]["content"][0]["input"], json!({"city": "Paris"}));
    assert_eq!(msgs[2]["content"][0]["type"], "tool_result");
    assert_eq!(msgs[2]["content"][0]["tool_use_id"], "call_1");
    assert_eq!(msgs[2]["content"][1]["text"], "Thanks");
    // Anthropic requires max_tokens: a default when the client sets none.
    let out = chat_to_messages(
        &json!({"messages": [{"role": "user", "content": "hi"}]}),
        "m",
    )
    .unwrap();
    assert_eq!(out["max_tokens"], DEFAULT_MAX_TOKENS);
}

#[test]
fn null_limits_and_empty_text_beside_tool_calls() {
    let out = chat_to_messages(
        &json!({"max_completion_tokens": null, "max_tokens": 33, "messages": [
            {"role": "user", "content": "w?"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ]},
        ]}),
        "m",
    )
    .unwrap();
    // A null max_completion_tokens does not hide max_tokens.
    assert_eq!(out["max_tokens"], 33);
    // Anthropic refuses empty text blocks: only the tool_use block is left.
    assert_eq!(
        out["messages"][1]["content"],
        json!([{"type": "tool_use", "id": "c", "name": "f", "input": {}}])
    );
}

#[test]
fn untranslatable_requests_are_refused_with_the_reason() {
    let e = |v: Value| chat_to_messages(&v, "m").unwrap_err().0;
    assert!(e(json!({"messages": [{"role": "user", "content": "a"}], "n": 2})).contains("n > 1"));
    assert!(e(json!({"messages": "x"})).contains("messages must be an array"));
    assert!(e(json!({"messages": [{"content": "a"}]})).contains("needs a role"));
    assert!(e(json!({"messages": [{"role": "tool", "content": "a"}]})).contains("tool_call_id"));
    assert!(
        e(json!({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}))
            .contains("input_audio")
    );
}

#[test]
fn images_become_image_blocks() {
    let out = chat_to_messages(
        &json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}},
            {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}},
        ]}]}),
        "m",
    )
    .unwrap();
    let c = &out["messages"][0]["content"];
    assert_eq!(
        c[0]["source"],
        json!({"type": "base64", "media_type": "image/png", "data": "iVBOR"})
    );
    assert_eq!(
        c[1]["source"],
        json!({"type": "url", "url": "https://x.test/a.png"})
    );
}

#[test]
fn messages_response_becomes_a_chat_completion() {
    let resp = json!({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
        "content": [
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
        ],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 10, "output_tokens": 7, "cache_read_input_tokens": 3},
    });
    let out = messages_to_chat(&resp, "claude-mini", 42);
    assert_eq!(out["object"], "chat.completion");
    assert_eq!(out["model"], "claude-mini");
    assert_eq!(out["created"], 42);
    assert_eq!(out["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(out["choices"][0]["message"]["content"], "Let me check.");
    let tc = &out["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(tc["function"]["name"], "get_weather");
    assert_eq!(
        serde_json::from_str::<Value>(tc["function"]["arguments"].as_str().unwrap()).unwrap(),
        json!({"city": "Paris"})
    );
    assert_eq!(
        out["usage"],
        json!({"prompt_tokens": 13, "completion_tokens": 7, "total_tokens": 20})
    );
    for (a, o) in [
        ("end_turn", "stop"),
        ("max_tokens", "length"),
        ("stop_sequence", "stop"),
        ("tool_use", "tool_calls"),
    ] {
        assert_eq!(finish_reason(a), o);
    }
}

#[test]
fn errors_keep_their_message_across_formats() {
    let a = anthropic_error("rate_limit_error", "slow down");
    let o = anthropic_error_to_openai(&a);
    assert_eq!(o["error"]["message"], "slow down");
    assert_eq!(o["error"]["type"], "rate_limit_error");
}

fn anthropic_stream() -> Vec<SseEvent> {
    vec![
        ev(
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_1", "model": "claude-x", "usage": {"input_tokens": 12, "output_tokens": 1}}}),
        ),
        ev(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        ev("ping", json!({"type": "ping"})),
        ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}),
        ),
        ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " world"}}),
        ),
        ev(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ),
        ev(
            "content_block_start",
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}}),
        ),
        ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"a\":"}}),
        ),
        ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "1}"}}),
        ),
        ev(
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 5}}),
        ),
        ev(
            "message_delta",
            json!({"type": "message_delta", "delta": {}, "usage": {"output_tokens": 9}}),
        ),
        ev("message_stop", json!({"type": "message_stop"})),
    ]
}

#[test]
fn anthropic_stream_becomes_openai_chunks_with_exact_usage() {
    let mut t = MessagesToChat::new("claude-mini", true, 7);
    let mut out = Vec::new();
    for e in anthropic_stream() {
        t.event(&e, &mut out);
    }
    t.finish(true, &mut out);
    // message_delta output_tokens are cumulative: the last one (9) counts, not 1+5+9.
    assert_eq!(
        t.usage(),
        Usage {
            input: 12,
            output: 9
        }
    );
    let d = datas(&text(&out));
    let chunks: Vec<Value> = d[..d.len() - 1]
        .iter()
        .map(|s| serde_json::from_str(s).unwrap())
        .collect();
    assert_eq!(d.last().unwrap(), "[DONE]");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "Hello world");
    let args: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert_eq!(args, "{\"a\":1}");
    assert!(
        chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"] == "tool_calls")
    );
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["prompt_tokens"], 12);
    assert_eq!(usage["usage"]["completion_tokens"], 9);
    assert!(chunks.iter().all(|c| c["model"] == "claude-mini"));
    // Without include_usage: no usage chunk, the usage still metered.
    let mut t = MessagesToChat::new("claude-mini", false, 7);
    let mut out = Vec::new();
    for e in anthropic_stream() {
        t.event(&e, &mut out);
    }
    t.finish(true, &mut out);
    assert!(!text(&out).contains("\"usage\""));
    assert_eq!(
        t.usage(),
        Usage {
            input: 12,
            output: 9
        }
    );
}

fn openai_stream() -> Vec<SseEvent> {
    let chunk = |delta: Value, finish: Value| {
        ev(
            "message",
            json!({"id": "c1", "object": "chat.completion.chunk", "model": "stub-small", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], "usage": null}),
        )
    };
    vec![
        chunk(json!({"role": "assistant", "content": ""}), Value::Null),
        chunk(json!({"content": "Hi"}), Value::Null),
        chunk(json!({}), json!("stop")),
        ev(
            "message",
            json!({"id": "c1", "object": "chat.completion.chunk", "model": "stub-small", "choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}}),
        ),
        SseEvent {
            event: "message".into(),
            data: "[DONE]".into(),
            id: String::new(),
        },
    ]
}

#[test]
fn openai_stream_usage_chunk_only_when_asked() {
    for wants in [false, true] {
        let mut t = ChatStream::new("gpt-4o-mini", wants);
        let mut out = Vec::new();
        for e in openai_stream() {
            t.event(&e, &mut out);
        }
        assert_eq!(
            t.usage(),
            Usage {
                input: 4,
                output: 2
            }
        );
        let s = text(&out);
        assert_eq!(s.contains("\"prompt_tokens\""), wants, "{s}");
        // `usage: null` goes too when the client did not ask for usage.
        assert_eq!(s.contains("\"usage\""), wants, "{s}");
        assert!(
            !s.contains("stub-small"),
            "the provider's model name leaked: {s}"
        );
        assert!(s.ends_with("data: [DONE]\n\n"));
    }
}

#[test]
fn native_stream_meters_and_renames() {
    let mut t = MessagesStream::new("claude-mini");
    let mut out = Vec::new();
    for e in anthropic_stream() {
        t.event(&e, &mut out);
    }
    assert_eq!(
        t.usage(),
        Usage {
            input: 12,
            output: 9
        }
    );
    let s = text(&out);
    assert!(s.starts_with("event: message_start\ndata: "));
    assert!(s.contains("\"model\":\"claude-mini\""));
    assert!(!s.contains("claude-x"));
}

fn serialize(events: &[SseEvent]) -> Vec<u8> {
    let mut s = Vec::new();
    for e in events {
        s.extend_from_slice(&sse_bytes(Some(&e.event), &e.data));
    }
    s
}

/// Feeds `bytes` in the pieces `cuts` makes, through a parser into `t`.
fn run(t: &mut dyn StreamTranslator, bytes: &[u8], cuts: &[usize]) -> String {
    let mut parser = SseParser::new(1 << 20);
    let mut out = Vec::new();
    let mut events = Vec::new();
    let mut at = 0;
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    points.sort_unstable();
    points.push(bytes.len());
    for p in points {
        parser.feed(&bytes[at..p], &mut |e| events.push(e));
        at = p;
        for e in events.drain(..) {
            t.event(&e, &mut out);
        }
    }
    t.finish(true, &mut out);
    text(&out)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, rng_seed: proptest::test_runner::RngSeed::Fixed(0x11a1_7e57), ..ProptestConfig::default() })]

    /// Any split of the upstream byte stream gives the same client stream and the same
    /// usage (WHATWG HTML section 9.2.6: events are defined by lines, not by reads).
    #[test]
    fn any_split_gives_the_same_translation(cuts in proptest::collection::vec(0usize..4096, 0..24)) {
        let bytes = serialize(&anthropic_stream());
        let whole = {
            let mut t = MessagesToChat::new("m", true, 1);
            (run(&mut t, &bytes, &[]), t.usage())
        };
        let mut t = MessagesToChat::new("m", true, 1);
        prop_assert_eq!((run(&mut t, &bytes, &cuts), t.usage()), whole);

        let bytes = serialize(&openai_stream());
        let whole = {
            let mut t = ChatStream::new("m", false);
            (run(&mut t, &bytes, &[]), t.usage())
        };
        let mut t = ChatStream::new("m", false);
        prop_assert_eq!((run(&mut t, &bytes, &cuts), t.usage()), whole);
    }

    /// Whatever text the deltas carry (quotes, newlines, unicode), the translated stream
    /// carries exactly the same text.
    #[test]
    fn text_survives_translation(parts in proptest::collection::vec(any::<String>(), 1..8)) {
        let mut events = vec![ev("message_start", json!({"type": "message_start", "message": {"id": "m", "usage": {"input_tokens": 1}}}))];
        for p in &parts {
            events.push(ev("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}})));
        }
        events.push(ev("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 3}})));
        events.push(ev("message_stop", json!({"type": "message_stop"})));
        let mut t = MessagesToChat::new("m", false, 1);
        let s = run(&mut t, &serialize(&events), &[7, 19, 101]);
        let d = datas(&s);
        let got: String = d.iter().filter(|x| *x != "[DONE]").filter_map(|x| {
            let v: Value = serde_json::from_str(x).unwrap();
            v["choices"][0]["delta"]["content"].as_str().map(str::to_owned)
        }).collect();
        prop_assert_eq!(got, parts.concat());
        prop_assert_eq!(t.usage(), Usage { input: 1, output: 3 });
    }
}
