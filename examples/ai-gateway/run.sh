#!/usr/bin/env bash
# The AI gateway example: the project's OpenAI/Anthropic-compatible stub provider on
# 127.0.0.1:9100 and Portcullis on 127.0.0.1:8080 (admin and metrics on 127.0.0.1:9901),
# enforcing examples/ai-gateway/*.yaml. See README.md here for calls to try.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --locked -p portcullis
bin=target/release/portcullis
python3 tools/llm-stub/llm_stub.py --host 127.0.0.1 --port 9100 --keys sk-stub-primary,sk-stub-backup &
stub_pid=$!
trap 'kill "$stub_pid" 2>/dev/null || true' EXIT INT TERM
"$bin" standalone --access-log --manifests examples/ai-gateway --listen 127.0.0.1:8080 --admin 127.0.0.1:9901
