"""Fixtures for the AI-gateway suite: the LLM stub (tools/llm-stub) and a standalone Portcullis in
front of it, both on real loopback sockets, driven with the real `openai` and `anthropic` SDKs.

- `stub`: the stub with keys sk-stub-primary and sk-stub-backup (session-wide).
- `limited_stub`: a second stub where sk-stub-primary is answered 429 (for the key pool).
- `gw`: `$PORTCULLIS_BIN standalone` (default target/debug/portcullis) over manifests written to a
  temp dir: TokenPolicy `ai-tokens` (the quickstart's DEV-ONLY key), Secret `llm-keys`, and the
  ApiRoutes `openai-route` (host openai.test, openaiCompatible), `anthropic-route` (host
  anthropic.test, anthropic) and `pool-route` (host pool.test, openaiCompatible on `limited_stub`).
  Tokens are minted with `portcullis token mint`.

Routes are chosen by Host, so the SDK clients send `Host: <route host>` (default_headers) to
127.0.0.1. A failing test gets the gateway's and the stubs' log tails in its report.
"""

from __future__ import annotations

import json
import os
import re
import select
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STUB_SCRIPT = REPO / "tools" / "llm-stub" / "llm_stub.py"
DEV_KEY = REPO / "examples" / "quickstart" / "dev-private.pem"
QUICKSTART_POLICY = REPO / "examples" / "quickstart" / "policy.yaml"

PRIMARY = "sk-stub-primary"
BACKUP = "sk-stub-backup"

# The tool both APIs are asked to call, in each API's shape (the stub answers "weather" with it).
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
WEATHER_TOOL_ANTHROPIC = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
OPENAI_HOST = "openai.test"
ANTHROPIC_HOST = "anthropic.test"
POOL_HOST = "pool.test"
BUDGET_HOST = "budget.test"
RATE_HOST = "rate.test"
# Each subject's daily token budget on budget.test (policy budget-tokens).
BUDGET_TOKENS = 3000
OPENAI_ROUTE = "default/openai-route"
ANTHROPIC_ROUTE = "default/anthropic-route"
POOL_ROUTE = "default/pool-route"
# Public model names of each route (what `models.list()` may show).
OPENAI_MODELS = {"gpt-4o-mini", "gpt-4o", "gpt-premium", "slow", "broken", "leaky", "text-embed"}
ANTHROPIC_MODELS = {"claude-mini", "claude-big", "slow", "broken", "leaky"}

# Never send loopback traffic through a proxy from the environment.
for _var in ("NO_PROXY", "no_proxy"):
    os.environ[_var] = ",".join(x for x in (os.environ.get(_var, ""), "127.0.0.1,localhost,.test") if x)

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_LOGS: dict[str, Path] = {}


