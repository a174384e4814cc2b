#!/usr/bin/env bash
# The mTLS suite (tests/mtls): Portcullis as a resource server for certificate-bound access
# tokens (RFC 8705), with a real client (oauth4webapi over undici, presenting a client
# certificate) and a real authorization server (e2e/oidc/provider.mjs, oidc-provider, client
# `mtls-client` on its mTLS listener), all on loopback over real TLS.
#
#   scripts/mtls-tests.sh
#
# Env: PORTCULLIS_BIN (default target/debug/portcullis; this script never builds it),
#      MTLS_NPM_CI=1 (run `npm ci` even when node_modules look current),
#      KEEP_WORK=1 (keep the work directory: certificates, logs, manifests, also on success).
#
# What runs:
#   0. openssl makes a throwaway CA, a server certificate for 127.0.0.1 and localhost (the
#      gateway and the provider's mTLS port), client certificates A and B from that CA, and a
#      self-signed client certificate C (from no CA the gateway trusts);
#   1. the provider (PORT/ADMIN_PORT, plus MTLS_PORT/MTLS_CERT/MTLS_KEY: an HTTPS listener asking
#      for client certificates, MTLS_CLIENT_CERT=A: `mtls-client`, self_signed_tls_client_auth,
#      tls_client_certificate_bound_access_tokens, and MTLS_SELF_CLIENT_CERT=C: `mtls-self-client`,
#      the same with the self-signed C), tests/dpop/echo.mjs (the upstream, which logs every
#      request it gets), `portcullis standalone --tls-cert --tls-key --tls-client-ca
#      --tls-client-any-certificate` (client certificates from no trusted CA, C included, pass
#      the handshake; only the binding judges them) with three routes on 127.0.0.1: /required (JWTs, certificateBound: Required), /optional (JWTs,
#      certificateBound: Optional), /opaque (introspection, certificateBound: Required);
#   2. client.mjs: a bound JWT and a bound opaque token for mtls-client with certificate A at
#      the provider's mTLS token endpoint alias, a bound JWT for mtls-self-client with C, unbound
#      tokens from orders-client, then calls through the gateway with certificate A, B, C or none;
#   3. checks.mjs: PASS/FAIL per case, each naming its RFC 8705 section: the token's
#      cnf.x5t#S256 is A's (mtls-self-client's: C's) thumbprint as openssl computes it; 200 only
#      for the token with its certificate (and an unbound token where the policy is Optional); 401 invalid_token
#      otherwise; the upstream got only the accepted requests;
#   4. portcullis still running, no panic.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
START=$(date +%s)

BIN=${PORTCULLIS_BIN:-$ROOT/target/debug/portcullis}
if [ ! -x "$BIN" ]; then
  echo "no gateway binary at $BIN (build it with cargo build -p portcullis, or set PORTCULLIS_BIN)" >&2
  exit 2
fi
for tool in node npm curl openssl; do
  command -v "$tool" >/dev/null || { echo "$tool is required (the mTLS suite makes its certificates with openssl)" >&2; exit 2; }
done

HARNESS=mtls NPM_CI=${MTLS_NPM_CI:-0}
# shellcheck source=lib/node-harness.sh
source "$ROOT/scripts/lib/node-harness.sh"
npm_deps "$ROOT/tests/mtls"
npm_deps "$ROOT/e2e/oidc"

# --- certificates -------------------------------------------------------------------------------------
PKI="$WORK/pki"
mkdir -p "$PKI"
pki() {
  set -e
  cd "$PKI"
  local ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
  openssl req -x509 "${ec[@]}" -keyout ca.key -out ca.pem -days 2 -subj "/CN=Portcullis mTLS test CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
  leaf() { # name, subject CN, extensions
    openssl req "${ec[@]}" -keyout "$1.key" -out "$1.csr" -subj "/CN=$2"
    printf '%s\n' "$3" >"$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
      -extfile "$1.ext" -out "$1.pem"
  }
  leaf server localhost "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost"
  for c in a b; do
    leaf "client-$c" "mtls-client-$c" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"
  done
  openssl req -x509 "${ec[@]}" -keyout client-c.key -out client-c.pem -days 2 -subj "/CN=mtls-client-c self-signed" \
    -addext "basicConstraints=critical,CA:FALSE" -addext "extendedKeyUsage=clientAuth"
}
(pki) >"$WORK/openssl.log" 2>&1 || die "openssl could not make the test certificates" "$WORK/openssl.log"
# x5t#S256 (RFC 8705 section 3.1) of a certificate, independently of the provider and the client.
x5t() { openssl x509 -in "$1" -outform DER | openssl dgst -sha256 -binary | base64 | tr '+/' '-_' | tr -d '=\n'; }
THUMB_A=$(x5t "$PKI/client-a.pem")
THUMB_B=$(x5t "$PKI/client-b.pem")
THUMB_C=$(x5t "$PKI/client-c.pem")

