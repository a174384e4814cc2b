"""The stub on its own, driven by the real SDKs: its wire formats are what the SDKs parse, and its
rules (echo, tool call, token counts, ledger, keys, disconnects) hold. No gateway needed:
`pytest tests/ai/test_stub_direct.py` runs without a portcullis binary."""

from __future__ import annotations

import base64
import http.client as hc
import json
import socket
import struct
import time

import anthropic
import httpx
import openai
import pytest

from conftest import BACKUP, PRIMARY, WEATHER_TOOL, WEATHER_TOOL_ANTHROPIC, http, wait_for  # noqa: I001 (tests/ai is on sys.path)


@pytest.fixture
def oai(stub):
    stub.reset()
    return openai.OpenAI(api_key=PRIMARY, base_url=stub.api_base, max_retries=0, timeout=30)


@pytest.fixture
def ant(stub):
    stub.reset()
    return anthropic.Anthropic(api_key=PRIMARY, base_url=stub.url, max_retries=0, timeout=30)


def expected_vector(text: str) -> list[float]:
    import hashlib

    d = hashlib.sha256(text.encode()).digest()
    return [(int.from_bytes(d[2 * i : 2 * i + 2], "big") - 32768) / 32768 for i in range(8)]


# -- OpenAI ---------------------------------------------------------------------------------


def test_openai_chat_non_stream(oai, stub):
    r = oai.chat.completions.create(
        model="stub-small",
        messages=[{"role": "system", "content": "You are terse."}, {"role": "user", "content": "hello big  world"}],
    )
    assert r.id.startswith("chatcmpl-")
    assert r.object == "chat.completion"
    assert isinstance(r.created, int)
    assert r.model == "stub-small"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == "echo: hello big  world"
    assert r.choices[0].finish_reason == "stop"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (6, 4, 10)
    assert stub.ledger() == [{"api": "openai", "path": "/v1/chat/completions", "model": "stub-small", "input_tokens": 6,
                              "output_tokens": 4, "stream": False, "completed": True, "key": PRIMARY}]
    last = stub.last()
    assert last["path"] == "/v1/chat/completions"
    assert last["headers"]["authorization"] == f"Bearer {PRIMARY}"
    assert last["body"]["messages"][1]["content"] == "hello big  world"


def test_openai_is_deterministic(oai):
    kw = dict(model="stub-small", messages=[{"role": "user", "content": "same input"}])
    a, b = oai.chat.completions.create(**kw), oai.chat.completions.create(**kw)
    assert a.choices[0].message.content == b.choices[0].message.content == "echo: same input"
    assert a.created == b.created


def test_openai_content_parts_and_max_tokens(oai, stub):
    r = oai.chat.completions.create(
        model="stub-small", max_tokens=2,
        messages=[{"role": "user", "content": [{"type": "text", "text": "one two"}, {"type": "text", "text": "three"}]}],
    )
    assert r.choices[0].message.content == "echo: one"
    assert r.choices[0].finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (3, 2)


def test_openai_stream_without_usage(oai, stub):
    chunks = list(oai.chat.completions.create(
        model="stub-small", stream=True, messages=[{"role": "user", "content": "a b c"}]))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "echo: a b c"
    assert len(chunks) == 1 + 4 + 1  # role, one per word, finish
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)
    assert stub.ledger()[-1] == {"api": "openai", "path": "/v1/chat/completions", "model": "stub-small",
                                      "input_tokens": 3, "output_tokens": 4, "stream": True, "completed": True,
                                      "key": PRIMARY}


def test_openai_stream_with_usage(oai, stub):
    chunks = list(oai.chat.completions.create(
        model="stub-small", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "a b c"}]))
    assert chunks[-1].choices == []
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (3, 4)
    assert all(c.usage is None for c in chunks[:-1])
    assert "".join(c.choices[0].delta.content or "" for c in chunks[:-1]) == "echo: a b c"