def http(method: str, url: str, body=None, headers=None, timeout: float = 15.0):
    """One plain HTTP request: (status, lowercased headers, body bytes). Never raises on 4xx/5xx."""
    data = None
    headers = dict(headers or {})
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with _OPENER.open(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def wait_for(pred, timeout: float = 10.0, interval: float = 0.1, what: str = "condition"):
    """Polls `pred` until it returns something truthy; returns it. Fails the test after `timeout`."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = pred()
        if last:
            return last
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 80) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as e:
        return f"(cannot read {path}: {e})"


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# -------------------------------------------------------------------------------------------
# The stub
# -------------------------------------------------------------------------------------------


class Stub:
    """A running llm_stub.py on a free loopback port."""

    def __init__(self, name: str, args: list[str], logdir: Path):
        self.name = name
        self.log = logdir / f"{name}.log"
        self._logf = open(self.log, "w")
        self.proc = subprocess.Popen(
            [sys.executable, str(STUB_SCRIPT), "--host", "127.0.0.1", "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=self._logf, text=True,
        )
        ready, _, _ = select.select([self.proc.stdout], [], [], 15)
        line = self.proc.stdout.readline() if ready else ""
        m = re.fullmatch(r"listening on http://127\.0\.0\.1:(\d+)\s*", line)
        if not m:
            _stop(self.proc)
            pytest.fail(f"stub {name} did not start (said {line!r}):\n{_tail(self.log)}")
        self.port = int(m.group(1))
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_base = self.url + "/v1"
        _LOGS[f"stub {name}"] = self.log

    def _get(self, path: str):
        status, _, body = http("GET", self.url + path)
        assert status == 200, (path, status, body)
        return json.loads(body)

    def ledger(self) -> list[dict]:
        return self._get("/_stub/ledger")

    def last(self) -> dict:
        return self._get("/_stub/last")

    def requests(self) -> list[dict]:
        return self._get("/_stub/requests")

    def reset(self) -> None:
        status, _, body = http("POST", self.url + "/_stub/reset", body={})
        assert status == 200, body

    def stop(self) -> None:
        _stop(self.proc)
        self.proc.stdout.close()
        self._logf.close()


@pytest.fixture(scope="session")
def logdir():
    with tempfile.TemporaryDirectory(prefix="portcullis-ai-") as d:
        yield Path(d)


@pytest.fixture(scope="session")
def stub(logdir):
    s = Stub("main", ["--keys", f"{PRIMARY},{BACKUP}"], logdir)
    yield s
    s.stop()


@pytest.fixture(scope="session")
def limited_stub(logdir):
    s = Stub("rate-limited", ["--keys", f"{PRIMARY},{BACKUP}", "--rate-limited-keys", PRIMARY], logdir)
    yield s
    s.stop()


# -------------------------------------------------------------------------------------------
# The gateway
# -------------------------------------------------------------------------------------------


def parse_metrics(text: str) -> list[tuple[str, dict, float]]:
    """Prometheus text exposition -> [(name, labels, value)]."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)", line)
        if not m:
            continue
        labels = {
            k: v.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
            for k, v in re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(2) or "")
        }
        out.append((m.group(1), labels, float(m.group(3))))
    return out


class Gateway:
    def __init__(self, binary: Path, stub: Stub, limited: Stub, workdir: Path, logdir: Path):
        self.bin = binary
        self.stub = stub
        self.limited = limited
        self.manifests = workdir / "manifests"
        self.manifests.mkdir()
        (self.manifests / "ai.yaml").write_text(manifests(stub.api_base, limited.api_base))
        self.tokens = {
            "all": self.mint("alice", ["model:*"]),
            "mini": self.mint("bob", ["model:gpt-4o-mini"]),
            "none": self.mint("carol", ["orders:read"]),
        }
        self.port = free_port()
        self.admin_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin = f"http://127.0.0.1:{self.admin_port}"
        self.log = logdir / "gateway.log"
        self._logf = open(self.log, "w")
        _LOGS["gateway"] = self.log
        self.proc = subprocess.Popen(
            [str(binary), "standalone", "--manifests", str(self.manifests),
             "--listen", f"127.0.0.1:{self.port}", "--admin", f"127.0.0.1:{self.admin_port}"],
            stdout=self._logf, stderr=subprocess.STDOUT, cwd=REPO,
        )
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"portcullis exited with {self.proc.returncode}:\n{_tail(self.log)}")
            try:
                status, _, _ = http("GET", self.admin + "/readyz", timeout=2)
                if status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"portcullis not ready after 30s:\n{_tail(self.log)}")
            time.sleep(0.1)
        status, _, body = http("GET", self.admin + "/config")
        info = json.loads(body) if status == 200 else {}
        if info.get("errors"):
            self.stop()
            pytest.fail("the manifests did not load cleanly:\n" + "\n".join(info["errors"]))

    def mint(self, sub: str, scopes: list[str]) -> str:
        cmd = [str(self.bin), "token", "mint", "--key", str(DEV_KEY), "--sub", sub, "--ttl", "30m"]
        for s in scopes:
            cmd += ["--scope", s]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            pytest.fail(f"token mint failed: {r.stderr}")
        return r.stdout.strip()

    # -- clients ---------------------------------------------------------------------------

    def openai(self, host: str = OPENAI_HOST, token: str | None = None, **kw):
        import openai

        return openai.OpenAI(api_key=token or self.tokens["all"], base_url=self.url + "/v1",
                             default_headers={"Host": host}, max_retries=0, timeout=30, **kw)

    def anthropic(self, host: str = ANTHROPIC_HOST, token: str | None = None, **kw):
        import anthropic

        return anthropic.Anthropic(auth_token=token or self.tokens["all"], base_url=self.url,
                                   default_headers={"Host": host}, max_retries=0, timeout=30, **kw)

    def post(self, path: str, body, host: str = OPENAI_HOST, token: str | None = "all", headers=None):
        h = {"Host": host, **(headers or {})}
        if token:
            h["Authorization"] = f"Bearer {self.tokens.get(token, token)}"
        return http("POST", self.url + path, body=body, headers=h)

    # -- metrics ---------------------------------------------------------------------------

    def metrics(self) -> list[tuple[str, dict, float]]:
        status, _, body = http("GET", self.admin + "/metrics")
        assert status == 200
        return parse_metrics(body.decode())

    def metric(self, name: str, **labels) -> float:
        """The sum of every sample of `name` whose labels include `labels`."""
        return sum(v for n, ls, v in self.metrics() if n == name and all(ls.get(k) == w for k, w in labels.items()))

    def stop(self) -> None:
        _stop(self.proc)
        self._logf.close()


