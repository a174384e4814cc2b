#!/usr/bin/env bash
# The end-to-end suite: builds the control plane if needed, installs the OpenID provider,
# starts etcd + kube-apiserver on loopback, runs the e2e tests against them with the real
# `portcullis` binary, and stops everything it started, also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked -p portcullis
# The real OpenID provider (npm oidc-provider), pinned by e2e/oidc/package-lock.json.
(cd e2e/oidc && npm ci --no-audit --no-fund --loglevel=error)
env_file=$(e2e/cluster.sh up)
cleanup() {
  pkill -f "$PWD/target/debug/portcullis (controller|proxy|echo|standalone)" 2>/dev/null || true
  pkill -f "$PWD/e2e/oidc/provider.mjs" 2>/dev/null || true
  e2e/cluster.sh down || true
}
trap cleanup EXIT INT TERM
# shellcheck disable=SC1090
source "$env_file"
export PORTCULLIS_BIN=$PWD/target/debug/portcullis
cargo test --locked -p portcullis-e2e -- --ignored --nocapture --test-threads=1
