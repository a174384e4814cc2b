#!/usr/bin/env bash
# The end-to-end suite: builds the control plane if needed, starts etcd + kube-apiserver
# on loopback, runs the e2e tests against them with the real `portcullis` binary, and
# stops everything it started, also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked -p portcullis
env_file=$(e2e/cluster.sh up)
cleanup() {
  pkill -f "$PWD/target/debug/portcullis (controller|proxy|echo)" 2>/dev/null || true
  e2e/cluster.sh down || true
}
trap cleanup EXIT INT TERM
# shellcheck disable=SC1090
source "$env_file"
export PORTCULLIS_BIN=$PWD/target/debug/portcullis
cargo test --locked -p portcullis-e2e -- --ignored --nocapture --test-threads=1