def manifests(api_base: str, limited_base: str) -> str:
    m = re.search(r'^\s*"n":\s*(\S+)\s*$', QUICKSTART_POLICY.read_text(), re.M)
    assert m, "no RSA modulus in examples/quickstart/policy.yaml"
    modulus = m.group(1)
    # The quickstart's DEV-ONLY issuer, for the budget and rate-limit policies.
    issuers = (
        "  issuers:\n    - issuer: https://issuer.portcullis.local\n      audiences: [quickstart]\n"
        "      algorithms: [RS256]\n      jwks:\n        inline:\n          keys:\n"
        f'            - {{kty: RSA, kid: dev-1, alg: RS256, use: sig, "n": {modulus}, e: AQAB}}\n'
    )
    credentials = """
      credentials:
        - secretRef: {name: llm-keys, key: primary}
          priority: 0
        - secretRef: {name: llm-keys, key: backup}
          priority: 1
      cooldown: 30s"""
    return f"""\
apiVersion: portcullis.dev/v1alpha1
kind: TokenPolicy
metadata: {{name: ai-tokens, namespace: default}}
spec:
  issuers:
    - issuer: https://issuer.portcullis.local
      audiences: [quickstart]
      algorithms: [RS256]
      jwks:
        inline:
          keys:
            - kty: RSA
              kid: dev-1
              alg: RS256
              use: sig
              "n": {modulus}
              e: AQAB
  clockSkew: 30s
  maxTokenLifetime: 1h
---
# Budgets and rate limits (test_quota.py): each test mints tokens for subjects of its own.
apiVersion: portcullis.dev/v1alpha1
kind: TokenPolicy
metadata: {{name: budget-tokens, namespace: default}}
spec:
{issuers}  llmBudgets:
    - name: daily
      key: subject
      tokens: {BUDGET_TOKENS}
      window: day
      timeZone: Europe/Paris
      defaultMaxTokens: 64
      overrides:
        - {{consumer: budget-vip, limit: 1000000}}
    - name: premium-monthly
      key: subject
      tokens: 50
      count: output
      window: month
      models: [gpt-premium]
    - name: per-client
      key: consumer
      tokens: 100000
      window: hour
      models: [per-client]
---
apiVersion: portcullis.dev/v1alpha1
kind: TokenPolicy
metadata: {{name: rate-tokens, namespace: default}}
spec:
{issuers}  rateLimits:
    - name: per-subject
      key: subject
      requests: 1
      period: second
      burst: 1
---
apiVersion: v1
kind: Secret
metadata: {{name: llm-keys, namespace: default}}
stringData: {{primary: {PRIMARY}, backup: {BACKUP}}}
---
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {{name: openai-route, namespace: default}}
spec:
  hosts: [{OPENAI_HOST}]
  policyRef: {{name: ai-tokens}}
  backend:
    llm:
      provider: openaiCompatible
      url: {api_base}{credentials}
      models:
        - {{name: gpt-4o-mini, providerModel: stub-small, scope: "model:gpt-4o-mini"}}
        - {{name: gpt-4o, providerModel: stub-small}}
        - {{name: gpt-premium, providerModel: stub-small, scope: "model:premium"}}
        - {{name: slow, providerModel: stub-slow}}
        - {{name: broken, providerModel: stub-error}}
        - {{name: leaky, providerModel: stub-leaky}}
        - {{name: text-embed, providerModel: stub-embed}}
  rules:
    - match: {{pathPrefix: /v1}}
    - match: {{path: /prompts/summarize, methods: [POST]}}
      prompt:
        model: gpt-4o-mini
        messages:
          - {{role: system, content: "You summarize text."}}
          - {{role: user, content: "Summarize in {{{{style}}}} style: {{{{text}}}}"}}
        variables:
          type: object
          required: [text]
          properties:
            text: {{type: string, maxLength: 10000}}
            style: {{type: string, enum: [short, long]}}
        maxTokens: 256
---
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {{name: anthropic-route, namespace: default}}
spec:
  hosts: [{ANTHROPIC_HOST}]
  policyRef: {{name: ai-tokens}}
  backend:
    llm:
      provider: anthropic
      url: {api_base}{credentials}
      models:
        - {{name: claude-mini, providerModel: stub-small}}
        - {{name: claude-big, providerModel: stub-small}}
        - {{name: slow, providerModel: stub-slow}}
        - {{name: broken, providerModel: stub-error}}
        - {{name: leaky, providerModel: stub-leaky}}
  rules:
    - match: {{pathPrefix: /v1}}
""" + compat_route("pool-route", POOL_HOST, "ai-tokens", limited_base, credentials,
                  {"gpt-4o-mini": "stub-small"}) + compat_route(
    "budget-route", BUDGET_HOST, "budget-tokens", api_base, credentials,
    {"gpt-4o-mini": "stub-small", "gpt-premium": "stub-small", "per-client": "stub-small", "slow": "stub-slow"},
) + compat_route("rate-route", RATE_HOST, "rate-tokens", api_base, credentials, {"gpt-4o-mini": "stub-small"})


