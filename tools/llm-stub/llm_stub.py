#!/usr/bin/env python3
"""A deterministic stand-in for the OpenAI and Anthropic HTTP APIs, for Portcullis' AI-gateway tests.

Python 3 standard library only. One thread per connection, HTTP/1.1 keep-alive: JSON answers carry
Content-Length, streams (Server-Sent Events) are sent with `Transfer-Encoding: chunked` (close-delimited
for an HTTP/1.0 client).

    python3 tools/llm-stub/llm_stub.py --host 127.0.0.1 --port 9100 \
        [--keys sk-stub-primary,sk-stub-backup] [--rate-limited-keys sk-stub-primary] [--verbose]

Prints `listening on http://HOST:PORT` (flushed) once it accepts connections; `--port 0` picks a free
port and prints it. See README.md beside this file for the endpoints and the rules the answers follow.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import re
import select
import socket
import struct
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Fixed so that answers are byte-for-byte reproducible (2025-01-01T00:00:00Z).
CREATED = 1735689600
CREATED_AT = "2025-01-01T00:00:00Z"
SYSTEM_FINGERPRINT = "fp_llmstub"
TOOL_NAME = "get_weather"
TOOL_ARGUMENTS = {"city": "Paris"}
SLOW_WORDS = 200
SLOW_DELAY = 0.020  # seconds between two chunks of a stub-slow stream
EMBEDDING_DIMS = 8
MODELS = ["stub-small", "stub-slow", "stub-error", "stub-500", "stub-leaky", "stub-embed"]
MAX_REQUEST_LOG = 2000
MAX_BODY = 32 * 1024 * 1024
OPENAI_ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
ANTHROPIC_ROLES = {"user", "assistant"}


class ClientGone(Exception):
    """The client closed the connection while an answer was being written."""


class ApiError(Exception):
    """An error answer in the format of the API called."""

    def __init__(self, status: int, etype: str, message: str, code=None, param=None, headers=()):
        super().__init__(message)
        self.status = status
        self.etype = etype
        self.message = message
        self.code = code
        self.param = param
        self.headers = list(headers)


class State:
    """What the stub remembers: the ledger, the last request, a bounded log of requests."""

    def __init__(self, keys, rate_limited, retry_after=1):
        self.keys = keys  # None: any key (or none) is accepted
        self.rate_limited = rate_limited
        self.retry_after = str(retry_after)  # the retry-after of a rate-limited key's 429
        self.lock = threading.Lock()
        self.ledger: list[dict] = []
        self.last = None
        self.requests: list[dict] = []
        self.seq = 0

    def next_seq(self) -> int:
        with self.lock:
            self.seq += 1
            return self.seq

    def record_request(self, entry: dict) -> None:
        with self.lock:
            self.last = entry
            self.requests.append(entry)
            if len(self.requests) > MAX_REQUEST_LOG:
                del self.requests[: len(self.requests) - MAX_REQUEST_LOG]

    def record_usage(self, entry: dict) -> None:
        with self.lock:
            self.ledger.append(entry)

    def reset(self) -> None:
        with self.lock:
            self.ledger.clear()
            self.requests.clear()
            self.last = None


# ---------------------------------------------------------------------------------------------
# Text, tokens and the reply
# ---------------------------------------------------------------------------------------------


def count_words(text: str) -> int:
    return len(text.split())


def pieces_of(text: str) -> list[str]:
    """`text` cut into one piece per whitespace-separated word, each with the whitespace after it.

    "".join(pieces_of(t)) == t (leading whitespace rides on the first piece), and
    len(pieces_of(t)) == count_words(t).
    """
    pieces = re.findall(r"\S+\s*", text)
    lead = text[: len(text) - len(text.lstrip())]
    if pieces and lead:
        pieces[0] = lead + pieces[0]
    return pieces


def openai_content_text(content) -> str:
    """The text of an OpenAI message's `content` (a string, or a list of content parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return " ".join(parts)
    return ""


