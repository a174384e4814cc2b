#!/usr/bin/env bash
# The project's test command: formatting, lints, and every test in the workspace.
# Called by .ci/run; run it yourself before sending a change.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
echo "== all tests passed"