read -r OIDC_PORT OIDC_ADMIN OIDC_MTLS GW_PORT GW_ADMIN <<<"$(free_ports 5)"
ISSUER="http://127.0.0.1:$OIDC_PORT"
GATEWAY="https://127.0.0.1:$GW_PORT"
RESOURCE=https://api.portcullis.test
OPAQUE=https://opaque.portcullis.test

# --- the OpenID provider ----------------------------------------------------------------------------
(cd "$ROOT/e2e/oidc" && exec env PORT="$OIDC_PORT" ADMIN_PORT="$OIDC_ADMIN" MTLS_PORT="$OIDC_MTLS" \
  MTLS_CERT="$PKI/server.pem" MTLS_KEY="$PKI/server.key" MTLS_CLIENT_CERT="$PKI/client-a.pem" \
  MTLS_SELF_CLIENT_CERT="$PKI/client-c.pem" node provider.mjs) >"$WORK/provider.log" 2>&1 &
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
route() { # name, path prefix, policy
  cat <<EOF
---
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {name: $1, namespace: default}
spec:
  hosts: ["127.0.0.1"]
  policyRef: {name: $3}
  backend: {url: "$UPSTREAM"}
  rules:
    - match: {pathPrefix: $2}
EOF
}
jwt_policy() { # name, certificateBound
  cat <<EOF
---
apiVersion: portcullis.dev/v1alpha1
kind: TokenPolicy
metadata: {name: $1, namespace: default}
spec:
  issuers:
    - issuer: $ISSUER
      audiences: ["$RESOURCE"]
      algorithms: [RS256]
      jwks: {discovery: true}
      certificateBound: $2
EOF
}
{
  jwt_policy mtls-required Required
  jwt_policy mtls-optional Optional
  cat <<EOF
---
apiVersion: v1
kind: Secret
metadata: {name: idp-gateway, namespace: default}
stringData:
  client-id: portcullis-gateway
  client-secret: portcullis-gateway-secret
---
apiVersion: portcullis.dev/v1alpha1
kind: TokenPolicy
metadata: {name: mtls-opaque, namespace: default}
spec:
  issuers:
    - issuer: $ISSUER
      audiences: ["$OPAQUE"]
      introspection:
        endpoint: $ISSUER/token/introspection
        credentialsSecretRef: {name: idp-gateway}
        cacheTTL: 60s
        negativeCacheTTL: 1s
      certificateBound: Required
EOF
  route mtls-required /required mtls-required
  route mtls-optional /optional mtls-optional
  route mtls-opaque /opaque mtls-opaque
} >"$WORK/manifests/mtls.yaml"

"$BIN" standalone --manifests "$WORK/manifests" --listen "127.0.0.1:$GW_PORT" \
  --admin "127.0.0.1:$GW_ADMIN" --events-file - \
  --tls-cert "$PKI/server.pem" --tls-key "$PKI/server.key" --tls-client-ca "$PKI/ca.pem" \
  --tls-client-any-certificate >"$WORK/portcullis.log" 2>&1 &
GW_PID=$!
PIDS+=("$GW_PID")
gateway_ready "$GW_PID" "$GW_ADMIN" 3 \
  || die "portcullis did not become ready with the 3 routes and no errors" \
    "$WORK/config.json" "$WORK/portcullis.log" "$WORK/manifests/mtls.yaml"
echo "== up: provider $ISSUER (mTLS https://127.0.0.1:$OIDC_MTLS), upstream $UPSTREAM, gateway $GATEWAY (admin $GW_ADMIN), work dir $WORK"

# --- the client and the checks ---------------------------------------------------------------------
echo
echo "== client.mjs (oauth4webapi + undici with client certificates, certificate-bound tokens)"
(cd "$ROOT/tests/mtls" && env ISSUER="$ISSUER" RESOURCE="$RESOURCE" OPAQUE_RESOURCE="$OPAQUE" \
  API_URL="$GATEWAY" CA="$PKI/ca.pem" \
  CERT_A="$PKI/client-a.pem" KEY_A="$PKI/client-a.key" CERT_B="$PKI/client-b.pem" KEY_B="$PKI/client-b.key" \
  CERT_C="$PKI/client-c.pem" KEY_C="$PKI/client-c.key" \
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
THUMB_A="$THUMB_A" THUMB_B="$THUMB_B" THUMB_C="$THUMB_C" node "$ROOT/tests/mtls/checks.mjs" "$WORK/client.json" "$WORK/echo.log" | tee "$WORK/checks.txt"
[ "${PIPESTATUS[0]}" = 0 ] || FAILED+=("$(grep -c '^FAIL' "$WORK/checks.txt") check(s)")

check_gateway_alive

echo
finish mTLS