def compat_route(name: str, host: str, policy: str, base: str, credentials: str, models: dict[str, str]) -> str:
    """An ApiRoute `name` on `host` (policy `policy`) to an openaiCompatible backend at `base`,
    serving `models` (public name -> provider model) under /v1."""
    listed = "".join(f"\n        - {{name: {m}, providerModel: {p}}}" for m, p in models.items())
    return f"""---
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: [{host}]
  policyRef: {{name: {policy}}}
  backend:
    llm:
      provider: openaiCompatible
      url: {base}{credentials}
      models:{listed}
  rules:
    - match: {{pathPrefix: /v1}}
"""


@pytest.fixture(scope="session")
def portcullis_bin() -> Path:
    raw = os.environ.get("PORTCULLIS_BIN") or "target/debug/portcullis"
    path = Path(raw)
    if not path.is_absolute():
        path = REPO / path
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"no portcullis binary at {path}: build it (cargo build -p portcullis) or set PORTCULLIS_BIN")
    return path


@pytest.fixture(scope="session")
def gw(portcullis_bin, stub, limited_stub, logdir):
    with tempfile.TemporaryDirectory(prefix="portcullis-ai-gw-") as d:
        g = Gateway(portcullis_bin, stub, limited_stub, Path(d), logdir)
        yield g
        g.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        for name, path in _LOGS.items():
            report.sections.append((f"{name} log (tail)", _tail(path, 60)))
