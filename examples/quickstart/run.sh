#!/usr/bin/env bash
# The quickstart: an echo upstream on 127.0.0.1:9000 and Portcullis on 127.0.0.1:8080
# (admin and metrics on 127.0.0.1:9901), enforcing examples/quickstart/*.yaml.
# Edit those files while it runs: changes apply within a few hundred milliseconds.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --locked -p portcullis
bin=target/release/portcullis
"$bin" echo --listen 127.0.0.1:9000 &
echo_pid=$!
trap 'kill "$echo_pid" 2>/dev/null || true' EXIT INT TERM
"$bin" standalone --access-log --manifests examples/quickstart --listen 127.0.0.1:8080 --admin 127.0.0.1:9901