def anthropic_content_text(content) -> tuple[str, bool]:
    """The text of an Anthropic message's `content`, and whether it holds a tool_result."""
    if content is None:
        return "", False
    if isinstance(content, str):
        return content, False
    parts = []
    has_tool_result = False
    if isinstance(content, list):
        for block in content:
            if not isinstance(block, dict):
                continue
            kind = block.get("type")
            if kind == "text" and isinstance(block.get("text"), str):
                parts.append(block["text"])
            elif kind == "tool_result":
                has_tool_result = True
                inner = block.get("content")
                if isinstance(inner, str):
                    parts.append(inner)
                elif isinstance(inner, list):
                    for b in inner:
                        if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str):
                            parts.append(b["text"])
    return " ".join(parts), has_tool_result


class Reply:
    """What the model says: text cut into word pieces, or one get_weather tool call."""

    def __init__(self, model: str, last_text: str, last_is_user: bool, has_tools: bool, max_tokens):
        self.tool_call = False
        self.truncated = False
        if model == "stub-slow":
            text = " ".join(f"w{i}" for i in range(1, SLOW_WORDS + 1))
        elif has_tools and last_is_user and "weather" in last_text.lower():
            self.tool_call = True
            text = json.dumps(TOOL_ARGUMENTS)
        else:
            text = "echo: " + last_text
        pieces = pieces_of(text)
        if not self.tool_call and isinstance(max_tokens, int) and max_tokens < len(pieces):
            pieces = pieces[:max_tokens]
            pieces[-1] = pieces[-1].rstrip()
            self.truncated = True
        self.pieces = pieces
        self.text = "".join(pieces)
        self.output_tokens = len(pieces)


def embedding_vector(item) -> list[float]:
    """8 floats in [-1, 1), exact in float32 (k/32768), from the SHA-256 of the input."""
    seed = item if isinstance(item, str) else json.dumps(item, separators=(",", ":"))
    digest = hashlib.sha256(seed.encode("utf-8")).digest()
    return [(int.from_bytes(digest[2 * i : 2 * i + 2], "big") - 32768) / 32768 for i in range(EMBEDDING_DIMS)]


def hashed_id(prefix: str, seq: int, body: bytes, length: int = 24) -> str:
    h = hashlib.sha256(b"%d:" % seq + body).hexdigest()
    return prefix + h[:length]


def openai_usage(prompt: int, completion: int) -> dict:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def anthropic_usage(inp: int, out: int) -> dict:
    return {
        "input_tokens": inp,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": out,
        "service_tier": "standard",
    }


