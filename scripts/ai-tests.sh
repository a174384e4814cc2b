#!/usr/bin/env bash
# The AI-gateway suite (tests/ai): the real `openai` and `anthropic` Python SDKs against a
# standalone Portcullis in front of the LLM stub (tools/llm-stub), all on loopback.
#
# A venv with pinned packages lives in ${XDG_CACHE_HOME:-~/.cache}/portcullis-ai/venv; it is
# made (installing python3-venv with apt-get if `python3 -m venv` cannot) and filled only when
# something is missing. PORTCULLIS_BIN names the gateway binary; unset, this builds
# target/debug/portcullis (cargo build --locked -q -p portcullis) and uses that.
#
#   scripts/ai-tests.sh                       # the whole suite
#   scripts/ai-tests.sh -k metering -x        # extra pytest arguments
#   scripts/ai-tests.sh tests/ai/test_stub_direct.py   # a path replaces tests/ai
set -euo pipefail
cd "$(dirname "$0")/.."

pins=(openai==3.63.0 anthropic==2.17.0 pytest==9.2.0 httpx==0.29.0)
venv="${XDG_CACHE_HOME:-$HOME/.cache}/portcullis-ai/venv"

if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    # Debian/Ubuntu ship venv's ensurepip separately.
    rm -rf "$venv"
    sudo=()
    if [ "$(id -u)" -ne 0 ]; then sudo=(sudo); fi
    echo "== installing python3-venv"
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$venv"
  fi
fi

if ! "$venv/bin/python" - "${pins[@]}" <<'EOF'
import sys
from importlib import metadata
for pin in sys.argv[1:]:
    name, version = pin.split("==")
    try:
        if metadata.version(name) != version:
            sys.exit(1)
    except metadata.PackageNotFoundError:
        sys.exit(1)
EOF
then
  echo "== pip install ${pins[*]}"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "${pins[@]}"
fi

if [ -z "${PORTCULLIS_BIN:-}" ]; then
  echo "== cargo build -p portcullis"
  cargo build --locked -q -p portcullis
  PORTCULLIS_BIN="$PWD/${CARGO_TARGET_DIR:-target}/debug/portcullis"
fi
export PORTCULLIS_BIN

# A path among the arguments replaces the default tests/ai.
has_path=0
for a in "$@"; do
  case "$a" in tests/*) has_path=1 ;; esac
done
if [ "$has_path" = 0 ]; then set -- tests/ai "$@"; fi

echo "== pytest (gateway: $PORTCULLIS_BIN)"
export PYTHONDONTWRITEBYTECODE=1
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider "$@"
