#!/usr/bin/env bash
# The API catalog suite (tests/catalog): the catalog web page of `portcullis standalone
# --catalog-listen` tested in a real browser, Debian's headless Chromium driven by
# puppeteer-core, with axe-core's accessibility audit on every page kind, all on loopback.
#
#   scripts/catalog-tests.sh
#
# Env: PORTCULLIS_BIN (default target/debug/portcullis; this script never builds it),
#      CHROMIUM (default /usr/bin/chromium, Debian's package `chromium`; installed with apt-get
#      when missing, through sudo when not root),
#      CATALOG_ARTIFACTS (where the screenshots go, default target/ci-artifacts/catalog; CI keeps
#      that directory as the run's artifacts: login, list, search, tag-filter, detail,
#      deprecated, llm-detail and forbidden pages, full-page PNG, 1280 px wide),
#      UPDATE_SCREENSHOT=1 (also copy the list screenshot to docs/catalog.png, the README's),
#      CATALOG_NPM_CI=1 (run `npm ci` even when node_modules look current),
#      KEEP_WORK=1 (keep the work directory, logs and manifests, also on success).
#
# What runs:
#   1. `portcullis standalone --catalog-listen --catalog-policy default/catalog` on manifests
#      made here: TokenPolicies (the quickstart's, trusting examples/quickstart/dev-private.pem)
#      in default (`catalog`, for the page's viewers), shop and other; in shop the routes
#      orders (Published), orders-v1 (Deprecated, sunset 2027-06-30, a successor) and
#      assistant (an LLM backend whose provider key is a Secret with a random canary value,
#      and a prompt endpoint); in other secret-api (Private), weather (Public), inventory
#      (Namespaces [shop]) and ledger (Namespaces [billing], a description with HTML in it);
#      the manifests must load with no errors;
#   2. tokens minted with `portcullis token mint`: alice (catalog:read catalog:namespace:shop),
#      one without catalog:read, one with catalog:all;
#   3. browser.mjs: PASS/FAIL per check: the JSON API (visibility, filters, 401/403/404,
#      OpenAPI), then in Chromium the 401 login page, login through its form (303, HttpOnly
#      cookie), the list (alice sees orders, orders-v1, assistant, weather, inventory; never
#      secret-api or ledger), search and filters, an API's detail, the deprecated API's banner,
#      the LLM route's operations, logout, Bearer instead of the cookie, the 403 page;
#      axe-core on the login, list, search, detail, deprecated and LLM pages (any serious or
#      critical violation fails; all are printed); no body ever holds "-----BEGIN", the
#      Secret's value or the viewer's token;
#   4. portcullis still running, no panic, and the Secret's value in none of its logs.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
START=$(date +%s)

BIN=${PORTCULLIS_BIN:-$ROOT/target/debug/portcullis}
if [ ! -x "$BIN" ]; then
  echo "no gateway binary at $BIN (build it with cargo build -p portcullis, or set PORTCULLIS_BIN)" >&2
  exit 2
fi
if ! "$BIN" standalone --help 2>/dev/null | grep -q -- '--catalog-listen'; then
  echo "$BIN has no --catalog-listen (the catalog page): rebuild it" >&2
  exit 2
fi
for tool in node npm curl; do
  command -v "$tool" >/dev/null || { echo "$tool is required" >&2; exit 2; }
done

# Debian's Chromium (no browser download: puppeteer-core drives the system's).
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$CHROMIUM" ]; then
  echo "== installing Debian's chromium (headless browser for the catalog page)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  if ! { $SUDO apt-get update -q && $SUDO apt-get install -y -q --no-install-recommends chromium; }; then
    echo "could not install chromium" >&2
    exit 2
  fi
  CHROMIUM=/usr/bin/chromium
fi

HARNESS=catalog NPM_CI=${CATALOG_NPM_CI:-0}
# shellcheck source=lib/node-harness.sh
source "$ROOT/scripts/lib/node-harness.sh"
npm_deps "$ROOT/tests/catalog" # puppeteer-core: no browser download, it drives $CHROMIUM

