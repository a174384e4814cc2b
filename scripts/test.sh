#!/usr/bin/env bash
# The project's test command: formatting, lints, every unit and integration test, then
# the end-to-end suite against a real kube-apiserver + etcd (built once from the Go
# module proxy into ~/.cache/portcullis-e2e; set KUBEBUILDER_ASSETS to use your own).
# Then the Helm chart's tests (charts/test.sh: lint, render, server dry-run, alert unit
# tests, dashboard and alerts on a real Prometheus scraping real processes).
# Between them, a short smoke run of every coverage-guided fuzz target (scripts/fuzz.sh:
# cargo-fuzz, installed once into ~/.cache/portcullis-fuzz).
# After the Rust tests, the AI-gateway suite (scripts/ai-tests.sh: the real openai and
# anthropic Python SDKs through a standalone Portcullis to the LLM stub; a venv with pinned
# packages in ~/.cache/portcullis-ai), and the MCP suite (scripts/mcp-tests.sh: the official
# MCP SDK client doing OAuth against the real oidc-provider through a standalone
# Portcullis, and the @modelcontextprotocol/conformance scenarios; npm packages pinned in
# tests/mcp).
# Called by .ci/run; run it yourself before sending a change. SKIP_E2E=1 skips the e2e
# step, SKIP_FUZZ=1 the fuzz smoke, SKIP_AI=1 the AI-gateway suite, SKIP_MCP=1 the MCP
# suite and SKIP_CHART=1 the
# chart step (each says so).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
if [ "${SKIP_AI:-0}" = 1 ]; then
  echo "== AI gateway SDK suite SKIPPED (SKIP_AI=1)"
else
  echo "== AI gateway: openai + anthropic SDKs through Portcullis to the LLM stub"
  scripts/ai-tests.sh
fi
if [ "${SKIP_MCP:-0}" = 1 ]; then
  echo "== MCP suite SKIPPED (SKIP_MCP=1)"
else
  echo "== MCP: the official SDK client (OAuth against oidc-provider) and the conformance suite through Portcullis"
  cargo build --locked -q -p portcullis
  PORTCULLIS_BIN="$PWD/${CARGO_TARGET_DIR:-target}/debug/portcullis" scripts/mcp-tests.sh
  echo "== DPoP: oauth4webapi gets a DPoP-bound token from oidc-provider and calls through Portcullis; proof attacks refused"
  PORTCULLIS_BIN="$PWD/${CARGO_TARGET_DIR:-target}/debug/portcullis" scripts/dpop-tests.sh
  echo "== mTLS: oauth4webapi gets a certificate-bound token from oidc-provider with a client certificate and calls through Portcullis over TLS; other certificates refused"
  PORTCULLIS_BIN="$PWD/${CARGO_TARGET_DIR:-target}/debug/portcullis" scripts/mtls-tests.sh
  echo "== API catalog: the catalog page in Debian's headless Chromium (puppeteer-core): login, list, search, detail, deprecation banner; axe-core accessibility; screenshots in target/ci-artifacts/catalog"
  PORTCULLIS_BIN="$PWD/${CARGO_TARGET_DIR:-target}/debug/portcullis" scripts/catalog-tests.sh
fi
if [ "${SKIP_FUZZ:-0}" = 1 ]; then
  echo "== fuzz smoke SKIPPED (SKIP_FUZZ=1)"
else
  echo "== fuzz smoke: every cargo-fuzz target, a fixed seed and input count from its committed corpus"
  scripts/fuzz.sh smoke
fi
if [ "${SKIP_E2E:-0}" = 1 ]; then
  echo "== e2e SKIPPED (SKIP_E2E=1)"
else
  echo "== e2e: real kube-apiserver + etcd"
  e2e/run.sh
fi
if [ "${SKIP_CHART:-0}" = 1 ]; then
  echo "== chart SKIPPED (SKIP_CHART=1)"
else
  echo "== chart: helm lint/template, server dry-run, alerts, dashboard on a real Prometheus"
  charts/test.sh
fi
echo "== all tests passed"
