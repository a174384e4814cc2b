"""Token budgets and request rate limits, end to end with the real `openai` SDK: Portcullis
standalone (its in-process ledger) in front of the LLM stub, on real sockets.

Routes (conftest.py): budget-route (Host budget.test, policy budget-tokens: a daily budget of
BUDGET_TOKENS total tokens per subject in Europe/Paris, defaultMaxTokens 64, an override for
subject budget-vip; and a monthly budget of 50 output tokens for gpt-premium) and rate-route
(Host rate.test, policy rate-tokens: 1 request per second per subject, burst 1). Every test mints
tokens for subjects of its own, so no test spends another's allowance.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import time

import openai
import pytest

from conftest import BUDGET_HOST, BUDGET_TOKENS, RATE_HOST  # noqa: I001

QUOTA = "portcullis_quota_requests_total"
QUOTA_TOKENS = "portcullis_quota_tokens_total"


def client(gw, sub: str, host: str = BUDGET_HOST, **kw) -> openai.OpenAI:
    opts = {"max_retries": 0, **kw}
    return openai.OpenAI(api_key=gw.mint(sub, ["model:*"]), base_url=gw.url + "/v1",
                         default_headers={"Host": host}, timeout=30, **opts)


def ask(c: openai.OpenAI, text: str = "hello there", **kw):
    return c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": text}], **kw)


def used_at_stub(stub) -> int:
    return sum(e.get("input_tokens", 0) + e.get("output_tokens", 0) for e in stub.ledger())


def test_fifty_concurrent_streams_never_serve_more_than_the_budget(gw, stub):
    """The peers' failure (a burst of parallel streams overruns the budget): each stream
    reserves its worst case before the provider is called, so what the provider serves
    never adds up past the budget, however many streams race for it."""
    stub.reset()
    c = client(gw, "budget-race")

    def one(i: int):
        try:
            # ~100 input tokens, and the stub's echo is cut at max_tokens: ~140 tokens a
            # call, so 50 calls need more than twice the budget and some must be refused.
            text = f"number {i} " + " ".join(f"w{k}" for k in range(100))
            stream = ask(c, text, stream=True, max_tokens=40)
            return "ok", "".join((ch.choices[0].delta.content or "") for ch in stream if ch.choices)
        except openai.RateLimitError as e:
            return "429", e.response.headers

    with concurrent.futures.ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(one, range(50)))
    served = used_at_stub(stub)
    ok = sum(1 for r, _ in results if r == "ok")
    refused = [h for r, h in results if r == "429"]
    assert ok >= 1 and refused, f"{ok} served, {len(refused)} refused: the budget was not contended"
    assert served <= BUDGET_TOKENS, f"the provider served {served} tokens on a budget of {BUDGET_TOKENS}"
    # Every refusal is a real 429 with the headers OpenAI's clients read.
    for h in refused:
        assert h["x-ratelimit-limit-tokens"] == str(BUDGET_TOKENS)
        assert int(h["retry-after"]) >= 1
    # Settled exactly: what the gateway counts as used is what the provider reported.
    assert gw.metric(QUOTA_TOKENS, quota="daily", type="used") >= served


def test_a_spent_budget_is_429_with_retry_after_and_ratelimit_token_headers(gw):
    """RFC 6585 section 4 (429) with Retry-After (RFC 9110 section 10.2.3), and OpenAI's
    x-ratelimit-*-tokens headers on allowed answers as well as on the refusal."""
    c = client(gw, "budget-spender")
    raw = c.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=8)
    assert raw.headers["x-ratelimit-limit-tokens"] == str(BUDGET_TOKENS)
    left = int(raw.headers["x-ratelimit-remaining-tokens"])
    assert 0 < left < BUDGET_TOKENS
    assert re.fullmatch(r"(\d+h)?(\d+m)?\d+s", raw.headers["x-ratelimit-reset-tokens"])
    # Ask for more than is left: refused before the provider is called.
    with pytest.raises(openai.RateLimitError) as e:
        ask(c, max_tokens=BUDGET_TOKENS)
    h = e.value.response.headers
    assert int(h["retry-after"]) >= 1
    # The window is a day in Paris: the reset is at most 25 hours away (a DST change).
    assert int(h["retry-after"]) <= 25 * 3600
    # What the first call did not use came back: more is left than the call reserved,
    # less than the call asks for.
    assert left <= int(h["x-ratelimit-remaining-tokens"]) < BUDGET_TOKENS
    body = e.value.response.json()
    assert body["error"]["code"] == "rate_limit_exceeded" and "daily" in body["error"]["message"]


def test_a_call_without_max_tokens_gets_what_is_left(gw, stub):
    """The proxy sets max_tokens when the client sent none: the budget's defaultMaxTokens,
    lowered to what the subject has left after the prompt (whose worst case is its size in
    bytes)."""
    import threading

    from conftest import http

    token = gw.mint("budget-nomax", ["model:*"])
    headers = {"Host": BUDGET_HOST, "Authorization": f"Bearer {token}"}
    stub.reset()
    ask(client(gw, "budget-nomax-default"), "short")
    assert stub.requests()[-1]["body"]["max_tokens"] == 64
    # A slow stream holds a reservation that leaves exactly 20 tokens past the next prompt.
    second = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "z"}]}
    p2 = len(json.dumps(second).encode())
    holder = {"model": "slow", "messages": [{"role": "user", "content": "go"}], "stream": True}
    p_hold = len(json.dumps({**holder, "max_tokens": 1000}).encode())
    holder["max_tokens"] = BUDGET_TOKENS - p_hold - p2 - 20
    assert p_hold == len(json.dumps(holder).encode()), "pad max_tokens to the same width"
    stub.reset()
    t = threading.Thread(target=http, args=("POST", gw.url + "/v1/chat/completions", holder, headers, 30))
    t.start()
    deadline = time.monotonic() + 10
    while not stub.requests() and time.monotonic() < deadline:
        time.sleep(0.02)
    status, h, body = http("POST", gw.url + "/v1/chat/completions", second, headers)
    t.join()
    assert status == 200, body
    sent = [r["body"] for r in stub.requests() if r["body"].get("model") == "stub-small"]
    assert sent[-1]["max_tokens"] == 20, sent[-1]
    assert h["x-ratelimit-remaining-tokens"] == "0"


def test_an_override_and_a_per_model_output_budget(gw):
    """Overrides give one consumer another allowance; a budget limited to a model and to
    output tokens does not touch other models."""
    vip = client(gw, "budget-vip")
    raw = vip.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=5000)
    assert raw.headers["x-ratelimit-limit-tokens"] == "1000000"
    c = client(gw, "budget-premium")
    # 50 output tokens a month for gpt-premium. The stub echoes the prompt, cut at
    # max_tokens: this call uses exactly 40 output tokens.
    long = " ".join(f"w{i}" for i in range(100))
    c.chat.completions.create(model="gpt-premium", messages=[{"role": "user", "content": long}], max_tokens=40)
    with pytest.raises(openai.RateLimitError):
        c.chat.completions.create(model="gpt-premium", messages=[{"role": "user", "content": "hi"}], max_tokens=11)
    c.chat.completions.create(model="gpt-premium", messages=[{"role": "user", "content": "hi"}], max_tokens=10)
    # Other models are not under that budget.
    ask(c, long, max_tokens=40)


def test_a_stream_the_client_abandons_is_still_settled_from_real_usage(gw, stub):
    """The disconnect path: the gateway reads the abandoned stream to its usage and settles
    the reservation with it, so the budget is charged what the provider used."""
    c = client(gw, "budget-quitter")
    before = gw.metric(QUOTA_TOKENS, quota="daily", type="used")
    stub.reset()
    stream = c.chat.completions.create(model="slow", messages=[{"role": "user", "content": "go"}],
                                       stream=True, max_tokens=30)
    next(iter(stream))
    stream.close()
    wait = time.monotonic() + 10
    while time.monotonic() < wait and not stub.ledger():
        time.sleep(0.05)
    served = used_at_stub(stub)
    assert served > 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and gw.metric(QUOTA_TOKENS, quota="daily", type="used") - before < served:
        time.sleep(0.05)
    assert gw.metric(QUOTA_TOKENS, quota="daily", type="used") - before == served


def test_the_sdk_retries_a_rate_limited_call_after_retry_after(gw, stub):
    """RateLimit and RateLimit-Policy (draft-ietf-httpapi-ratelimit-headers) on allowed
    answers; over the limit, 429 with Retry-After, which the openai SDK honours: it waits
    and retries, and the retry succeeds."""
    sub = "rate-retry"
    quick = client(gw, sub, host=RATE_HOST)
    raw = quick.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "one"}], max_tokens=4)
    assert raw.headers["ratelimit-policy"] == '"per-subject";q=1;w=1'
    assert re.fullmatch(r'"per-subject";r=0;t=\d+', raw.headers["ratelimit"])
    with pytest.raises(openai.RateLimitError) as e:
        ask(quick, "two", max_tokens=4)
    assert e.value.response.headers["retry-after"] == "1"
    assert e.value.response.headers["ratelimit-policy"] == '"per-subject";q=1;w=1'
    refused = gw.metric(QUOTA, quota="per-subject", result="exhausted")
    patient = client(gw, sub, host=RATE_HOST, max_retries=3)
    started = time.monotonic()
    ask(patient, "three", max_tokens=4)  # refused once or not at all, then served
    ask(patient, "four", max_tokens=4)   # right after: refused, retried after Retry-After
    assert time.monotonic() - started >= 0.9
    assert gw.metric(QUOTA, quota="per-subject", result="exhausted") > refused


def test_a_budget_without_the_identity_it_counts_refuses(gw, stub):
    """Budget per-client counts calls per consumer (client_id / azp); a token without one
    cannot be accounted: refused (403) before the provider is called, not waved through."""
    c = client(gw, "budget-anonymous-client")
    stub.reset()
    with pytest.raises(openai.PermissionDeniedError) as e:
        c.chat.completions.create(model="per-client", messages=[{"role": "user", "content": "x"}], max_tokens=4)
    assert e.value.response.json()["error"]["code"] == "quota_no_identity"
    assert not stub.requests()


def test_n_choices_reserve_max_tokens_each(gw):
    """`n` choices may each use max_tokens: the reservation counts them all, so `n` cannot
    multiply what a budget admits."""
    one = client(gw, "budget-n1").chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=500)
    three = client(gw, "budget-n3").chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=500, n=3)
    left_one = int(one.headers["x-ratelimit-remaining-tokens"])
    left_three = int(three.headers["x-ratelimit-remaining-tokens"])
    assert left_one - left_three >= 1000, (left_one, left_three)
    with pytest.raises(openai.BadRequestError):
        client(gw, "budget-n0").chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=5, n=0)


def test_a_huge_max_tokens_is_refused_not_wrapped_around(gw, stub):
    """max_tokens of 2**64-1 (the largest integer the gateway reads) must reserve more than
    any budget holds, never wrap around to a small reservation."""
    token = gw.mint("budget-huge", ["model:*"])
    stub.reset()
    for field in ("max_tokens", "max_completion_tokens"):
        status, headers, body = gw.post("/v1/chat/completions",
                                        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}],
                                         field: 2**64 - 1},
                                        host=BUDGET_HOST, token=token)
        assert status == 429, body
    assert not stub.requests()
