#!/usr/bin/env bash
# The project's test command: formatting, lints, every unit and integration test, then
# the end-to-end suite against a real kube-apiserver + etcd (built once from the Go
# module proxy into ~/.cache/portcullis-e2e; set KUBEBUILDER_ASSETS to use your own).
# Then the Helm chart's tests (charts/test.sh: lint, render, server dry-run, alert unit
# tests, dashboard and alerts on a real Prometheus scraping real processes).
# Called by .ci/run; run it yourself before sending a change. SKIP_E2E=1 skips the e2e
# step and SKIP_CHART=1 the chart step (each says so).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
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
