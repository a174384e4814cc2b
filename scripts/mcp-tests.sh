#!/usr/bin/env bash
# The MCP suite (tests/mcp): Portcullis as the OAuth resource server in front of an MCP server,
# with the official MCP TypeScript SDK as the client and the real OpenID provider
# (e2e/oidc/provider.mjs, oidc-provider) as the authorization server, all on loopback.
#
#   scripts/mcp-tests.sh
#
# Env: PORTCULLIS_BIN (default target/debug/portcullis; this script never builds it),
#      MCP_NPM_CI=1 (run `npm ci` even when node_modules look current),
#      KEEP_WORK=1 (keep the work directory, logs and manifests, also on success).
#
# What runs (every step's failure fails the script; nothing is skipped):
#   1. the provider (PORT/ADMIN_PORT, READY line), tests/mcp/server.mjs (the MCP server, which
#      records what reaches it), and `portcullis standalone` on two ApiRoutes of one TokenPolicy:
#        /mcp         mcp:tools, delete_everything also mcp:admin, upstreamCredential from a Secret
#        /public/mcp  auth: none, mcp.rules deny delete_everything (for the conformance suite,
#                     which cannot send tokens; the Origin and header checks still apply)
#   2. client.mjs (SDK v2): the pre-registered public client, then dynamic registration pinned to
#      2026-07-28: 401 -> RFC 9728 metadata -> authorization code + PKCE + resource -> tools/list,
#      get_weather, get_forecast (Mcp-Param-Region), delete_everything -> 403 insufficient_scope
#      -> step-up -> 200; checks.mjs asserts on its JSON and on the challenges it saw;
#      a 2025-era client must be refused (400) by the route with mcp.rules;
#   3. checks.mjs probes: audience, Origin, Mcp-Method/Mcp-Name/body agreement, Base64 names,
#      versions, batches, the public route's deny rule, with the clients' tokens;
#   4. the conformance suite's server scenarios through the public route, each also run against
#      server.mjs directly: the gateway must add no failing check (dns-rebinding-protection must
#      pass outright: server.mjs has no Origin check, Portcullis does); the authorization-server
#      scenarios against the provider;
#   5. checks.mjs upstream: the MCP server never saw a client token (only the gateway's
#      credential on /mcp, nothing on /public/mcp), and everything it got had Mcp-Method/Mcp-Name
#      agreeing with the body.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
START=$(date +%s)

BIN=${PORTCULLIS_BIN:-$ROOT/target/debug/portcullis}
if [ ! -x "$BIN" ]; then
  echo "no gateway binary at $BIN (build it with cargo build -p portcullis, or set PORTCULLIS_BIN)" >&2
  exit 2
fi
for tool in node npm curl; do
  command -v "$tool" >/dev/null || { echo "$tool is required" >&2; exit 2; }
done

HARNESS=mcp NPM_CI=${MCP_NPM_CI:-0}
# shellcheck source=lib/node-harness.sh
source "$ROOT/scripts/lib/node-harness.sh"
npm_deps "$ROOT/tests/mcp"
npm_deps "$ROOT/e2e/oidc"
step() { # name command...
  local name=$1
  shift
  echo
  echo "== $name"
  if "$@"; then
    echo "-- ok: $name"
  else
    echo "-- FAILED: $name"
    FAILED+=("$name")
  fi
}

read -r OIDC_PORT OIDC_ADMIN GW_PORT GW_ADMIN CB_PORT <<<"$(free_ports 5)"
ISSUER="http://127.0.0.1:$OIDC_PORT"
GATEWAY="http://127.0.0.1:$GW_PORT"
OTHER_AUDIENCE=https://api.portcullis.test
UPSTREAM_CREDENTIAL="gw-$(node -p 'require("crypto").randomBytes(12).toString("hex")')"

# --- the OpenID provider ----------------------------------------------------------------------------
(cd "$ROOT/e2e/oidc" && exec env PORT="$OIDC_PORT" ADMIN_PORT="$OIDC_ADMIN" node provider.mjs) \
  >"$WORK/provider.log" 2>&1 &
PIDS+=($!)
wait_for_line "$WORK/provider.log" '^READY' $! 20 || die "the OpenID provider did not start" "$WORK/provider.log"

# --- the MCP server ---------------------------------------------------------------------------------
(cd "$ROOT/tests/mcp" && exec env PORT=0 node server.mjs) >"$WORK/server.log" 2>&1 &
PIDS+=($!)
wait_for_line "$WORK/server.log" '^READY' $! 20 || die "server.mjs did not start" "$WORK/server.log"
SERVER_PORT=$(sed -n 's/^READY \([0-9]*\).*/\1/p' "$WORK/server.log" | head -n1)
UPSTREAM="http://127.0.0.1:$SERVER_PORT"

# --- the gateway ------------------------------------------------------------------------------------
mkdir -p "$WORK/manifests"
cat >"$WORK/manifests/mcp.yaml" <<EOF
apiVersion: v1
kind: Secret
metadata: {name: mcp-upstream, namespace: default}
stringData:
  token: $UPSTREAM_CREDENTIAL
---
apiVersion: portcullis.dev/v1alpha1
kind: TokenPolicy
metadata: {name: mcp, namespace: default}
spec:
  issuers:
    - issuer: $ISSUER
      # The second audience is not the MCP resource: the MCP route must still refuse its tokens.
      audiences: ["$GATEWAY/mcp", "$OTHER_AUDIENCE"]
      algorithms: [RS256]
      jwks: {uri: $ISSUER/jwks}