ARTIFACTS=${CATALOG_ARTIFACTS:-$ROOT/target/ci-artifacts/catalog}
rm -f "$ARTIFACTS"/*.png # only this suite's old screenshots
mkdir -p "$ARTIFACTS"

read -r GW_PORT GW_ADMIN CAT_PORT <<<"$(free_ports 3)"
CATALOG="http://127.0.0.1:$CAT_PORT"
CANARY="sk-catalog-canary-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"

# --- manifests ---------------------------------------------------------------------------------------
mkdir -p "$WORK/manifests"
policy() { # name namespace: the quickstart's TokenPolicy (dev-private.pem's tokens)
  sed -e "0,/^  name: default$/s//  name: $1/" -e "0,/^  namespace: default$/s//  namespace: $2/" \
    "$ROOT/examples/quickstart/policy.yaml"
}
{
  policy catalog default
  echo ---
  policy default shop
  echo ---
  policy default other
} >"$WORK/manifests/policies.yaml"
cat >"$WORK/manifests/shop.yaml" <<EOF
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {name: orders, namespace: shop}
spec:
  hosts: [orders.shop.test]
  policyRef: {name: default}
  backend: {url: "http://127.0.0.1:9"}
  description: Create, read and cancel the orders of the shop's customers.
  tags: [orders, commerce]
  owner: {team: Order Management, contact: orders-team@shop.test}
  lifecycle: {stage: Published}
  rules:
    - match: {pathPrefix: /orders, methods: [GET]}
      requiredScopes: [orders:read]
    - match: {pathPrefix: /orders, methods: [POST, DELETE]}
      requiredScopes: [orders:write]
    - match: {path: /health}
      auth: none
---
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {name: orders-v1, namespace: shop}
spec:
  hosts: [v1.orders.shop.test]
  policyRef: {name: default}
  backend: {url: "http://127.0.0.1:9"}
  description: The first version of the orders API, kept for old clients.
  tags: [orders, legacy]
  owner: {team: Order Management, contact: orders-team@shop.test}
  lifecycle:
    stage: Deprecated
    deprecatedAt: "2026-01-01T00:00:00Z"
    sunsetAt: "2027-06-30T00:00:00Z"
    successor: https://orders.shop.test/v2
  rules:
    - match: {pathPrefix: /v1/orders, methods: [GET]}
      requiredScopes: [orders:read]
---
apiVersion: v1
kind: Secret
metadata: {name: llm-keys, namespace: shop}
stringData:
  primary: $CANARY
---
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {name: assistant, namespace: shop}
spec:
  hosts: [ai.shop.test]
  policyRef: {name: default}
  description: Chat completions and a summarizing prompt for the support tools.
  tags: [ai]
  owner: {team: Support Tools, contact: "#support-tools"}
  backend:
    llm:
      provider: openaiCompatible
      url: http://127.0.0.1:9/v1
      credentials:
        - secretRef: {name: llm-keys, key: primary}
      models:
        - name: gpt-4o-mini
          providerModel: stub-small
  rules:
    - match: {pathPrefix: /v1}
    - match: {path: /prompts/summarize, methods: [POST]}
      prompt:
        model: gpt-4o-mini
        messages:
          - {role: system, content: "You summarize text."}
          - {role: user, content: "Summarize: {{text}}"}
        variables:
          type: object
          required: [text]
          properties:
            text: {type: string, maxLength: 10000, description: The text to summarize}
        maxTokens: 256
EOF
cat >"$WORK/manifests/other.yaml" <<EOF
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {name: secret-api, namespace: other}
spec:
  hosts: [secret.other.test]
  policyRef: {name: default}
  backend: {url: "http://127.0.0.1:9"}
  description: Internal to the other team; its catalog visibility is Private.
  catalog: {visibility: Private}
  rules:
    - match: {pathPrefix: /}
      requiredScopes: [secret:read]
---
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {name: weather, namespace: other}
spec:
  hosts: [weather.other.test]
  policyRef: {name: default}
  backend: {url: "http://127.0.0.1:9"}
  description: Forecasts by city, up to ten days ahead.
  tags: [weather]
  owner: {team: Weather, contact: https://weather.other.test/team}
  catalog: {visibility: Public}
  rules:
    - match: {pathPrefix: /forecast, methods: [GET]}
      requiredScopes: [weather:read]
---
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {name: inventory, namespace: other}
spec:
  hosts: [inventory.other.test]
  policyRef: {name: default}
  backend: {url: "http://127.0.0.1:9"}
  description: Stock levels, shared with the shop team.
  tags: [stock]
  catalog: {visibility: Namespaces, namespaces: [shop]}
  rules:
    - match: {pathPrefix: /stock, methods: [GET]}
      requiredScopes: [stock:read]
---
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {name: ledger, namespace: other}
spec:
  hosts: [ledger.other.test]
  policyRef: {name: default}
  backend: {url: "http://127.0.0.1:9"}
  description: 'Shared with billing only. <img id="xss-probe" src=x onerror="document.title=1">'
  catalog: {visibility: Namespaces, namespaces: [billing]}
  rules:
    - match: {pathPrefix: /ledger}
      requiredScopes: [ledger:read]
EOF
ROUTES=7

# --- the gateway ------------------------------------------------------------------------------------
"$BIN" standalone --manifests "$WORK/manifests" --listen "127.0.0.1:$GW_PORT" --admin "127.0.0.1:$GW_ADMIN" \
  --catalog-listen "127.0.0.1:$CAT_PORT" --catalog-policy default/catalog --events-file - \
  >"$WORK/portcullis.log" 2>&1 &
GW_PID=$!
PIDS+=("$GW_PID")
gateway_ready "$GW_PID" "$GW_ADMIN" "$ROUTES" "$CATALOG/healthz" \
  || die "portcullis did not become ready with $ROUTES routes, no errors and the catalog's /healthz answering 200" \
    "$WORK/config.json" "$WORK/portcullis.log"
echo "== up: gateway 127.0.0.1:$GW_PORT (admin $GW_ADMIN), catalog $CATALOG, work dir $WORK"

# --- tokens -----------------------------------------------------------------------------------------
mint() { # scopes...
  local args=() s
  for s in "$@"; do args+=(--scope "$s"); done
  "$BIN" token mint --key "$ROOT/examples/quickstart/dev-private.pem" --sub alice --ttl 10m "${args[@]}" 2>>"$WORK/mint.err"
}
TOKEN=$(mint catalog:read catalog:namespace:shop) || die "token mint" "$WORK/mint.err"
TOKEN_NOREAD=$(mint orders:read catalog:namespace:shop) || die "token mint" "$WORK/mint.err"
TOKEN_ALL=$(mint catalog:read catalog:all) || die "token mint" "$WORK/mint.err"

# --- the browser ------------------------------------------------------------------------------------
echo
echo "== browser.mjs (puppeteer-core, $("$CHROMIUM" --version 2>/dev/null | head -n1), axe-core)"
(cd "$ROOT/tests/catalog" && env CATALOG_URL="$CATALOG" TOKEN="$TOKEN" TOKEN_NOREAD="$TOKEN_NOREAD" \
  TOKEN_ALL="$TOKEN_ALL" CANARY="$CANARY" CHROMIUM="$CHROMIUM" ARTIFACTS="$ARTIFACTS" \
  timeout 120 node browser.mjs) 2>"$WORK/browser.err" | tee "$WORK/browser.txt"
browser_status=${PIPESTATUS[0]}
if [ "$browser_status" != 0 ]; then
  FAILED+=("browser.mjs: $(grep -c '^FAIL' "$WORK/browser.txt") check(s) failed, exit $browser_status")
  [ -s "$WORK/browser.err" ] && tail -n 20 "$WORK/browser.err"
fi

check_gateway_alive
if grep -q -F -- "$CANARY" "$WORK/portcullis.log"; then
  echo "FAIL the LLM provider key (Secret value) is in the gateway's log or events"
  FAILED+=("provider key in the log")
else
  echo "PASS the LLM provider key is in none of the gateway's logs and events"
fi

if [ "${UPDATE_SCREENSHOT:-0}" = 1 ]; then
  if [ -f "$ARTIFACTS/list.png" ]; then
    mkdir -p "$ROOT/docs"
    cp "$ARTIFACTS/list.png" "$ROOT/docs/catalog.png"
    echo "== docs/catalog.png updated from $ARTIFACTS/list.png"
  else
    FAILED+=("UPDATE_SCREENSHOT=1 but no list screenshot was taken")
  fi
fi

echo
shots=("$ARTIFACTS"/*.png)
[ -e "${shots[0]}" ] || shots=()
echo "== screenshots (${#shots[@]}) in $ARTIFACTS: ${shots[*]##*/}"
finish catalog
