#!/usr/bin/env bash
# The DPoP suite (tests/dpop): Portcullis as a resource server for DPoP-bound tokens (RFC 9449),
# with a real client (oauth4webapi) and a real authorization server (e2e/oidc/provider.mjs,
# oidc-provider, client `dpop-client`), all on loopback.
#
#   scripts/dpop-tests.sh
#
# Env: PORTCULLIS_BIN (default target/debug/portcullis; this script never builds it),
#      DPOP_MODE (the TokenPolicy's dpop.mode, default `Required`),
#      DPOP_NPM_CI=1 (run `npm ci` even when node_modules look current),
#      KEEP_WORK=1 (keep the work directory, logs and manifests, also on success),
#      REFERENCE=1 (tests/dpop/reference-rs.mjs, a small jose resource server, stands where the
#      gateway would: checks the test itself, not Portcullis).
#
# What runs:
#   1. the provider (PORT/ADMIN_PORT, READY line), tests/dpop/echo.mjs (the upstream, which logs
#      every request it gets), `portcullis standalone` with a TokenPolicy (the provider's issuer,
#      JWKS by discovery, audience https://api.portcullis.test, dpop: {mode: required,
#      algorithms: [ES256], maxAge: 60s}) and an ApiRoute for 127.0.0.1 to the upstream;
#   2. client.mjs: a DPoP-bound token (cnf.jkt) from the provider, a 200 through the gateway with
#      oauth4webapi's DPoP handle, then the attacks (bearer use of the bound token, proofs by other
#      keys, replays, wrong htu/htm/ath/iat/typ/alg (HS256, none, EdDSA where only ES256 is
#      configured), private jwk, missing or doubled proof,
#      unbound tokens);
#   3. checks.mjs: PASS/FAIL per case: 200 for the legitimate calls; 401 for every attack (400 or
#      401 for a missing or doubled proof), proof errors with `DPoP error="invalid_dpop_proof",
#      algs="..."`, the bound token as Bearer with invalid_token, an unbound token with a DPoP
#      challenge; every DPoP challenge's algs exactly the configured [ES256] (RFC 9449 section
#      7.1); the upstream got only the accepted requests;
#   4. portcullis still running, no panic.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
START=$(date +%s)

REFERENCE=${REFERENCE:-0}
BIN=${PORTCULLIS_BIN:-$ROOT/target/debug/portcullis}
if [ "$REFERENCE" != 1 ] && [ ! -x "$BIN" ]; then
  echo "no gateway binary at $BIN (build it with cargo build -p portcullis, or set PORTCULLIS_BIN)" >&2
  exit 2
fi
for tool in node npm curl; do
  command -v "$tool" >/dev/null || { echo "$tool is required" >&2; exit 2; }
done

HARNESS=dpop NPM_CI=${DPOP_NPM_CI:-0}
# shellcheck source=lib/node-harness.sh
source "$ROOT/scripts/lib/node-harness.sh"
npm_deps "$ROOT/tests/dpop"
npm_deps "$ROOT/e2e/oidc"

read -r OIDC_PORT OIDC_ADMIN GW_PORT GW_ADMIN <<<"$(free_ports 4)"
ISSUER="http://127.0.0.1:$OIDC_PORT"
GATEWAY="http://127.0.0.1:$GW_PORT"
RESOURCE=https://api.portcullis.test
DPOP_MODE=${DPOP_MODE:-Required}

# --- the OpenID provider ----------------------------------------------------------------------------
(cd "$ROOT/e2e/oidc" && exec env PORT="$OIDC_PORT" ADMIN_PORT="$OIDC_ADMIN" node provider.mjs) \
  >"$WORK/provider.log" 2>&1 &
PIDS+=($!)
wait_for_line "$WORK/provider.log" '^READY' $! 20 || die "the OpenID provider did not start" "$WORK/provider.log"

# --- the upstream -------------------------------------------------------------------------------------
(cd "$ROOT/tests/dpop" && exec env PORT=0 node echo.mjs) >"$WORK/echo.log" 2>"$WORK/echo.err" &
PIDS+=($!)
wait_for_line "$WORK/echo.log" '^READY' $! 20 || die "echo.mjs did not start" "$WORK/echo.log" "$WORK/echo.err"
UPSTREAM_PORT=$(sed -n 's/^READY \([0-9]*\).*/\1/p' "$WORK/echo.log" | head -n1)
UPSTREAM="http://127.0.0.1:$UPSTREAM_PORT"