---
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {name: mcp, namespace: default}
spec:
  hosts: ["127.0.0.1"]
  policyRef: {name: mcp}
  backend: {url: "$UPSTREAM"}
  rules:
    - match: {pathPrefix: /mcp}
      requiredScopes: [mcp:tools]
  mcp:
    resource: "$GATEWAY/mcp"
    upstreamCredential: {secretRef: {name: mcp-upstream, key: token}}
    rules:
      - {method: tools/call, name: delete_everything, requiredScopes: [mcp:tools, mcp:admin]}
---
# For the conformance suite, which sends no token: public, but still an MCP route (Origin,
# MCP-Protocol-Version, Mcp-Method/Mcp-Name against the body), strict because of its rule.
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {name: mcp-public, namespace: default}
spec:
  hosts: ["127.0.0.1"]
  policyRef: {name: mcp}
  backend: {url: "$UPSTREAM"}
  rules:
    - match: {pathPrefix: /public/mcp}
      auth: none
  mcp:
    resource: "$GATEWAY/public/mcp"
    rules:
      - {method: tools/call, name: delete_everything, deny: true}
EOF
"$BIN" standalone --manifests "$WORK/manifests" --listen "127.0.0.1:$GW_PORT" \
  --admin "127.0.0.1:$GW_ADMIN" --events-file - >"$WORK/portcullis.log" 2>&1 &
GW_PID=$!
PIDS+=("$GW_PID")
gateway_ready "$GW_PID" "$GW_ADMIN" 2 \
  || die "portcullis did not become ready with both routes and no errors" "$WORK/config.json" "$WORK/portcullis.log"
echo "== up: provider $ISSUER, MCP server $UPSTREAM, portcullis $GATEWAY (admin $GW_ADMIN), work dir $WORK"

# --- checks -------------------------------------------------------------------------------------------
export GATEWAY UPSTREAM ISSUER OTHER_AUDIENCE UPSTREAM_CREDENTIAL
export TOKENS_FILE="$WORK/tokens.jsonl"
: >"$TOKENS_FILE"

run_client() { # name, env assignments...
  local name=$1
  shift
  (cd "$ROOT/tests/mcp" && env MCP_URL="$GATEWAY/mcp" MCP_TOKENS_FILE="$WORK/tokens-$name.json" "$@" \
    node client.mjs) >"$WORK/client-$name.json" 2>"$WORK/client-$name.err"
  local st=$?
  if [ -s "$WORK/tokens-$name.json" ]; then
    cat "$WORK/tokens-$name.json" >>"$TOKENS_FILE"
    echo >>"$TOKENS_FILE"
  fi
  return $st
}
client_flow() { # name registered env...
  local name=$1 registered=$2
  shift 2
  run_client "$name" "$@" || { echo "client.mjs exited non-zero:"; tail -n 20 "$WORK/client-$name.err"; }
  node "$ROOT/tests/mcp/checks.mjs" client "$WORK/client-$name.json" "$registered"
}
legacy_flow() {
  run_client legacy MCP_CLIENT_ID=mcp-client MCP_ERA=legacy && { echo "the 2025-era client was not refused"; }
  node "$ROOT/tests/mcp/checks.mjs" legacy "$WORK/client-legacy.json"
}
conformance_server() {
  # DIRECT_URL: another path of the same server (any path ending in /mcp serves MCP), so the
  # direct runs are told apart from what came through the gateway in the upstream checks.
  (cd "$ROOT/tests/mcp" && env -u ISSUER MCP_URL="$GATEWAY/public/mcp" DIRECT_URL="$UPSTREAM/direct/mcp" \
    SCENARIOS="tools-list http-header-validation http-custom-header-server-validation dns-rebinding-protection server-stateless" \
    MUST_PASS="dns-rebinding-protection" RESULTS_DIR="$WORK/conformance" bash conformance.sh)
}
conformance_as() {
  (cd "$ROOT/tests/mcp" && env -u MCP_URL ISSUER="$ISSUER" AS_CLIENT_ID=mcp-client CALLBACK_PORT="$CB_PORT" \
    RESULTS_DIR="$WORK/conformance-as" bash conformance.sh)
}
gateway_healthy() {
  kill -0 "$GW_PID" 2>/dev/null || { echo "portcullis exited"; return 1; }
  ! grep -n -i 'panicked' "$WORK/portcullis.log"
}

step "OAuth client, pre-registered public client (mcp-client), version negotiation auto" \
  client_flow static static MCP_CLIENT_ID=mcp-client MCP_ERA=auto
step "OAuth client, dynamic client registration, pinned to 2026-07-28" \
  client_flow dynamic dynamic MCP_ERA=2026-07-28
step "2025-era client refused by a route with mcp.rules" legacy_flow
step "gateway probes" node "$ROOT/tests/mcp/checks.mjs" probes
step "conformance: server scenarios through the public MCP route (vs server.mjs directly)" conformance_server
step "conformance: authorization-server scenarios against the provider" conformance_as
step "what the MCP server saw" node "$ROOT/tests/mcp/checks.mjs" upstream
step "portcullis still running, no panic" gateway_healthy

echo
finish MCP
