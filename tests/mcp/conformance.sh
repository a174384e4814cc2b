#!/usr/bin/env bash
# Runs the official MCP conformance suite (@modelcontextprotocol/conformance, pinned in
# package.json) against Portcullis.
#
#   MCP_URL=http://127.0.0.1:<gw>/mcp ISSUER=http://127.0.0.1:<oidc> bash conformance.sh
#
# What the suite can and cannot test here (0.2.0-alpha.12):
#   * It has NO resource-server authorization scenarios (nothing checks a 401 challenge, RFC 9728
#     metadata or 403 insufficient_scope of a *server*); its auth/* scenarios test MCP *clients*.
#     client.mjs covers the resource-server side.
#   * `server` scenarios send no Authorization header and have no option to add one, so MCP_URL
#     must be an MCP route that lets them through (a route without OAuth, or server.mjs directly).
#   * `authorization` scenarios test the authorization server (the OIDC provider): metadata, and
#     an authorization-code grant that prints a URL "to open in a browser" and waits for the
#     callback on 127.0.0.1:$CALLBACK_PORT/callback; this script plays the browser with curl
#     (the provider's auto-login/consent interaction does the rest).
#
# Env:
#   MCP_URL          server scenarios target (skipped when unset)
#   SCENARIOS        default: "http-header-validation tools-list dns-rebinding-protection"
#   DIRECT_URL       optional: the MCP server itself (behind the gateway at MCP_URL). Each scenario
#                    then also runs against DIRECT_URL, and the gateway run passes when it adds no
#                    failing check to what the server fails on its own (conformance/compare.mjs),
#                    so the server's own gaps are not blamed on the gateway
#   MUST_PASS        scenarios that must pass outright through the gateway even with DIRECT_URL
#                    (default: dns-rebinding-protection, the gateway's job, which the server lacks)
#   SPEC_VERSION     default 2026-07-28
#   ISSUER           authorization-server scenarios target (skipped when unset)
#   AS_CLIENT_ID     default mcp-client (a public client registered with 127.0.0.1:$CALLBACK_PORT/callback)
#   CALLBACK_PORT    default 3000 (mcp-client is a native client: any loopback port works)
#   RESULTS_DIR      default ./results
#   EXPECTED_FAILURES  optional YAML baseline (conformance --expected-failures)
# Exit status: 0 when every scenario run passed (or failed as the baseline expects), 1 otherwise,
# 2 on usage errors. Prints `conformance: N passed, M failed` last.
set -uo pipefail
cd "$(dirname "$0")"

SPEC_VERSION=${SPEC_VERSION:-2026-07-28}
SCENARIOS=${SCENARIOS:-"http-header-validation tools-list dns-rebinding-protection"}
AS_CLIENT_ID=${AS_CLIENT_ID:-mcp-client}
CALLBACK_PORT=${CALLBACK_PORT:-3000}
RESULTS_DIR=${RESULTS_DIR:-./results}
mkdir -p "$RESULTS_DIR"

[ -d node_modules/@modelcontextprotocol/conformance ] || npm ci --no-audit --no-fund >&2 || exit 2

# The bundle imports fs.globSync (Node >= 22); on older Node resolve 'fs' to a shim.
NODE_MAJOR=$(node -p 'process.versions.node.split(".")[0]')
IMPORT=()
[ "$NODE_MAJOR" -lt 22 ] && IMPORT=(--import ./conformance/register.mjs)
conformance() { node "${IMPORT[@]}" node_modules/@modelcontextprotocol/conformance/dist/index.js "$@"; }
BASELINE=()
[ -n "${EXPECTED_FAILURES:-}" ] && BASELINE=(--expected-failures "$EXPECTED_FAILURES")

if [ -z "${MCP_URL:-}" ] && [ -z "${ISSUER:-}" ]; then
  echo "set MCP_URL and/or ISSUER" >&2
  exit 2
fi

passed=0
failed=0
record() { # name exit-status
  if [ "$2" -eq 0 ]; then passed=$((passed + 1)); echo "PASS $1"; else failed=$((failed + 1)); echo "FAIL $1 (exit $2)"; fi
}

MUST_PASS=${MUST_PASS:-dns-rebinding-protection}
if [ -n "${MCP_URL:-}" ]; then
  for s in $SCENARIOS; do
    if [ -n "${DIRECT_URL:-}" ]; then
      mkdir -p "$RESULTS_DIR/direct" "$RESULTS_DIR/gateway"
      conformance server --url "$DIRECT_URL" --scenario "$s" --spec-version "$SPEC_VERSION" \
        -o "$RESULTS_DIR/direct" >"$RESULTS_DIR/direct/server-$s.log" 2>&1
      conformance server --url "$MCP_URL" --scenario "$s" --spec-version "$SPEC_VERSION" \
        -o "$RESULTS_DIR/gateway" >"$RESULTS_DIR/gateway/server-$s.log" 2>&1
      st=$?
      if [[ " $MUST_PASS " == *" $s "* ]]; then
        record "server/$s (must pass through the gateway)" "$st"
        [ "$st" -ne 0 ] && grep -a -E 'FAILURE|Passed:' "$RESULTS_DIR/gateway/server-$s.log" | tail -n 20
      else
        node conformance/compare.mjs "$RESULTS_DIR/direct" "$RESULTS_DIR/gateway" "$s"
        record "server/$s (no failure added by the gateway)" $?
      fi
      continue
    fi
    conformance server --url "$MCP_URL" --scenario "$s" --spec-version "$SPEC_VERSION" \
      -o "$RESULTS_DIR" "${BASELINE[@]}" >"$RESULTS_DIR/server-$s.log" 2>&1
    st=$?
    record "server/$s" "$st"
    [ "$st" -ne 0 ] && tail -n 30 "$RESULTS_DIR/server-$s.log"
  done
fi

if [ -n "${ISSUER:-}" ]; then
  # One run of both authorization-server scenarios: authorization-code-grant reads the metadata
  # that authorization-server-metadata-endpoint fetched, so it cannot run alone (--scenario).
  log="$RESULTS_DIR/authorization.log"
  conformance authorization --url "$ISSUER" --client-id "$AS_CLIENT_ID" --port "$CALLBACK_PORT" \
    -o "$RESULTS_DIR" >"$log" 2>&1 &
  pid=$!
  url=""
  for _ in $(seq 1 100); do
    # The URL is printed before the callback server listens: wait for both.
    if grep -q 'Callback server started' "$log" 2>/dev/null; then
      url=$(grep -m1 -o 'http[^ ]*/auth?[^ ]*' "$log" 2>/dev/null || true)
    fi
    [ -n "$url" ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if [ -n "$url" ]; then
    jar=$(mktemp)
    # The "browser": authorize -> /interaction/<uid> -> authorize -> 127.0.0.1:$CALLBACK_PORT/callback.
    curl -sS -L --max-redirs 15 -c "$jar" -b "$jar" -o /dev/null "$url" || true
    rm -f "$jar"
  else
    echo "authorization-code-grant printed no authorization URL" >&2
  fi
  ( sleep 60; kill "$pid" 2>/dev/null ) &
  watchdog=$!
  wait "$pid"
  st=$?
  kill "$watchdog" 2>/dev/null
  record "authorization (authorization-server-metadata-endpoint, authorization-code-grant)" "$st"
  [ "$st" -ne 0 ] && tail -n 30 "$log"
fi

echo "conformance: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