# --- the gateway ------------------------------------------------------------------------------------
mkdir -p "$WORK/manifests"
cat >"$WORK/manifests/dpop.yaml" <<EOF
apiVersion: portcullis.dev/v1alpha1
kind: TokenPolicy
metadata: {name: dpop, namespace: default}
spec:
  issuers:
    - issuer: $ISSUER
      audiences: ["$RESOURCE"]
      algorithms: [RS256]
      jwks: {discovery: true}
      dpop:
        mode: $DPOP_MODE
        algorithms: [ES256]
        maxAge: 60s
---
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {name: dpop, namespace: default}
spec:
  hosts: ["127.0.0.1"]
  policyRef: {name: dpop}
  backend: {url: "$UPSTREAM"}
  rules:
    - match: {pathPrefix: /}
---
# The same issuer behind server nonces (RFC 9449 section 9), on host localhost.
apiVersion: v1
kind: Secret
metadata: {name: dpop-nonce, namespace: default}
data: {key: $(head -c 48 /dev/urandom | base64 -w0)}
---
apiVersion: portcullis.dev/v1alpha1
kind: TokenPolicy
metadata: {name: dpop-nonce, namespace: default}
spec:
  issuers:
    - issuer: $ISSUER
      audiences: ["$RESOURCE"]
      algorithms: [RS256]
      jwks: {discovery: true}
      dpop:
        mode: $DPOP_MODE
        algorithms: [ES256]
        maxAge: 60s
        nonce: {secretRef: {name: dpop-nonce, key: key}, lifetime: 5m}
---
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {name: dpop-nonce, namespace: default}
spec:
  hosts: ["localhost"]
  policyRef: {name: dpop-nonce}
  backend: {url: "$UPSTREAM"}
  rules:
    - match: {pathPrefix: /}
EOF

if [ "$REFERENCE" = 1 ]; then
  (cd "$ROOT/tests/dpop" && exec env PORT="$GW_PORT" ISSUER="$ISSUER" AUDIENCE="$RESOURCE" \
    UPSTREAM="$UPSTREAM" DPOP_ALGS=ES256 MAX_AGE=60 node reference-rs.mjs) >"$WORK/portcullis.log" 2>&1 &
  GW_PID=$!
  PIDS+=("$GW_PID")
  wait_for_line "$WORK/portcullis.log" '^READY' "$GW_PID" 20 \
    || die "reference-rs.mjs did not start" "$WORK/portcullis.log"
  echo "== REFERENCE=1: tests/dpop/reference-rs.mjs stands for the gateway"
else
  "$BIN" standalone --manifests "$WORK/manifests" --listen "127.0.0.1:$GW_PORT" \
    --admin "127.0.0.1:$GW_ADMIN" --events-file - >"$WORK/portcullis.log" 2>&1 &
  GW_PID=$!
  PIDS+=("$GW_PID")
  gateway_ready "$GW_PID" "$GW_ADMIN" 2 \
    || die "portcullis did not become ready with the routes and no errors (does it know dpop: {mode: $DPOP_MODE}?)" \
      "$WORK/config.json" "$WORK/portcullis.log" "$WORK/manifests/dpop.yaml"
fi
echo "== up: provider $ISSUER, upstream $UPSTREAM, gateway $GATEWAY (admin $GW_ADMIN), work dir $WORK"

# --- the client and the checks ---------------------------------------------------------------------
echo
echo "== client.mjs (oauth4webapi, DPoP-bound token, attacks)"
nonce_url=""; [ "$REFERENCE" != 1 ] && nonce_url="http://localhost:$GW_PORT/orders/dpop"
(cd "$ROOT/tests/dpop" && env ISSUER="$ISSUER" RESOURCE="$RESOURCE" API_URL="$GATEWAY/orders/dpop" NONCE_URL="$nonce_url" \
  timeout 40 node client.mjs) >"$WORK/client.json" 2>"$WORK/client.err"
client_status=$?
if [ "$client_status" != 0 ]; then
  FAILED+=("client.mjs exited $client_status")
  echo "FAIL client.mjs exited $client_status"
  tail -n 20 "$WORK/client.err"
fi
echo "client: $(head -c 4000 "$WORK/client.json")"
echo
echo "== checks"
EXPECT_ALGS=ES256 node "$ROOT/tests/dpop/checks.mjs" "$WORK/client.json" "$WORK/echo.log" | tee "$WORK/checks.txt"
[ "${PIPESTATUS[0]}" = 0 ] || FAILED+=("$(grep -c '^FAIL' "$WORK/checks.txt") check(s)")

check_gateway_alive

echo
finish DPoP
