#!/usr/bin/env python3
"""A fast, single-threaded OpenAI-compatible stub for bench/ai.sh (Python 3 stdlib only).

    python3 bench/ai_stub.py --host 127.0.0.1 --port PORT [--keys k1,k2]

It answers `POST /v1/chat/completions` (streaming or not) and `GET /v1/models` in the shape
tools/llm-stub/llm_stub.py gives them, for the bench's requests: reply "echo: " + the last user
message, usage = whitespace-separated words, a stream of one chunk per reply word with
`usage` only when `stream_options.include_usage` is set, then `data: [DONE]`. With --keys,
`Authorization: Bearer <k>` must name one of them (else 401 in OpenAI's format).

Why a second stub: the load generator, the stub and the gateway share the machine's cores,
so every microsecond the stub spends is one the gateway under test waits for. llm_stub.py is
a ThreadingHTTPServer (a thread per connection, the stdlib's email-based header parser, the
ledger); this one is one asyncio event loop with a small HTTP/1.1 parser and keep-alive,
about half the CPU per request (0.5 against 1.1 ms on the 2-core machine the bench was
written on), so the direct baseline is lower and the gateways get more of the CPUs.
bench/ai.sh uses it by default (STUB=fast); STUB=llm-stub runs the project's stub instead.
Either way the stub is the same for every target of a run, and its own latency cancels out
of "overhead = through the gateway - direct".
"""

import argparse
import asyncio
import json
import sys

CREATED = 1700000000


def words(text):
    return len(text.split())


def content_text(content):
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def head(status, reason, headers):
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def json_response(status, reason, obj, keep_alive=True):
    body = json.dumps(obj, separators=(",", ":")).encode()
    headers = [
        ("content-type", "application/json"),
        ("content-length", str(len(body))),
        ("connection", "keep-alive" if keep_alive else "close"),
    ]
    return head(status, reason, headers) + body


def openai_error(status, reason, message, typ, code=None):
    return json_response(status, reason, {"error": {"message": message, "type": typ, "param": None, "code": code}})


def chunk(data):
    return b"%x\r\n%s\r\n" % (len(data), data)


def sse(obj):
    return chunk(b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n")


class Stub:
    def __init__(self, keys):
        self.keys = keys
        self.counter = 0

    def authorized(self, headers):
        if not self.keys:
            return True
        auth = headers.get("authorization", "")
        return auth.startswith("Bearer ") and auth[7:].strip() in self.keys

    async def handle(self, reader, writer):
        try:
            while True:
                try:
                    raw = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = raw.decode("latin-1").split("\r\n")
                try:
                    method, target, version = lines[0].split(" ", 2)
                except ValueError:
                    writer.write(json_response(400, "Bad Request", {"error": "bad request line"}, False))
                    return
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                body = b""
                if headers.get("transfer-encoding", "").lower() == "chunked":
                    parts = []
                    while True:
                        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                        if size == 0:
                            await reader.readuntil(b"\r\n")  # no trailers expected
                            break
                        parts.append(await reader.readexactly(size))
                        await reader.readexactly(2)
                    body = b"".join(parts)
                elif "content-length" in headers:
                    body = await reader.readexactly(int(headers["content-length"]))
                if headers.get("expect", "").lower() == "100-continue":
                    pass  # the body was read above; clients here do not wait for 100
                close = headers.get("connection", "").lower() == "close" or version == "HTTP/1.0"
                await self.route(method, target.split("?", 1)[0], headers, body, writer)
                await writer.drain()
                if close:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            try:
                writer.close()
            except Exception:
                pass

    async def route(self, method, path, headers, body, writer):
        if path.endswith("/models") and method == "GET":
            if not self.authorized(headers):
                writer.write(openai_error(401, "Unauthorized", "Incorrect API key provided", "invalid_request_error", "invalid_api_key"))
                return
            writer.write(json_response(200, "OK", {"object": "list", "data": [
                {"id": m, "object": "model", "created": CREATED, "owned_by": "stub"}
                for m in ("stub-small", "stub-embed")]}))
            return
        if not (path.endswith("/chat/completions") and method == "POST"):
            writer.write(openai_error(404, "Not Found", f"no route for {method} {path}", "invalid_request_error"))
            return
        if not self.authorized(headers):
            writer.write(openai_error(401, "Unauthorized", "Incorrect API key provided", "invalid_request_error", "invalid_api_key"))
            return
        try:
            req = json.loads(body)
            messages = req["messages"]
        except (ValueError, KeyError, TypeError):
            writer.write(openai_error(400, "Bad Request", "body is not a chat completion request", "invalid_request_error"))
            return
        model = req.get("model", "stub-small")
        input_tokens = sum(words(content_text(m.get("content"))) for m in messages)
        last_user = next((content_text(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
        reply = "echo: " + last_user
        output_tokens = words(reply)
        usage = {"prompt_tokens": input_tokens, "completion_tokens": output_tokens,
                 "total_tokens": input_tokens + output_tokens,
                 "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                 "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                               "accepted_prediction_tokens": 0,
                                               "rejected_prediction_tokens": 0}}
        self.counter += 1
        rid = f"chatcmpl-stub-{self.counter}"
        if not req.get("stream"):
            writer.write(json_response(200, "OK", {
                "id": rid, "object": "chat.completion", "created": CREATED, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": reply,
                                                     "refusal": None, "annotations": []},
                             "logprobs": None, "finish_reason": "stop"}],
                "usage": usage, "service_tier": "default", "system_fingerprint": "fp_aistub"}))
            return
        include_usage = bool((req.get("stream_options") or {}).get("include_usage"))
        base = {"id": rid, "object": "chat.completion.chunk", "created": CREATED, "model": model,
                "service_tier": "default", "system_fingerprint": "fp_aistub"}

        def event(delta, finish=None):
            obj = dict(base, choices=[{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}])
            if include_usage:
                obj["usage"] = None
            return sse(obj)

        writer.write(head(200, "OK", [
            ("content-type", "text/event-stream"),
            ("cache-control", "no-cache"),
            ("transfer-encoding", "chunked"),
            ("connection", "keep-alive"),
        ]) + event({"role": "assistant", "content": "", "refusal": None}))
        await writer.drain()
        ws = reply.split()
        for i, w in enumerate(ws):
            writer.write(event({"content": w + (" " if i < len(ws) - 1 else "")}))
            await writer.drain()
        out = [event({}, "stop")]
        if include_usage:
            out.append(sse(dict(base, choices=[], usage=usage)))
        out.append(chunk(b"data: [DONE]\n\n"))
        out.append(b"0\r\n\r\n")
        writer.write(b"".join(out))


async def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--keys", default="", help="comma-separated provider keys to accept")
    args = ap.parse_args()
    stub = Stub({k for k in args.keys.split(",") if k})
    server = await asyncio.start_server(stub.handle, args.host, args.port, backlog=1024)
    print(f"listening on http://{args.host}:{args.port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