def test_openai_stream_raw_wire_format(stub):
    """The bytes: chunked framing, `data: ` lines, `"usage":null` while include_usage, [DONE]."""
    stub.reset()
    c = hc.HTTPConnection("127.0.0.1", stub.port, timeout=10)
    body = json.dumps({"model": "stub-small", "stream": True, "stream_options": {"include_usage": True},
                       "messages": [{"role": "user", "content": "x"}]})
    c.request("POST", "/v1/chat/completions", body, {"Authorization": f"Bearer {PRIMARY}", "Content-Type": "application/json"})
    r = c.getresponse()
    assert r.status == 200
    assert r.getheader("Transfer-Encoding") == "chunked"
    assert r.getheader("Content-Type").startswith("text/event-stream")
    text = r.read().decode()
    events = [e for e in text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    parsed = [json.loads(e[6:]) for e in events[:-1]]
    assert all("usage" in p for p in parsed)
    assert all(p["usage"] is None for p in parsed[:-1])
    # keep-alive: the same connection serves a JSON request next
    c.request("GET", "/v1/models", headers={"Authorization": f"Bearer {PRIMARY}"})
    r2 = c.getresponse()
    assert r2.status == 200 and int(r2.getheader("Content-Length")) == len(r2.read())
    c.close()


def test_openai_tool_call(oai, stub):
    r = oai.chat.completions.create(
        model="stub-small", tools=[WEATHER_TOOL],
        messages=[{"role": "user", "content": "What is the weather in Paris?"}])
    msg = r.choices[0].message
    assert r.choices[0].finish_reason == "tool_calls"
    assert msg.content is None
    assert len(msg.tool_calls) == 1 and msg.tool_calls[0].id.startswith("call_")
    assert msg.tool_calls[0].function.name == "get_weather"
    assert json.loads(msg.tool_calls[0].function.arguments) == {"city": "Paris"}
    assert r.usage.completion_tokens == 2


def test_openai_tool_call_stream(oai):
    chunks = list(oai.chat.completions.create(
        model="stub-small", tools=[WEATHER_TOOL], stream=True,
        messages=[{"role": "user", "content": "weather please"}]))
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert calls[0].function.name == "get_weather" and calls[0].id.startswith("call_")
    assert json.loads("".join(tc.function.arguments or "" for tc in calls)) == {"city": "Paris"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_openai_tool_result_round_trip(oai):
    r = oai.chat.completions.create(
        model="stub-small", tools=[WEATHER_TOOL],
        messages=[
            {"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny 21C"},
        ])
    assert r.choices[0].message.content == "echo: sunny 21C"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens == 6 + 2


def test_openai_errors(oai, stub):
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model="stub-error", messages=[{"role": "user", "content": "x"}])
    assert e.value.response.json()["error"]["type"] == "invalid_request_error"
    with pytest.raises(openai.InternalServerError):
        oai.chat.completions.create(model="stub-500", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError, match="stream_options"):
        oai.chat.completions.create(model="stub-small", stream_options={"include_usage": True},
                                    messages=[{"role": "user", "content": "x"}])
    bad = openai.OpenAI(api_key="sk-wrong", base_url=stub.api_base, max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="stub-small", messages=[{"role": "user", "content": "x"}])
    assert stub.ledger() == []  # errors are not served completions


def test_openai_rate_limited_key(limited_stub):
    limited_stub.reset()
    c = openai.OpenAI(api_key=PRIMARY, base_url=limited_stub.api_base, max_retries=0)
    with pytest.raises(openai.RateLimitError) as e:
        c.chat.completions.create(model="stub-small", messages=[{"role": "user", "content": "x"}])
    assert e.value.response.headers["retry-after"] == "1"
    ok = openai.OpenAI(api_key=BACKUP, base_url=limited_stub.api_base, max_retries=0)
    assert ok.chat.completions.create(model="stub-small", messages=[{"role": "user", "content": "x"}]).choices[0].message.content == "echo: x"
    assert [e["key"] for e in limited_stub.ledger()] == [BACKUP]


def test_openai_embeddings(oai, stub):
    r = oai.embeddings.create(model="stub-embed", input=["hello world", "a b c"])  # SDK asks for base64
    assert stub.last()["body"].get("encoding_format") == "base64"
    assert r.object == "list" and r.model == "stub-embed"
    assert [d.index for d in r.data] == [0, 1]
    assert r.data[0].embedding == expected_vector("hello world")
    assert r.data[1].embedding == expected_vector("a b c")
    assert (r.usage.prompt_tokens, r.usage.total_tokens) == (5, 5)
    f = oai.embeddings.create(model="stub-embed", input="hello world", encoding_format="float")
    assert f.data[0].embedding == expected_vector("hello world")
    assert [(e["path"], e["input_tokens"], e["output_tokens"]) for e in stub.ledger()] == [
        ("/v1/embeddings", 5, 0), ("/v1/embeddings", 2, 0)]


def test_openai_models(oai):
    ids = [m.id for m in oai.models.list()]
    assert {"stub-small", "stub-slow", "stub-error", "stub-500", "stub-embed"} <= set(ids)


def test_openai_stream_disconnect_is_recorded(oai, stub):
    s = oai.chat.completions.create(model="stub-slow", stream=True, messages=[{"role": "user", "content": "go"}])
    it = iter(s)
    got = [next(it) for _ in range(4)]
    assert got[1].choices[0].delta.content == "w1 "
    s.close()
    entry = wait_for(lambda: stub.ledger(), timeout=10, what="the slow stream's ledger entry")[0]
    assert entry["completed"] is False and entry["stream"] is True
    assert 3 <= entry["output_tokens"] < 200
    # the server is still fine
    assert oai.chat.completions.create(model="stub-small", messages=[{"role": "user", "content": "ok"}]).choices[0].message.content == "echo: ok"


def test_host_header_override_reaches_the_server(stub):
    """The gateway tests pick routes by sending `Host: <route host>` to 127.0.0.1."""
    c = openai.OpenAI(api_key=PRIMARY, base_url=stub.api_base, default_headers={"Host": "openai.test"}, max_retries=0)
    c.chat.completions.create(model="stub-small", messages=[{"role": "user", "content": "x"}])
    assert stub.last()["headers"]["host"] == "openai.test"
    a = anthropic.Anthropic(auth_token=PRIMARY, base_url=stub.url, default_headers={"Host": "anthropic.test"}, max_retries=0)
    a.messages.create(model="stub-small", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert stub.last()["headers"]["host"] == "anthropic.test"


# -- Anthropic ------------------------------------------------------------------------------


def test_anthropic_non_stream(ant, stub):
    m = ant.messages.create(model="stub-small", max_tokens=50, system="Be brief.",
                            messages=[{"role": "user", "content": "hi there"}])
    assert m.id.startswith("msg_") and m.type == "message" and m.role == "assistant"
    assert [b.type for b in m.content] == ["text"]
    assert m.content[0].text == "echo: hi there"
    assert m.stop_reason == "end_turn" and m.stop_sequence is None
    assert (m.usage.input_tokens, m.usage.output_tokens) == (4, 3)
    assert stub.ledger() == [{"api": "anthropic", "path": "/v1/messages", "model": "stub-small", "input_tokens": 4,
                              "output_tokens": 3, "stream": False, "completed": True, "key": PRIMARY}]


def test_anthropic_x_api_key(stub):
    stub.reset()
    status, headers, body = http("POST", stub.url + "/v1/messages",
                                 {"model": "stub-small", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
                                 {"x-api-key": BACKUP, "anthropic-version": "2023-06-01"})
    assert status == 200 and json.loads(body)["content"][0]["text"] == "echo: x"
    assert "request-id" in headers
    assert stub.ledger()[0]["key"] == BACKUP
    status, _, body = http("POST", stub.url + "/v1/messages",
                           {"model": "stub-small", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
                           {"x-api-key": "sk-wrong", "anthropic-version": "2023-06-01"})
    assert status == 401 and json.loads(body)["error"]["type"] == "authentication_error"
    status, _, body = http("POST", stub.url + "/v1/messages",
                           {"model": "stub-small", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
                           {"x-api-key": PRIMARY})
    assert status == 400 and "anthropic-version" in json.loads(body)["error"]["message"]


def test_anthropic_max_tokens(ant):
    m = ant.messages.create(model="stub-small", max_tokens=2, messages=[{"role": "user", "content": "one two three"}])
    assert m.content[0].text == "echo: one" and m.stop_reason == "max_tokens" and m.usage.output_tokens == 2


def test_anthropic_stream_events(ant, stub):
    events = list(ant.messages.create(model="stub-small", max_tokens=50, stream=True, system="Be brief.",
                                      messages=[{"role": "user", "content": "hi there"}]))
    types = [e.type for e in events]  # the SDK drops `ping` (test_anthropic_raw_wire_format sees it)
    assert types[:2] == ["message_start", "content_block_start"]
    assert types[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert types.count("content_block_delta") == 3
    assert events[0].message.usage.input_tokens == 4 and events[0].message.usage.output_tokens == 1
    assert "".join(e.delta.text for e in events if e.type == "content_block_delta") == "echo: hi there"
    delta = [e for e in events if e.type == "message_delta"][0]
    assert delta.delta.stop_reason == "end_turn" and delta.usage.output_tokens == 3
    assert stub.ledger()[-1]["stream"] is True and stub.ledger()[-1]["output_tokens"] == 3


def test_anthropic_raw_wire_format(stub):
    stub.reset()
    c = hc.HTTPConnection("127.0.0.1", stub.port, timeout=10)
    c.request("POST", "/v1/messages", json.dumps({"model": "stub-small", "max_tokens": 9, "stream": True,
                                                 "messages": [{"role": "user", "content": "x"}]}),
              {"x-api-key": PRIMARY, "anthropic-version": "2023-06-01", "Content-Type": "application/json"})
    r = c.getresponse()
    text = r.read().decode()
    blocks = [b for b in text.split("\n\n") if b]
    assert [b.split("\n")[0][7:] for b in blocks] == [
        "message_start", "content_block_start", "ping", "content_block_delta", "content_block_delta",
        "content_block_stop", "message_delta", "message_stop"]
    for b in blocks:
        ev, data = b.split("\n")
        assert ev.startswith("event: ") and data.startswith("data: ")
        assert json.loads(data[6:])["type"] == ev[7:]
    c.close()


def test_anthropic_stream_helper(ant):
    with ant.messages.stream(model="stub-small", max_tokens=50, messages=[{"role": "user", "content": "hi there"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == "echo: hi there"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (2, 3)


def test_anthropic_tool_use(ant):
    m = ant.messages.create(model="stub-small", max_tokens=50, tools=[WEATHER_TOOL_ANTHROPIC],
                            messages=[{"role": "user", "content": "What's the weather?"}])
    assert m.stop_reason == "tool_use"
    assert m.content[0].type == "tool_use" and m.content[0].name == "get_weather"
    assert m.content[0].input == {"city": "Paris"} and m.content[0].id.startswith("toolu_")
    with ant.messages.stream(model="stub-small", max_tokens=50, tools=[WEATHER_TOOL_ANTHROPIC],
                             messages=[{"role": "user", "content": "weather?"}]) as s:
        final = s.get_final_message()
    assert final.content[0].input == {"city": "Paris"} and final.stop_reason == "tool_use"
    back = ant.messages.create(model="stub-small", max_tokens=50, tools=[WEATHER_TOOL_ANTHROPIC], messages=[
        {"role": "user", "content": "What's the weather?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny 21C"}]},
    ])
    assert back.content[0].text == "echo: sunny 21C" and back.stop_reason == "end_turn"


def test_anthropic_errors(ant, stub):
    with pytest.raises(anthropic.BadRequestError) as e:
        ant.messages.create(model="stub-error", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    body = e.value.response.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.BadRequestError, match="system"):
        ant.messages.create(model="stub-small", max_tokens=5, messages=[{"role": "system", "content": "x"}])
    with pytest.raises(anthropic.InternalServerError):
        ant.messages.create(model="stub-500", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    status, _, body = http("POST", stub.url + "/v1/messages", {"model": "stub-small", "messages": [{"role": "user", "content": "x"}]},
                           {"x-api-key": PRIMARY, "anthropic-version": "2023-06-01"})
    assert status == 400 and "max_tokens" in json.loads(body)["error"]["message"]
    assert stub.ledger() == []


def test_anthropic_stream_disconnect_is_recorded(ant, stub):
    with ant.messages.stream(model="stub-slow", max_tokens=1000, messages=[{"role": "user", "content": "go"}]) as s:
        it = iter(s.text_stream)
        assert [next(it) for _ in range(3)] == ["w1 ", "w2 ", "w3 "]
    entry = wait_for(lambda: stub.ledger(), timeout=10, what="the slow stream's ledger entry")[0]
    assert entry["api"] == "anthropic" and entry["completed"] is False and entry["output_tokens"] < 200


# -- control endpoints and robustness -------------------------------------------------------


def test_reset_and_requests_log(stub):
    stub.reset()
    assert stub.ledger() == [] and stub.requests() == []
    http("GET", stub.url + "/v1/models", headers={"Authorization": f"Bearer {PRIMARY}"})
    reqs = stub.requests()
    assert [(r["method"], r["path"]) for r in reqs] == [("GET", "/v1/models")]
    assert stub.last()["path"] == "/v1/models"
    assert stub.ledger() == []  # models are not metered


def test_abrupt_client_does_not_hurt_the_server(stub):
    for _ in range(5):
        s = socket.create_connection(("127.0.0.1", stub.port))
        body = json.dumps({"model": "stub-slow", "stream": True, "messages": [{"role": "user", "content": "x"}]}).encode()
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + PRIMARY.encode()
                  + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        s.recv(100)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST on close
        s.close()
    time.sleep(0.2)
    with httpx.Client(trust_env=False) as c:
        r = c.post(stub.api_base + "/chat/completions", headers={"Authorization": f"Bearer {PRIMARY}"},
                   json={"model": "stub-small", "messages": [{"role": "user", "content": "still here"}]})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "echo: still here"


def test_embedding_base64_is_float32_le(stub):
    status, _, body = http("POST", stub.api_base + "/embeddings", {"model": "stub-embed", "input": "q", "encoding_format": "base64"},
                           {"Authorization": f"Bearer {PRIMARY}"})
    assert status == 200
    raw = base64.b64decode(json.loads(body)["data"][0]["embedding"])
    assert list(struct.unpack("<8f", raw)) == expected_vector("q")
