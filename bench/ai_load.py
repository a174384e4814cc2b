#!/usr/bin/env python3
"""Fixed-concurrency latency load for bench/ai.sh (Python 3 stdlib only).

    python3 bench/ai_load.py --target NAME,BASE_URL,MODEL[,TOKEN] [--target ...]
        [--concurrency 4] [--requests 2000] [--warmup 200] [--rounds 10]
        [--modes plain,stream] [--words 20] [--baseline direct] [--json OUT]

Each target is an OpenAI-compatible API base (`http://127.0.0.1:PORT/v1`); every request is
`POST BASE/chat/completions` with one user message of --words words and the target's model
name, `Authorization: Bearer TOKEN` when a token is given. A closed loop: --concurrency
threads per target, each with its own keep-alive connection (kept for the whole run), each
sending its next request as soon as the previous answer is complete.

After --warmup requests per target and mode (not measured), --requests per target and mode
are measured in --rounds rounds; in every round each mode runs against every target in
turn, and the order of the targets rotates from round to round, so a slow moment of the
machine falls on all targets alike rather than on whichever ran then.

Timings: `total` from writing the request to the last byte of the answer; for streams also
`ttfb`, to the first byte of the body (the first SSE event). Every answer is checked after
its timing is taken (status 200, the stub's reply "echo: <message>" whole, `data: [DONE]`
at the end of a stream); a target with any failed answer is marked INVALID.

Prints per mode and target: answers/s, p50/p90/p99 in ms and the overhead over the baseline
target (p50 and p99 differences), then the overhead ratios of every other target to
`litellm` (goal for portcullis: <= 0.1). --json writes all of it.
"""

import argparse
import json
import math
import socket
import sys
import threading
import time
from urllib.parse import urlsplit


class Closed(Exception):
    """The server closed the connection before a whole response."""


class Conn:
    """One keep-alive HTTP/1.1 connection on a plain socket. http.client parses every
    response head with the email package and every chunk with readline: several times the
    Python work of this, and that work is client time inside every measured latency."""

    def __init__(self, host, port):
        self.host, self.port = host, port
        self.sock = None

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def exchange(self, request):
        """Sends request (bytes); returns (status, body, t_first_body_byte or None,
        t_end); a chunked body comes back without its framing."""
        if self.sock is None:
            self.sock = socket.create_connection((self.host, self.port), timeout=60)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock = self.sock
        sock.sendall(request)
        buf = b""
        while True:
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            data = sock.recv(65536)
            if not data:
                raise Closed("closed before the response head")
            buf += data
        now = time.perf_counter()
        head = buf[:end].decode("latin-1").split("\r\n")
        status = int(head[0].split(" ", 2)[1])
        length = None
        chunked = close = False
        for line in head[1:]:
            k, _, v = line.partition(":")
            k = k.strip().lower()
            if k == "content-length":
                length = int(v)
            elif k == "transfer-encoding":
                chunked = "chunked" in v.lower()
            elif k == "connection":
                close = "close" in v.lower()
        body = buf[end + 4:]
        first = now if body else None
        if chunked:
            pos = 0  # start of the next chunk-size line in body
            payload = []
            while True:
                eol = body.find(b"\r\n", pos)
                if eol >= 0:
                    size = int(body[pos:eol].split(b";")[0], 16)
                    if size == 0:
                        if body.find(b"\r\n", eol + 2) >= 0:  # no trailers: an empty line
                            break
                    elif len(body) >= eol + 2 + size + 2:
                        payload.append(body[eol + 2:eol + 2 + size])
                        pos = eol + 2 + size + 2
                        continue
                data = sock.recv(65536)
                if not data:
                    raise Closed("closed inside a chunked body")
                if first is None:
                    first = time.perf_counter()
                body += data
            body = b"".join(payload)
        elif length is not None:
            while len(body) < length:
                data = sock.recv(65536)
                if not data:
                    raise Closed("closed inside the body")
                if first is None:
                    first = time.perf_counter()
                body += data
        else:
            close = True
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                if first is None:
                    first = time.perf_counter()
                body += data
        t_end = time.perf_counter()
        if close:
            self.close()
        return status, body, first, t_end