def compact(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


# ---------------------------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------------------------


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Send each reply at once: with Nagle on, the body waits for the ACK of the headers
    # (about 40 ms on Linux with delayed ACKs).
    disable_nagle_algorithm = True
    server_version = "llm-stub/1"
    timeout = 300  # an idle keep-alive connection is closed after this long
    state: State  # set on the class by main()
    verbose = False

    # -- plumbing --------------------------------------------------------------------------

    def version_string(self):
        return self.server_version

    def log_message(self, format, *args):  # noqa: A002 (BaseHTTPRequestHandler's signature)
        if self.verbose:
            sys.stderr.write("llm-stub: %s %s\n" % (self.address_string(), format % args))

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def do_PATCH(self):
        self._dispatch("PATCH")

    def _read_body(self) -> bytes:
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            out = bytearray()
            while True:
                line = self.rfile.readline(1024)
                if not line:
                    raise ValueError("truncated chunked body")
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while True:  # trailers, up to the empty line
                        t = self.rfile.readline(8192)
                        if t in (b"\r\n", b"\n", b""):
                            break
                    return bytes(out)
                if len(out) + size > MAX_BODY:
                    raise ValueError("body too large")
                out += self.rfile.read(size)
                self.rfile.readline(8)  # the CRLF after the chunk
        n = int(self.headers.get("Content-Length") or 0)
        if n < 0 or n > MAX_BODY:
            raise ValueError("bad Content-Length")
        return self.rfile.read(n) if n else b""

    def _dispatch(self, method: str):
        self._headers_sent = False
        self._api = "openai"
        self._raw = b""
        try:
            try:
                raw = self._read_body()
            except (ValueError, OSError):
                self.close_connection = True
                self._send_json(400, {"error": {"message": "could not read the request body", "type": "invalid_request_error", "param": None, "code": None}})
                return
            self._raw = raw
            path = self.path.split("?", 1)[0]
            if path.startswith("/_stub/"):
                self._control(method, path)
                return
            body = None
            if raw:
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = raw.decode("utf-8", "replace")
            headers: dict[str, str] = {}
            for k, v in self.headers.items():
                k = k.lower()
                headers[k] = headers[k] + ", " + v if k in headers else v
            self.state.record_request({"method": method, "path": self.path, "headers": headers, "body": body})
            self._route(method, path, body)
        except ClientGone:
            self.close_connection = True
        except ApiError as e:
            self._send_error(e)
        except Exception:  # a bug in the stub: answer 500, keep serving
            traceback.print_exc(file=sys.stderr)
            self.close_connection = True
            if not self._headers_sent:
                try:
                    self._send_error(ApiError(500, "server_error" if self._api == "openai" else "api_error", "llm-stub internal error"))
                except ClientGone:
                    pass

    def _write(self, data: bytes):
        try:
            self.wfile.write(data)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, socket.timeout, OSError) as e:
            raise ClientGone() from e

    def _send_json(self, status: int, obj, headers=()):
        body = json.dumps(obj).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self._headers_sent = True
        try:
            self.end_headers()
        except OSError as e:
            raise ClientGone() from e
        self._write(body)

    def _send_error(self, e: ApiError):
        seq = self.state.next_seq()
        if self._api == "anthropic":
            rid = hashed_id("req_", seq, self._raw)
            obj = {"type": "error", "error": {"type": e.etype, "message": e.message}, "request_id": rid}
            headers = [("request-id", rid)]
        else:
            rid = hashed_id("req_", seq, self._raw, 32)
            obj = {"error": {"message": e.message, "type": e.etype, "param": e.param, "code": e.code}}
            headers = [("x-request-id", rid)]
        self._send_json(e.status, obj, headers + e.headers)

    def _send_recorded(self, obj, headers, entry: dict):
        """A 200 JSON answer, then its ledger entry (`completed` false if the client went away)."""
        try:
            self._send_json(200, obj, headers)
        except ClientGone:
            entry["completed"] = False
            raise
        finally:
            self.state.record_usage(entry)

    def _client_gone(self) -> bool:
        """True when the peer has closed its side (readable with nothing to read)."""
        try:
            r, _, _ = select.select([self.connection], [], [], 0)
            if not r:
                return False
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def _start_stream(self, headers=()):
        self._chunked = self.request_version == "HTTP/1.1"
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        for k, v in headers:
            self.send_header(k, v)
        if self._chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self._headers_sent = True
        try:
            self.end_headers()
        except OSError as e:
            raise ClientGone() from e

    def _event(self, data: bytes):
        if self._client_gone():
            raise ClientGone()
        if self._chunked:
            self._write(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            self._write(data)

    def _end_stream(self):
        if self._chunked:
            self._write(b"0\r\n\r\n")

    # -- control endpoints -----------------------------------------------------------------

    def _control(self, method: str, path: str):
        st = self.state
        if path == "/_stub/ledger" and method == "GET":
            with st.lock:
                data = list(st.ledger)
            self._send_json(200, data)
        elif path == "/_stub/last" and method == "GET":
            with st.lock:
                data = st.last
            self._send_json(200, data)
        elif path == "/_stub/requests" and method == "GET":
            with st.lock:
                data = list(st.requests)
            self._send_json(200, data)
        elif path == "/_stub/reset" and method == "POST":
            st.reset()
            self._send_json(200, {"ok": True})
        else:
            self._send_json(404, {"error": {"message": f"no control endpoint {method} {path}", "type": "invalid_request_error", "param": None, "code": None}})

    # -- routing ---------------------------------------------------------------------------

    def _route(self, method: str, path: str, body):
        if path == "/v1/chat/completions":
            self._api = "openai"
            self._need(method, "POST")
            key = self._auth("openai")
            self._chat(body, key)
        elif path == "/v1/embeddings":
            self._api = "openai"
            self._need(method, "POST")
            key = self._auth("openai")
            self._embeddings(body, key)
        elif path == "/v1/messages":
            self._api = "anthropic"
            self._need(method, "POST")
            key = self._auth("anthropic")
            self._messages(body, key)
        elif path == "/v1/models" or path.startswith("/v1/models/"):
            anthropic = "x-api-key" in self.headers or "anthropic-version" in self.headers
            self._api = "anthropic" if anthropic else "openai"
            self._need(method, "GET")
            self._auth(self._api)
            self._models(path[len("/v1/models/") :] if path.startswith("/v1/models/") else None)
        else:
            self._api = "anthropic" if "anthropic-version" in self.headers else "openai"
            if self._api == "anthropic":
                raise ApiError(404, "not_found_error", f"Not Found: {method} {path}")
            raise ApiError(404, "invalid_request_error", f"Invalid URL ({method} {path})")

    def _need(self, method: str, wanted: str):
        if method != wanted:
            if self._api == "anthropic":
                raise ApiError(405, "invalid_request_error", f"Method Not Allowed: {method}", headers=[("Allow", wanted)])
            raise ApiError(405, "invalid_request_error", f"Invalid method for URL ({method} {self.path})", headers=[("Allow", wanted)])

    def _auth(self, api: str):
        """The key the request carries; raises the provider's 429 or 401 when it is not good."""
        h = self.headers.get("Authorization") or ""
        bearer = h[7:].strip() if h[:7].lower() == "bearer " else None
        if api == "openai":
            key = bearer
        else:
            # x-api-key first; current Anthropic SDKs send `api_key` as a Bearer token instead.
            key = self.headers.get("x-api-key")
            if key is None:
                key = bearer
        if key is not None and key in self.state.rate_limited:
            if api == "openai":
                raise ApiError(429, "requests", "Rate limit reached for requests on this key (llm-stub). Please try again in 1s.", code="rate_limit_exceeded",
                               headers=[("retry-after", self.state.retry_after), ("x-ratelimit-remaining-requests", "0")])
            raise ApiError(429, "rate_limit_error", "This request would exceed the rate limit for your organization (llm-stub).",
                           headers=[("retry-after", self.state.retry_after), ("anthropic-ratelimit-requests-remaining", "0")])
        if self.state.keys is not None and key not in self.state.keys:
            if api == "openai":
                if key is None:
                    raise ApiError(401, "invalid_request_error", "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).")
                raise ApiError(401, "invalid_request_error", "Incorrect API key provided.", code="invalid_api_key")
            if key is None:
                raise ApiError(401, "authentication_error", "x-api-key header is required")
            raise ApiError(401, "authentication_error", "invalid x-api-key")
        return key

    @staticmethod
    def _special_model(model: str, api: str, key=None):
        if model == "stub-leaky":
            # Quotes the key it refuses, as some providers do: the gateway must not pass it on.
            if api == "anthropic":
                raise ApiError(400, "invalid_request_error", f"key {key} may not use this model")
            raise ApiError(400, "invalid_request_error", f"key {key} may not use this model", code="model_not_allowed")
        if model == "stub-error":
            if api == "anthropic":
                raise ApiError(400, "invalid_request_error", "stub-error: this model always refuses the request")
            raise ApiError(400, "invalid_request_error", "stub-error: this model always refuses the request", code="stub_error", param="model")
        if model == "stub-500":
            if api == "anthropic":
                raise ApiError(500, "api_error", "Internal server error")
            raise ApiError(500, "server_error", "The server had an error while processing your request. Sorry about that!")

    @staticmethod
    def _max_tokens(body: dict, names, api: str):
        value = None
        for name in names:
            if body.get(name) is not None:
                value = body[name]
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    if api == "anthropic":
                        raise ApiError(400, "invalid_request_error", f"{name}: Input should be greater than or equal to 1")
                    raise ApiError(400, "invalid_request_error", f"Invalid '{name}': integer below minimum value. Expected a value >= 1.", code="integer_below_min_value", param=name)
        return value

    # -- OpenAI ----------------------------------------------------------------------------

    def _openai_checks(self, body):
        if not isinstance(body, dict):
            raise ApiError(400, "invalid_request_error", "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload.)")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise ApiError(400, "invalid_request_error", "you must provide a model parameter")
        return model

    def _chat(self, body, key):
        model = self._openai_checks(body)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "invalid_request_error", "Invalid 'messages': empty array. Expected an array with minimum length 1.", code="empty_array", param="messages")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in OPENAI_ROLES:
                raise ApiError(400, "invalid_request_error", f"Invalid value for 'messages[{i}].role'.", code="invalid_value", param=f"messages[{i}].role")
        stream = body.get("stream") is True
        stream_options = body.get("stream_options")
        if stream_options is not None and not stream:
            raise ApiError(400, "invalid_request_error", "The 'stream_options' parameter is only allowed when 'stream' is enabled.", param="stream_options")
        max_tokens = self._max_tokens(body, ("max_completion_tokens", "max_tokens"), "openai")
        self._special_model(model, "openai", key)
        include_usage = stream and isinstance(stream_options, dict) and stream_options.get("include_usage") is True

        input_tokens = sum(count_words(openai_content_text(m.get("content"))) for m in messages)
        last_text, last_is_user = "", False
        for m in reversed(messages):
            if m.get("role") in ("user", "tool"):
                last_text = openai_content_text(m.get("content"))
                last_is_user = m.get("role") == "user"
                break
        has_tools = isinstance(body.get("tools"), list) and bool(body["tools"]) and body.get("tool_choice") != "none"
        reply = Reply(model, last_text, last_is_user, has_tools, max_tokens)

        seq = self.state.next_seq()
        cid = hashed_id("chatcmpl-", seq, self._raw, 29)
        call_id = hashed_id("call_", seq, self._raw, 24)
        rid = hashed_id("req_", seq, self._raw, 32)
        finish = "tool_calls" if reply.tool_call else ("length" if reply.truncated else "stop")
        entry = {"api": "openai", "path": "/v1/chat/completions", "model": model, "input_tokens": input_tokens,
                 "output_tokens": reply.output_tokens, "stream": stream, "completed": True, "key": key}

        if not stream:
            if model == "stub-slow":
                time.sleep(SLOW_DELAY * len(reply.pieces))
            message = {"role": "assistant", "content": None if reply.tool_call else reply.text, "refusal": None, "annotations": []}
            if reply.tool_call:
                message["tool_calls"] = [{"id": call_id, "type": "function", "function": {"name": TOOL_NAME, "arguments": reply.text}}]
            obj = {
                "id": cid,
                "object": "chat.completion",
                "created": CREATED,
                "model": model,
                "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
                "usage": openai_usage(input_tokens, reply.output_tokens),
                "service_tier": "default",
                "system_fingerprint": SYSTEM_FINGERPRINT,
            }
            self._send_recorded(obj, [("x-request-id", rid), ("openai-processing-ms", "1")], entry)
            return

        def chunk(delta, finish_reason=None):
            c = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": CREATED,
                "model": model,
                "service_tier": "default",
                "system_fingerprint": SYSTEM_FINGERPRINT,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
            }
            if include_usage:
                c["usage"] = None
            return b"data: " + compact(c) + b"\n\n"

        sent = 0
        try:
            self._start_stream([("x-request-id", rid), ("openai-processing-ms", "1")])
            if reply.tool_call:
                self._event(chunk({"role": "assistant", "content": None, "tool_calls": [
                    {"index": 0, "id": call_id, "type": "function", "function": {"name": TOOL_NAME, "arguments": ""}}], "refusal": None}))
            else:
                self._event(chunk({"role": "assistant", "content": "", "refusal": None}))
            for piece in reply.pieces:
                if model == "stub-slow":
                    time.sleep(SLOW_DELAY)
                if reply.tool_call:
                    self._event(chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}))
                else:
                    self._event(chunk({"content": piece}))
                sent += 1
            self._event(chunk({}, finish))
            if include_usage:
                self._event(b"data: " + compact({
                    "id": cid, "object": "chat.completion.chunk", "created": CREATED, "model": model,
                    "service_tier": "default", "system_fingerprint": SYSTEM_FINGERPRINT, "choices": [],
                    "usage": openai_usage(input_tokens, reply.output_tokens)}) + b"\n\n")
            self._event(b"data: [DONE]\n\n")
            self._end_stream()
        except ClientGone:
            entry["completed"] = False
            entry["output_tokens"] = sent
            raise
        finally:
            self.state.record_usage(entry)

    def _embeddings(self, body, key):
        model = self._openai_checks(body)
        inp = body.get("input")
        if isinstance(inp, str):
            items = [inp]
        elif isinstance(inp, list) and inp and all(isinstance(x, int) and not isinstance(x, bool) for x in inp):
            items = [inp]  # one input given as token ids
        elif isinstance(inp, list) and inp and all(isinstance(x, (str, list)) for x in inp):
            items = inp
        else:
            raise ApiError(400, "invalid_request_error", "'input' is a required property", param="input")
        if any(isinstance(x, str) and x == "" for x in items):
            raise ApiError(400, "invalid_request_error", "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.", param="input")
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise ApiError(400, "invalid_request_error", f"Invalid value for 'encoding_format': '{encoding}'.", param="encoding_format")
        dims = body.get("dimensions")
        if dims is not None and (not isinstance(dims, int) or isinstance(dims, bool) or not 1 <= dims <= EMBEDDING_DIMS):
            raise ApiError(400, "invalid_request_error", f"Invalid 'dimensions': expected 1..{EMBEDDING_DIMS}.", param="dimensions")
        self._special_model(model, "openai", key)
        data = []
        tokens = 0
        for i, item in enumerate(items):
            tokens += count_words(item) if isinstance(item, str) else len(item)
            vec = embedding_vector(item)[: dims or EMBEDDING_DIMS]
            emb = base64.b64encode(struct.pack("<%df" % len(vec), *vec)).decode() if encoding == "base64" else vec
            data.append({"object": "embedding", "index": i, "embedding": emb})
        seq = self.state.next_seq()
        obj = {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
        self._send_recorded(obj, [("x-request-id", hashed_id("req_", seq, self._raw, 32))],
                            {"api": "openai", "path": "/v1/embeddings", "model": model, "input_tokens": tokens,
                             "output_tokens": 0, "stream": False, "completed": True, "key": key})

    def _models(self, one):
        if self._api == "anthropic":
            objs = [{"type": "model", "id": m, "display_name": m.replace("-", " ").title(), "created_at": CREATED_AT} for m in MODELS]
            if one is not None:
                match = [o for o in objs if o["id"] == one]
                if not match:
                    raise ApiError(404, "not_found_error", f"model: {one}")
                self._send_json(200, match[0])
                return
            self._send_json(200, {"data": objs, "has_more": False, "first_id": objs[0]["id"], "last_id": objs[-1]["id"]})
            return
        objs = [{"id": m, "object": "model", "created": CREATED, "owned_by": "llm-stub"} for m in MODELS]
        if one is not None:
            match = [o for o in objs if o["id"] == one]
            if not match:
                raise ApiError(404, "invalid_request_error", f"The model '{one}' does not exist", code="model_not_found", param="model")
            self._send_json(200, match[0])
            return
        self._send_json(200, {"object": "list", "data": objs})

    # -- Anthropic -------------------------------------------------------------------------

    def _messages(self, body, key):
        if not self.headers.get("anthropic-version"):
            raise ApiError(400, "invalid_request_error", "anthropic-version: header is required")
        if not isinstance(body, dict):
            raise ApiError(400, "invalid_request_error", "There was an issue with your request body: expected a JSON object")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise ApiError(400, "invalid_request_error", "model: Field required")
        if body.get("max_tokens") is None:
            raise ApiError(400, "invalid_request_error", "max_tokens: Field required")
        max_tokens = self._max_tokens(body, ("max_tokens",), "anthropic")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "invalid_request_error", "messages: at least one message is required")
        for i, m in enumerate(messages):
            if not isinstance(m, dict):
                raise ApiError(400, "invalid_request_error", f"messages.{i}: Input should be a valid dictionary")
            if m.get("role") not in ANTHROPIC_ROLES:
                raise ApiError(400, "invalid_request_error",
                               f"messages.{i}.role: Input should be 'user' or 'assistant'" + (
                                   " (a system prompt goes in the top-level `system` parameter)" if m.get("role") == "system" else ""))
            if not isinstance(m.get("content"), (str, list)):
                raise ApiError(400, "invalid_request_error", f"messages.{i}.content: Field required")
        system = body.get("system")
        if system is not None and not isinstance(system, (str, list)):
            raise ApiError(400, "invalid_request_error", "system: Input should be a valid string or list of text blocks")
        self._special_model(model, "anthropic", key)
        stream = body.get("stream") is True

        system_text = anthropic_content_text(system)[0] if system is not None else ""
        input_tokens = count_words(system_text) + sum(count_words(anthropic_content_text(m.get("content"))[0]) for m in messages)
        last_text, last_is_user = "", False
        for m in reversed(messages):
            if m.get("role") == "user":
                last_text, has_tool_result = anthropic_content_text(m.get("content"))
                last_is_user = not has_tool_result
                break
        tool_choice = body.get("tool_choice")
        has_tools = isinstance(body.get("tools"), list) and bool(body["tools"]) and not (
            isinstance(tool_choice, dict) and tool_choice.get("type") == "none")
        reply = Reply(model, last_text, last_is_user, has_tools, max_tokens)

        seq = self.state.next_seq()
        mid = hashed_id("msg_", seq, self._raw, 24)
        tid = hashed_id("toolu_", seq, self._raw, 24)
        rid = hashed_id("req_", seq, self._raw, 24)
        stop_reason = "tool_use" if reply.tool_call else ("max_tokens" if reply.truncated else "end_turn")
        entry = {"api": "anthropic", "path": "/v1/messages", "model": model, "input_tokens": input_tokens,
                 "output_tokens": reply.output_tokens, "stream": stream, "completed": True, "key": key}

        if not stream:
            if model == "stub-slow":
                time.sleep(SLOW_DELAY * len(reply.pieces))
            if reply.tool_call:
                content = [{"type": "tool_use", "id": tid, "name": TOOL_NAME, "input": dict(TOOL_ARGUMENTS)}]
            else:
                content = [{"type": "text", "text": reply.text}]
            obj = {
                "id": mid,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": content,
                "stop_reason": stop_reason,
                "stop_sequence": None,
                "usage": anthropic_usage(input_tokens, reply.output_tokens),
            }
            self._send_recorded(obj, [("request-id", rid)], entry)
            return

        def event(name: str, data: dict) -> bytes:
            return b"event: " + name.encode() + b"\ndata: " + compact(data) + b"\n\n"

        sent = 0
        try:
            self._start_stream([("request-id", rid)])
            self._event(event("message_start", {"type": "message_start", "message": {
                "id": mid, "type": "message", "role": "assistant", "model": model, "content": [],
                "stop_reason": None, "stop_sequence": None, "usage": anthropic_usage(input_tokens, 1)}}))
            if reply.tool_call:
                block = {"type": "tool_use", "id": tid, "name": TOOL_NAME, "input": {}}
            else:
                block = {"type": "text", "text": ""}
            self._event(event("content_block_start", {"type": "content_block_start", "index": 0, "content_block": block}))
            self._event(event("ping", {"type": "ping"}))
            for piece in reply.pieces:
                if model == "stub-slow":
                    time.sleep(SLOW_DELAY)
                if reply.tool_call:
                    delta = {"type": "input_json_delta", "partial_json": piece}
                else:
                    delta = {"type": "text_delta", "text": piece}
                self._event(event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}))
                sent += 1
            self._event(event("content_block_stop", {"type": "content_block_stop", "index": 0}))
            self._event(event("message_delta", {"type": "message_delta",
                                                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                                                "usage": {"output_tokens": reply.output_tokens}}))
            self._event(event("message_stop", {"type": "message_stop"}))
            self._end_stream()
        except ClientGone:
            entry["completed"] = False
            entry["output_tokens"] = sent
            raise
        finally:
            self.state.record_usage(entry)


class StubServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, socket.timeout, TimeoutError)):
            return  # a client that went away: nothing to report
        super().handle_error(request, client_address)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Deterministic OpenAI/Anthropic API stub for Portcullis tests.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9100, help="0 picks a free port (printed)")
    p.add_argument("--keys", default=None, help="comma-separated provider keys to accept (default: accept any)")
    p.add_argument("--rate-limited-keys", default="", help="comma-separated keys answered 429 with a retry-after")
    p.add_argument("--retry-after", type=int, default=1, help="seconds in the retry-after of those 429s (default 1)")
    p.add_argument("--verbose", action="store_true", help="log every request on stderr")
    args = p.parse_args(argv)

    keys = None if args.keys is None else {k.strip() for k in args.keys.split(",") if k.strip()}
    limited = {k.strip() for k in args.rate_limited_keys.split(",") if k.strip()}
    Handler.state = State(keys, limited, args.retry_after)
    Handler.verbose = args.verbose
    if ":" in args.host:
        StubServer.address_family = socket.AF_INET6
    server = StubServer((args.host, args.port), Handler)
    port = server.server_address[1]
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"listening on http://{host}:{port}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