class Target:
    def __init__(self, spec, concurrency):
        parts = spec.split(",")
        if len(parts) not in (3, 4):
            raise SystemExit(f"--target {spec!r}: want NAME,BASE_URL,MODEL[,TOKEN]")
        self.name, base, self.model = parts[:3]
        token = parts[3] if len(parts) == 4 else ""
        u = urlsplit(base)
        if u.scheme != "http":
            raise SystemExit(f"--target {spec!r}: only http:// bases")
        self.host, self.port = u.hostname, u.port or 80
        self.path = u.path.rstrip("/") + "/chat/completions"
        self.head = (f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                     "Content-Type: application/json\r\nAccept: */*\r\n"
                     + (f"Authorization: Bearer {token}\r\n" if token else ""))
        self.conns = [Conn(self.host, self.port) for _ in range(concurrency)]

    def request(self, body):
        return (self.head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def percentile(sorted_values, q):
    if not sorted_values:
        return float("nan")
    i = max(0, math.ceil(q * len(sorted_values)) - 1)
    return sorted_values[i]


def check(body, stream, expected):
    """None when the answer is the stub's reply, else what is wrong."""
    if not stream:
        try:
            got = json.loads(body)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            return "not a chat.completion: " + body[:200].decode("utf-8", "replace")
        return None if got == expected else f"reply {got!r}"
    text = []
    done = False
    for line in body.split(b"\n"):
        line = line.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            done = True
            continue
        try:
            obj = json.loads(data)
        except ValueError:
            return "bad SSE data: " + data[:200].decode("utf-8", "replace")
        for choice in obj.get("choices") or []:
            text.append((choice.get("delta") or {}).get("content") or "")
    if not done:
        return "stream without data: [DONE]"
    got = "".join(text)
    return None if got == expected else f"streamed reply {got!r}"


class Recorder:
    def __init__(self):
        self.total = []
        self.ttfb = []
        self.errors = 0
        self.reconnects = 0  # idle keep-alive connections the server had closed
        self.first_error = None
        self.elapsed = 0.0
        self.round_p50 = []  # p50 of each round's batch: shows a target drifting in a run
        self.lock = threading.Lock()


def one_request(target, slot, request, stream, expected, rec):
    """One request on connection `slot`; records its timings or its failure in rec."""
    conn = target.conns[slot]
    problem = None
    for attempt in (1, 2):
        fresh = conn.sock is None
        try:
            t0 = time.perf_counter()
            status, body, first, t1 = conn.exchange(request)
            if status != 200:
                problem = f"status {status}: {body[:300].decode('utf-8', 'replace')}"
            else:
                problem = check(body, stream, expected)
            break
        except (Closed, BrokenPipeError, ConnectionResetError) as e:
            conn.close()
            problem = f"{type(e).__name__}: {e}"
            if fresh:
                break
            # The server closed an idle keep-alive connection: try once more on a new one,
            # timing only that try.
            with rec.lock:
                rec.reconnects += 1
        except (OSError, ValueError, IndexError) as e:
            conn.close()
            problem = f"{type(e).__name__}: {e}"
            break
    with rec.lock:
        if problem:
            rec.errors += 1
            rec.first_error = rec.first_error or problem
        else:
            rec.total.append(t1 - t0)
            if stream and first is not None:
                rec.ttfb.append(first - t0)


def run_batch(target, n, concurrency, request, stream, expected, rec):
    """n requests at the given concurrency (closed loop), recorded in rec."""
    counts = [n // concurrency + (1 if i < n % concurrency else 0) for i in range(concurrency)]

    def worker(slot):
        for _ in range(counts[slot]):
            one_request(target, slot, request, stream, expected, rec)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    before = len(rec.total)
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rec.elapsed += time.perf_counter() - t0
    rec.round_p50.append(round(percentile(sorted(rec.total[before:]), 0.5) * 1000, 3))


def summary(rec):
    tot = sorted(rec.total)
    ttfb = sorted(rec.ttfb)
    ms = lambda v: round(v * 1000, 3)
    out = {
        "ok": len(tot),
        "errors": rec.errors,
        "first_error": rec.first_error,
        "reconnects": rec.reconnects,
        "rps": round(len(tot) / rec.elapsed, 1) if rec.elapsed else None,
        "p50": ms(percentile(tot, 0.50)),
        "p90": ms(percentile(tot, 0.90)),
        "p99": ms(percentile(tot, 0.99)),
        "mean": ms(sum(tot) / len(tot)) if tot else None,
        "round_p50": rec.round_p50,
    }
    if ttfb:
        out.update(ttfb_p50=ms(percentile(ttfb, 0.50)), ttfb_p90=ms(percentile(ttfb, 0.90)),
                   ttfb_p99=ms(percentile(ttfb, 0.99)))
    return out


def fmt(v, width=9):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-".rjust(width)
    return f"{v:{width}.3f}"


def ratio(a, b):
    if a is None or b is None or b <= 0:
        return None
    return a / b


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", action="append", required=True, metavar="NAME,BASE_URL,MODEL[,TOKEN]")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--requests", type=int, default=2000, help="measured, per target and mode")
    ap.add_argument("--warmup", type=int, default=200, help="per target and mode")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--modes", default="plain,stream")
    ap.add_argument("--words", type=int, default=20, help="words in the user message")
    ap.add_argument("--baseline", default="direct", help="the target overheads are measured against")
    ap.add_argument("--reference", default="litellm", help="the target overhead ratios are taken to")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    modes = [m for m in args.modes.split(",") if m]
    for m in modes:
        if m not in ("plain", "stream"):
            raise SystemExit(f"unknown mode {m!r} (plain, stream)")
    targets = [Target(s, args.concurrency) for s in args.target]
    names = [t.name for t in targets]
    if len(set(names)) != len(names):
        raise SystemExit("target names must differ")

    message = " ".join(f"word{i}" for i in range(args.words))
    expected = "echo: " + message
    bodies = {}
    for t in targets:
        for m in modes:
            bodies[t.name, m] = t.request(json.dumps({
                "model": t.model,
                "messages": [{"role": "user", "content": message}],
                "stream": m == "stream",
            }).encode())

    log = lambda s: print(f"[ai_load] {s}", file=sys.stderr, flush=True)
    for m in modes:
        for t in targets:
            log(f"warm-up {t.name} {m}: {args.warmup} requests")
            warm = Recorder()
            run_batch(t, args.warmup, args.concurrency, bodies[t.name, m], m == "stream", expected, warm)
            if warm.errors:
                raise SystemExit(f"{t.name} {m}: {warm.errors} of {args.warmup} warm-up requests failed, "
                                 f"first: {warm.first_error}")

    recs = {(t.name, m): Recorder() for t in targets for m in modes}
    per_round = [args.requests // args.rounds + (1 if r < args.requests % args.rounds else 0)
                 for r in range(args.rounds)]
    started = time.perf_counter()
    for r in range(args.rounds):
        order = targets[r % len(targets):] + targets[:r % len(targets)]
        for m in modes:
            for t in order:
                run_batch(t, per_round[r], args.concurrency, bodies[t.name, m], m == "stream",
                          expected, recs[t.name, m])
        log(f"round {r + 1}/{args.rounds} done ({time.perf_counter() - started:.0f}s)")

    results = {
        "concurrency": args.concurrency, "requests": args.requests, "warmup": args.warmup,
        "rounds": args.rounds, "words": args.words, "baseline": args.baseline,
        "targets": {t.name: {"model": t.model} for t in targets},
        "modes": {m: {t.name: summary(recs[t.name, m]) for t in targets} for m in modes},
    }
    # Overheads over the baseline, and ratios to the reference's overheads.
    metrics = {"plain": [("p50", "p50"), ("p99", "p99")],
               "stream": [("p50", "p50"), ("p99", "p99"), ("ttfb_p50", "ttfb-p50"), ("ttfb_p99", "ttfb-p99")]}
    for m in modes:
        base = results["modes"][m].get(args.baseline)
        for name, s in results["modes"][m].items():
            if base is None or name == args.baseline:
                continue
            s["overhead"] = {key: round(s[key] - base[key], 3) for key, _ in metrics[m] if key in s and key in base}
        ref = results["modes"][m].get(args.reference, {}).get("overhead")
        for name, s in results["modes"][m].items():
            if ref and "overhead" in s and name != args.reference:
                s["ratio_to_" + args.reference] = {
                    key: (None if ratio(v, ref.get(key)) is None else round(ratio(v, ref.get(key)), 4))
                    for key, v in s["overhead"].items()}

    # The table.
    print()
    print(f"{args.concurrency} concurrent keep-alive connections per target, {args.requests} measured requests "
          f"per target and mode (+{args.warmup} warm-up), {args.rounds} interleaved rounds; "
          f"{args.words}-word message, reply {args.words + 1} words (stream: {args.words + 3} events + [DONE]).")
    print("Times in ms. overhead = the target's percentile minus the same percentile of "
          f"`{args.baseline}` (the stub called directly).")
    for m in modes:
        print()
        if m == "plain":
            print("non-streaming (time to the whole response)")
            print(f"{'target':<12} {'ok':>6} {'err':>4} {'req/s':>8} {'p50':>9} {'p90':>9} {'p99':>9} {'ovh-p50':>9} {'ovh-p99':>9}  notes")
        else:
            print("streaming (total = to the end of the stream; ttfb = to its first byte)")
            print(f"{'target':<12} {'ok':>6} {'err':>4} {'req/s':>8} {'p50':>9} {'p99':>9} {'ovh-p50':>9} {'ovh-p99':>9}"
                  f" {'ttfb-p50':>9} {'ttfb-p99':>9} {'ovh-ttfb50':>10} {'ovh-ttfb99':>10}  notes")
        for t in targets:
            s = results["modes"][m][t.name]
            o = s.get("overhead", {})
            notes = []
            if s["errors"]:
                notes.append(f"INVALID: {s['errors']} failed, first: {s['first_error']}")
            if s["reconnects"]:
                notes.append(f"{s['reconnects']} reconnects (idle keep-alive closed by the server)")
            if m == "plain":
                print(f"{t.name:<12} {s['ok']:>6} {s['errors']:>4} {s['rps'] or 0:>8.1f} {fmt(s['p50'])} {fmt(s['p90'])} "
                      f"{fmt(s['p99'])} {fmt(o.get('p50'))} {fmt(o.get('p99'))}  {'; '.join(notes)}")
            else:
                print(f"{t.name:<12} {s['ok']:>6} {s['errors']:>4} {s['rps'] or 0:>8.1f} {fmt(s['p50'])} {fmt(s['p99'])} "
                      f"{fmt(o.get('p50'))} {fmt(o.get('p99'))} {fmt(s.get('ttfb_p50'))} {fmt(s.get('ttfb_p99'))} "
                      f"{fmt(o.get('ttfb_p50'), 10)} {fmt(o.get('ttfb_p99'), 10)}  {'; '.join(notes)}")
    others = [t.name for t in targets if t.name not in (args.baseline, args.reference)]
    if args.reference in names and args.baseline in names and others:
        print()
        print(f"Overhead ratio to {args.reference} (target overhead / {args.reference} overhead; goal for portcullis <= 0.1):")
        for name in others:
            cells = []
            for m in modes:
                r = results["modes"][m][name].get("ratio_to_" + args.reference, {})
                for key, label in metrics[m]:
                    if key in r:
                        v = r[key]
                        cells.append(f"{m} {label} {'-' if v is None else f'{v:.3f}'}")
            print(f"  {name:<12} " + ", ".join(cells))
    invalid = any(s["errors"] for m in modes for s in results["modes"][m].values())
    if invalid:
        print("\nSome answers failed: the rows marked INVALID do not measure successful requests.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 1 if invalid else 0


if __name__ == "__main__":
    sys.exit(main())
