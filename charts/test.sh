#!/usr/bin/env bash
# The Helm chart's tests, against real servers (called by scripts/test.sh after the e2e
# suite; run it alone the same way):
#   1. static: chart CRDs == crds/, every value documented, helm lint, helm template with
#      the default values and with every optional part on (Helm 3, and Helm 4 rendering the
#      same), values.schema.json rejects bad values with a clear message, the Dockerfile's
#      pins, promtool check + test rules (one unit test per alert);
#   2. API server: on the loopback kube-apiserver + etcd of e2e/cluster.sh, CRDs first,
#      then every rendered object through `kubectl apply --dry-run=server`, and the objects
#      as the server returned them checked for pod security, probes, RBAC without
#      wildcards, the proxy's projected token, and flags the real binary accepts;
#   3. live: `helm install` of the chart, a `portcullis controller`
#      running with the controller ServiceAccount's token (so the chart's RBAC must be
#      enough), two `portcullis proxy` with the proxy ServiceAccount's projected-style token
#      (audience portcullis), an echo upstream, traffic (allowed, 401, 403, 404, a
#      revocation, a pruned revocation, a broken ApiRoute, a refused stream, a real OpenID provider (npm oidc-provider) for discovery keys and introspection,
#      an LLM route on tools/llm-stub with its provider keys in a Secret: chat completions
#      streamed and not, a provider 500, a rate-limited key; a TokenPolicy rate limit and
#      an LLM token budget leased from the controller, its ledger checkpointed to the
#      chart's ConfigMap; the API catalog the controller serves (catalog.enabled): 401, 403,
#      the quickstart route listed for a reader; a Deprecated and a Retired ApiRoute counted
#      by the proxies), and Debian's
#      Prometheus scraping all of it every second with the chart's alert rules loaded;
#      then every dashboard and alert expression is evaluated through its HTTP API.
# Needs: Go (helm, helm4, kube-apiserver, kubectl and etcd are built once into
# ~/.cache/portcullis-e2e), python3, curl, and Debian's `prometheus` package (installed
# here when prometheus or promtool is missing).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
chart=charts/portcullis
tests=charts/tests
release=pc
ns=portcullis-system
started=$SECONDS
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo

step() { echo "== chart: $*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

# --- tools -------------------------------------------------------------------------------
BIN=$(WITH_HELM=1 e2e/install-control-plane.sh)
export PATH="$BIN:$PATH"
for h in helm helm4; do
  command -v $h >/dev/null 2>&1 \
    || fail "no $h in $BIN nor on PATH (with KUBEBUILDER_ASSETS set, put Helm 3 as helm and Helm 4 as helm4 on PATH)"
done
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  $SUDO apt-get update -q && $SUDO apt-get install -y -q --no-install-recommends prometheus
fi
cargo build --locked -q -p portcullis
pc=${CARGO_TARGET_DIR:-$root/target}/debug/portcullis

work=$(mktemp -d)
pids=()
cleanup() {
  local rc=$?
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ -f "$work/cluster/env" ]; then E2E_DIR=$work/cluster e2e/cluster.sh down >/dev/null 2>&1 || true; fi
  if [ "$rc" -ne 0 ]; then
    for f in "$work"/*.log; do [ -f "$f" ] && { echo "--- $f (tail)"; tail -n 15 "$f"; }; done
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- 1. static ---------------------------------------------------------------------------
step "CRDs in $chart/crds are the generated ones in crds/"
diff -r crds "$chart/crds" || fail "$chart/crds drifted from crds/: cp crds/*.yaml $chart/crds/"

step "every value in values.yaml is described in the chart README"
python3 $tests/values_documented.py "$chart/values.yaml" "$chart/README.md"

step "helm lint (default values, and every optional part on)"
helm lint --strict "$chart"
helm lint --strict "$chart" -f $tests/values-all.yaml

step "helm template (default values, and every optional part on)"
helm template "$release" "$chart" -n "$ns" > "$work/default.yaml"
helm template "$release" "$chart" -n "$ns" -f $tests/values-all.yaml > "$work/all.yaml"
helm template "$release" "$chart" -n "$ns" --set controller.tls.enabled=false > "$work/plain.yaml"
grep -q -- '- --plaintext$' "$work/plain.yaml" || fail "controller.tls.enabled=false does not render --plaintext"
grep -q '^kind: Secret$' "$work/plain.yaml" && fail "controller.tls.enabled=false still renders the TLS Secrets"
grep -q -- '- --plaintext$' "$work/default.yaml" && fail "the default values serve the config stream in plain h2c"
grep -q -- '- --controller=https://' "$work/default.yaml" || fail "by default proxies do not reach the controller over https"
if out=$(helm template "$release" "$chart" -n "$ns" --set controller.tls.secretName=mine 2>&1); then
  fail "controller.tls.secretName without proxySecretName was accepted"
fi
grep -qF "controller.tls.proxySecretName" <<<"$out" || fail "secretName without proxySecretName: unclear refusal: $out"
if out=$(helm template "$release" "$chart" -n "$ns" --set catalog.enabled=true 2>&1); then
  fail "catalog.enabled without catalog.policy was accepted"
fi
grep -qF "catalog.policy is required" <<<"$out" || fail "catalog.enabled without catalog.policy: unclear refusal: $out"
grep -qE -- '--catalog-|name: [a-z0-9-]+-catalog$' "$work/default.yaml" && fail "the API catalog is rendered with the default values (must be opt-in)"
kinds() { grep -h '^kind:' "$1" | sort -u | awk '{print $2}' | paste -sd, -; }
echo "default: $(kinds "$work/default.yaml")"
echo "all on:  $(kinds "$work/all.yaml")"
for k in ServiceMonitor PrometheusRule HorizontalPodAutoscaler Ingress; do
  grep -q "^kind: $k\$" "$work/default.yaml" && fail "$k rendered with the default values (must be opt-in)"
  grep -q "^kind: $k\$" "$work/all.yaml" || fail "$k not rendered with $tests/values-all.yaml"
done
grep -q '^kind: ConfigMap$' "$work/default.yaml" || fail "the dashboard ConfigMap is not rendered by default"

step "Helm 4: lints, and renders what Helm 3 renders"
helm4 lint --strict "$chart" >/dev/null
helm4 lint --strict "$chart" -f $tests/values-all.yaml >/dev/null
for cfg in default all; do
  args=(); [ $cfg = all ] && args=(-f "$tests/values-all.yaml")
  helm4 template "$release" "$chart" -n "$ns" "${args[@]}" > "$work/$cfg.helm4.yaml"
  # Helm 4 separates documents with one more blank line; nothing else may differ but the
  # certificates generated at each render.
  same() { grep -Ev '^ *$|^  (ca|tls)\.(crt|key): ' "$1"; }
  diff <(same "$work/$cfg.yaml") <(same "$work/$cfg.helm4.yaml") \
    || fail "Helm 4 renders the $cfg configuration differently"
done
echo "$(helm4 version --short): same objects as $(helm version --short)"

step "values.schema.json rejects wrong values with a clear message"
expect_rejected() { # message, helm args...
  local want=$1; shift
  local out
  if out=$(helm template "$release" "$chart" "$@" 2>&1); then fail "helm template $* was accepted"; fi
  grep -qF -- "$want" <<<"$out" || fail "helm template $*: expected \"$want\", got: $out"
  if out=$(helm lint "$chart" "$@" 2>&1); then fail "helm lint $* was accepted"; fi
  grep -qF -- "$want" <<<"$out" || fail "helm lint $*: expected \"$want\", got: $out"
  if out=$(helm4 template "$release" "$chart" "$@" 2>&1); then fail "helm4 template $* was accepted"; fi
  grep -qF -- "$want" <<<"$out" || fail "helm4 template $*: expected \"$want\", got: $out"
  echo "rejected $*: $want"
}
expect_rejected "at '/controller/replicas': got string, want integer" --set controller.replicas=two
expect_rejected "additional properties 'replica' not allowed" --set proxy.replica=3
expect_rejected "at '/logFormat'" --set logFormat=xml
expect_rejected "at '/controller/leaseDuration'" --set controller.leaseDuration=10sec
expect_rejected "at '/image/pullPolicy'" --set image.pullPolicy=Sometimes
expect_rejected "at '/controller/quota/configMapName'" --set controller.quota.configMapName=Quota_Ledger
expect_rejected "at '/controller/tls/enabled': got string, want boolean" --set controller.tls.enabled=yes
expect_rejected "at '/catalog/policy'" --set catalog.enabled=true --set catalog.policy=default
expect_rejected "additional properties 'hostname' not allowed" --set 'catalog.ingress.hosts[0].hostname=x'

step "no wildcard in the rendered RBAC"
for f in "$work/default.yaml" "$work/all.yaml"; do
  rbac=$(awk '/^---/{keep=0} /^kind: (ClusterRole|Role)$/{keep=1} keep' "$f")
  [ -n "$rbac" ] || fail "no RBAC rendered in $f"
  if grep -n '\*' <<<"$rbac"; then fail "a wildcard in the rendered RBAC"; fi
done

step "Dockerfile: the pinned toolchain, a numeric non-root USER, the image the chart points at"
channel=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
grep -qx "ARG RUST_VERSION=$channel" Dockerfile || fail "Dockerfile's RUST_VERSION is not rust-toolchain.toml's $channel"
grep -qx 'USER 65532:65532' Dockerfile || fail "Dockerfile: USER must be 65532:65532 (the chart's runAsUser/runAsGroup)"
grep -qx 'ENTRYPOINT \["/portcullis"\]' Dockerfile || fail "Dockerfile: ENTRYPOINT [\"/portcullis\"]"
repo=$(sed -n 's/^  repository: //p' "$chart/values.yaml")
grep -qF "$repo" Dockerfile || fail "Dockerfile does not name the chart's default image $repo"

step "alert rules: promtool check rules + unit tests (files/alerts.yaml, the PrometheusRule's source)"
promtool check rules "$chart/files/alerts.yaml"
promtool test rules $tests/alerts_test.yaml

# --- 2. the API server -------------------------------------------------------------------
step "loopback kube-apiserver + etcd"
env_file=$(E2E_DIR=$work/cluster e2e/cluster.sh up)
# shellcheck disable=SC1090
source "$env_file"
kc() { "$KUBECTL" "$@"; }

step "CRDs first: the chart's, and (test fixture) prometheus-operator's ServiceMonitor/PrometheusRule"
# The chart's crds/ is what `helm install` applies before the templates. The monitoring
# CRDs are not in this bare API server; $tests/monitoring-crds.yaml defines them with the
# upstream field types so the dry-run below really checks the chart's ServiceMonitors and
# PrometheusRule (strict field validation rejects unknown fields).
kc apply -f "$chart/crds" -f $tests/monitoring-crds.yaml >/dev/null
kc wait --for=condition=Established --timeout=30s \
  crd/apiroutes.portcullis.dev crd/tokenpolicies.portcullis.dev \
  crd/servicemonitors.monitoring.coreos.com crd/prometheusrules.monitoring.coreos.com >/dev/null
kc create namespace "$ns" >/dev/null

step "kubectl apply --dry-run=server of every rendered object"
"$pc" controller --help > "$work/help-controller.txt"
"$pc" proxy --help > "$work/help-proxy.txt"
for cfg in default all plain; do
  kc apply --dry-run=server -n "$ns" -f "$work/$cfg.yaml" -o json > "$work/$cfg.json" \
    || fail "the API server refused objects of the $cfg configuration"
  want=Deployment,Service,ServiceAccount,ClusterRole,ClusterRoleBinding,Role,RoleBinding,PodDisruptionBudget,NetworkPolicy,ConfigMap
  [ $cfg != plain ] && want=$want,Secret
  [ $cfg = all ] && want=$want,HorizontalPodAutoscaler,ServiceMonitor,PrometheusRule,Ingress
  echo "$cfg: $(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["items"]))' "$work/$cfg.json") objects accepted"
  python3 $tests/check_rendered.py "$work/$cfg.json" --kinds "$want" \
    --help-controller "$work/help-controller.txt" --help-proxy "$work/help-proxy.txt"
done

step "the rendered PrometheusRule: promtool on the rules as the chart ships them"
python3 - "$work/all.json" "$work/rules.json" <<'PY'
import json, sys
items = json.load(open(sys.argv[1]))["items"]
rule = next(o for o in items if o["kind"] == "PrometheusRule")
json.dump({"groups": rule["spec"]["groups"]}, open(sys.argv[2], "w"), indent=1)
PY
promtool check rules "$work/rules.json"
helm template "$release" "$chart" -n "$ns" --set metrics.prometheusRule.enabled=true \
  --show-only templates/prometheusrule.yaml > "$work/rule-default.yaml"
kc apply --dry-run=server -n "$ns" -f "$work/rule-default.yaml" -o json \
  | python3 -c 'import json,sys; print(json.dumps({"groups": json.load(sys.stdin)["spec"]["groups"]}))' > "$work/rules-default.json"
sed "s#\.\./portcullis/files/alerts\.yaml#$work/rules-default.json#" $tests/alerts_test.yaml > "$work/alerts_test.yaml"
promtool test rules "$work/alerts_test.yaml"

# --- 3. live: real processes, real Prometheus ---------------------------------------------
step "helm install on the API server (every optional part on); a wrong value fails helm install"
if out=$(helm install bad "$chart" -n "$ns" --set controller.replicas=two 2>&1); then fail "helm install took controller.replicas=two"; fi
grep -qF "at '/controller/replicas': got string, want integer" <<<"$out" || fail "helm install: unclear refusal: $out"
helm install "$release" "$chart" -n "$ns" -f $tests/values-all.yaml > "$work/install.txt" \
  || fail "helm install failed: $(cat "$work/install.txt")"
grep -q "STATUS: deployed" "$work/install.txt" || fail "helm install: not deployed"
grep -qF "kubectl apply -f policy.yaml -f route.yaml" "$work/install.txt" || fail "NOTES.txt does not say what to apply next"

step "the config stream's certificates: generated at install, kept by helm upgrade"
# What the Deployments mount: the controller's Secret (tls.crt, tls.key, ca.crt) and the
# proxies' (ca.crt and, with mutual TLS in values-all.yaml, their client pair).
ctl_secret=$release-portcullis-controller-tls
proxy_secret=$release-portcullis-proxy-controller-tls
mkdir -p "$work/tls/ctl" "$work/tls/proxy"
secret_files() { # secret, dir
  for k in ca.crt tls.crt tls.key; do
    kc get secret "$1" -n "$ns" -o "jsonpath={.data.${k//./\\.}}" | base64 -d > "$2/$k"
    [ -s "$2/$k" ] || fail "Secret $1 has no $k"
  done
}
secret_files "$ctl_secret" "$work/tls/ctl"
secret_files "$proxy_secret" "$work/tls/proxy"
cmp -s "$work/tls/ctl/ca.crt" "$work/tls/proxy/ca.crt" || fail "the proxies' ca.crt is not the CA of the controller's certificate"
ctl_dns=$release-portcullis-controller.$ns.svc
openssl verify -CAfile "$work/tls/ctl/ca.crt" "$work/tls/ctl/tls.crt" "$work/tls/proxy/tls.crt" >/dev/null \
  || fail "the generated certificates do not chain to the generated CA"
openssl x509 -in "$work/tls/ctl/tls.crt" -noout -ext subjectAltName | grep -qF "DNS:$ctl_dns" \
  || fail "the controller's certificate does not name $ctl_dns"
before=$(kc get secret "$ctl_secret" "$proxy_secret" -n "$ns" -o jsonpath='{.items[*].data}')
helm upgrade "$release" "$chart" -n "$ns" -f $tests/values-all.yaml > "$work/upgrade.txt" \
  || fail "helm upgrade failed: $(cat "$work/upgrade.txt")"
after=$(kc get secret "$ctl_secret" "$proxy_secret" -n "$ns" -o jsonpath='{.items[*].data}')
[ "$before" = "$after" ] || fail "helm upgrade replaced the config stream's certificates (proxies would stop trusting the controller)"
echo "CA and certificates for $ctl_dns generated at install, unchanged by helm upgrade"
ctl_sa=$release-portcullis-controller
proxy_sa=$release-portcullis-proxy
kc create token "$ctl_sa" -n "$ns" --duration 1h > "$work/controller.token"
kc create token "$proxy_sa" -n "$ns" --audience portcullis --duration 1h > "$work/proxy.token"
# The controller talks to the API server as its ServiceAccount: the chart's RBAC only.
cat > "$work/controller.kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters: [{name: e2e, cluster: {server: "https://127.0.0.1:$API_PORT", insecure-skip-tls-verify: true}}]
users: [{name: controller, user: {tokenFile: "$work/controller.token"}}]
contexts: [{name: e2e, context: {cluster: e2e, user: controller}}]
current-context: e2e
KC

# The flags the Deployments pass, with the addresses and files of this machine instead.
deploy_args() { # component, flag=value overrides...
  python3 - "$work/all.json" "$@" <<'PY'
import json, sys
items = json.load(open(sys.argv[1]))["items"]
comp, overrides = sys.argv[2], dict(a.split("=", 1) for a in sys.argv[3:])
d = next(o for o in items if o["kind"] == "Deployment" and o["metadata"]["labels"]["app.kubernetes.io/component"] == comp)
for a in d["spec"]["template"]["spec"]["containers"][0]["args"]:
    flag = a.split("=", 1)[0]
    print(f"{flag}={overrides[flag]}" if flag in overrides else a)
PY
}
echo_port=$(free_port); c_port=$(free_port); cm_port=$(free_port); cat_port=$(free_port)
p_ports=("$(free_port)" "$(free_port)"); a_ports=("$(free_port)" "$(free_port)")
"$pc" echo --listen "127.0.0.1:$echo_port" 2> "$work/echo.log" & pids+=($!)
# The certificates are the ones helm install generated (the Secrets' files); the
# controller is reached at 127.0.0.1, so the proxies verify the Service's name instead.
mapfile -t cargs < <(deploy_args controller --listen="127.0.0.1:$c_port" --metrics-listen="127.0.0.1:$cm_port" --catalog-listen="127.0.0.1:$cat_port" --prune-interval=1s --lease-duration=3s \
  --advertise-url="https://127.0.0.1:$c_port" --tls-cert="$work/tls/ctl/tls.crt" --tls-key="$work/tls/ctl/tls.key" \
  --tls-client-ca="$work/tls/ctl/ca.crt" --peer-ca="$work/tls/ctl/ca.crt")
echo "controller ${cargs[*]}"
KUBECONFIG=$work/controller.kubeconfig POD_NAME=$release-portcullis-controller-0 POD_NAMESPACE=$ns \
  "$pc" "${cargs[@]}" 2> "$work/controller.log" & pids+=($!)
for i in 0 1; do
  mapfile -t pargs < <(deploy_args proxy --controller="https://127.0.0.1:$c_port" --token-file="$work/proxy.token" \
    --listen="127.0.0.1:${p_ports[$i]}" --admin="127.0.0.1:${a_ports[$i]}" --state-file="$work/proxy-$i.state" \
    --controller-ca="$work/tls/proxy/ca.crt" --controller-client-cert="$work/tls/proxy/tls.crt" \
    --controller-client-key="$work/tls/proxy/tls.key")
  pargs+=(--controller-server-name="$ctl_dns")
  [ "$i" = 0 ] && echo "proxy ${pargs[*]}"
  POD_NAME=$release-portcullis-proxy-$i "$pc" "${pargs[@]}" 2> "$work/proxy-$i.log" & pids+=($!)
done

step "Prometheus on loopback, scraping every second, with the chart's alert rules"
prom_port=$(free_port)
cat > "$work/prometheus.yml" <<YML
global: {scrape_interval: 1s, evaluation_interval: 1s}
rule_files: ["$work/rules.json"]
scrape_configs:
  # The labels a ServiceMonitor gives (job = Service name, namespace, pod).
  - job_name: $release-portcullis-controller
    static_configs:
      - targets: ["127.0.0.1:$cm_port"]
        labels: {namespace: $ns, pod: $release-portcullis-controller-0}
  - job_name: $release-portcullis-proxy-admin
    static_configs:
      - targets: ["127.0.0.1:${a_ports[0]}"]
        labels: {namespace: $ns, pod: $release-portcullis-proxy-0}
      - targets: ["127.0.0.1:${a_ports[1]}"]
        labels: {namespace: $ns, pod: $release-portcullis-proxy-1}
YML
promtool check config "$work/prometheus.yml" >/dev/null
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
  --web.listen-address="127.0.0.1:$prom_port" --log.level=warn 2> "$work/prometheus.log" & pids+=($!)
prom=http://127.0.0.1:$prom_port

wait_for() { # what, seconds, command...
  local what=$1 secs=$2; shift 2
  local end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $end ] || fail "timed out after ${secs}s waiting for $what"
    sleep 0.2
  done
}
for a in "${a_ports[@]}"; do wait_for "proxy ready" 30 curl -fs "http://127.0.0.1:$a/readyz"; done
wait_for "Prometheus ready" 30 curl -fs "$prom/-/ready"
# Every target scraped before anything happens, so each event below lands between samples.
targets_up() { curl -fs "$prom/api/v1/targets" | python3 -c 'import json,sys; t=json.load(sys.stdin)["data"]["activeTargets"]; sys.exit(0 if len(t)==3 and all(x["health"]=="up" for x in t) else 1)'; }
wait_for "3 targets up" 20 targets_up

step "a TokenPolicy and ApiRoute (quickstart) and a broken ApiRoute; Programmed through the chart's RBAC"
app=shop
kc create namespace $app >/dev/null
sed -e "s/namespace: default/namespace: $app/" -e "s/\[localhost\]/[$app.test]/" \
  -e "s#http://127.0.0.1:9000#http://127.0.0.1:$echo_port#" \
  examples/quickstart/policy.yaml examples/quickstart/route.yaml > "$work/app.yaml"
sed -i 's/^apiVersion:/---\napiVersion:/' "$work/app.yaml"
kc apply -f "$work/app.yaml" >/dev/null
kc wait --for=condition=Programmed --timeout=60s -n $app apiroute/orders tokenpolicy/default >/dev/null \
  || fail "ApiRoute/TokenPolicy not Programmed (controller RBAC or TokenReview?)"

step "the API catalog on the controller (catalog.enabled): /healthz, 401 without a token, the quickstart route for a reader"
cat_url=http://127.0.0.1:$cat_port
cat_policy=$(printf '%s\n' "${cargs[@]}" | sed -n 's/^--catalog-policy=//p')
[ "$cat_policy" = "$app/default" ] || fail "the controller Deployment passes --catalog-policy=$cat_policy, not the quickstart's $app/default"
wait_for "the catalog's /healthz" 20 curl -fs "$cat_url/healthz"
s=$(curl -s -o /dev/null -w '%{http_code}' "$cat_url/healthz")
[ "$s" = 200 ] || fail "catalog /healthz answered $s"
s=$(curl -s -o /dev/null -w '%{http_code}' "$cat_url/api/v1/apis")
[ "$s" = 401 ] || fail "catalog /api/v1/apis without a token answered $s, not 401"
cat_tok=$("$pc" token mint --key examples/quickstart/dev-private.pem --sub alice --scope 'catalog:read catalog:all' --ttl 10m)
no_cat_tok=$("$pc" token mint --key examples/quickstart/dev-private.pem --sub bob --scope orders:read --ttl 10m)
s=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $no_cat_tok" "$cat_url/api/v1/apis")
[ "$s" = 403 ] || fail "catalog /api/v1/apis with a token without catalog:read answered $s, not 403"
catalog_lists_orders() {
  [ "$(curl -s -o "$work/catalog.json" -w '%{http_code}' -H "Authorization: Bearer $cat_tok" "$cat_url/api/v1/apis")" = 200 ] || return 1
  python3 - "$work/catalog.json" "$app" orders <<'PY2'
import json, sys
apis = json.load(open(sys.argv[1]))["apis"]
sys.exit(0 if any(a.get("namespace") == sys.argv[2] and a.get("name") == sys.argv[3] for a in apis) else 1)
PY2
}
for _ in $(seq 1 100); do catalog_lists_orders 2>/dev/null && break; sleep 0.2; done
catalog_lists_orders || fail "the catalog does not list $app/orders for a catalog:read token of $cat_policy: $(head -c 600 "$work/catalog.json")"
echo "catalog on :$cat_port: /healthz 200, /api/v1/apis 401 without a token, 403 without catalog:read, lists $app/orders for a catalog:read token"
kc apply -f - >/dev/null <<YML
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {name: broken, namespace: $app}
spec:
  hosts: [broken.test]
  policyRef: {name: no-such-policy}
  backend: {url: "http://127.0.0.1:$echo_port"}
  rules: [{match: {pathPrefix: /}, requiredScopes: [x]}]
YML
wait_for "a Warning Event for the broken ApiRoute (events RBAC)" 30 \
  bash -c "'$KUBECTL' get events.events.k8s.io -n $app --field-selector type=Warning -o name | grep -q ."

step "an LLM ApiRoute (backend.llm) on the stub provider, its keys in a Secret (the chart's RBAC)"
# tools/llm-stub speaks the OpenAI API. It answers the first key, sk-chart-1 (priority 0),
# 429 (retry-after 600 s, so the key stays cooling however slow this machine is): each proxy takes it out of rotation for the cooldown and retries with sk-chart-2,
# so the dashboard's key pool panel shows a cooling key. Model flaky is answered 500.
llm_port=$(free_port)
python3 tools/llm-stub/llm_stub.py --host 127.0.0.1 --port "$llm_port" --keys sk-chart-1,sk-chart-2 \
  --rate-limited-keys sk-chart-1 --retry-after 600 > "$work/llm-stub.out" 2> "$work/llm-stub.log" & pids+=($!)
wait_for "the LLM stub" 20 grep -q "listening on" "$work/llm-stub.out"
kc apply -f - >/dev/null <<YML
apiVersion: v1
kind: Secret
metadata: {name: llm-keys, namespace: $app}
stringData: {limited: sk-chart-1, spare: sk-chart-2}
---
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {name: llm, namespace: $app}
spec:
  hosts: [llm.test]
  policyRef: {name: default}
  backend:
    llm:
      provider: openaiCompatible
      url: "http://127.0.0.1:$llm_port/v1"
      credentials:
        - secretRef: {name: llm-keys, key: limited}
          priority: 0
        - secretRef: {name: llm-keys, key: spare}
          priority: 1
      cooldown: 10m
      models:
        - {name: gpt-4o-mini, providerModel: stub-small}
        - {name: flaky, providerModel: stub-500}
  rules: [{match: {pathPrefix: /v1}}]
YML
kc wait --for=condition=Programmed --timeout=60s -n $app apiroute/llm >/dev/null \
  || fail "the LLM ApiRoute is not Programmed (Secret not readable through the chart's RBAC?): $("$KUBECTL" get apiroute llm -n $app -o jsonpath='{.status.conditions}')"
llm=$("$pc" token mint --key examples/quickstart/dev-private.pem --sub erin --scope 'model:*' --ttl 10m --jti live-llm)
# An OpenAI chat completion through the LLM route; prints the status (000: no answer).
chat() { # port, model, stream (true|false), [file for the body]
  curl -s -N -m 10 -o "${4:-/dev/null}" -w '%{http_code}' -H "Host: llm.test" -H "Authorization: Bearer $llm" \
    -H 'content-type: application/json' \
    -d "{\"model\":\"$2\",\"messages\":[{\"role\":\"user\",\"content\":\"hi there\"}],\"stream\":$3}" \
    "http://127.0.0.1:$1/v1/chat/completions" || true
}
for p in "${p_ports[@]}"; do
  [ "$(chat "$p" gpt-4o-mini false "$work/chat.json")" = 200 ] || fail "chat completion on :$p: $(cat "$work/chat.json")"
  python3 -c 'import json,sys; m=json.load(open(sys.argv[1]))["choices"][0]["message"]["content"]; sys.exit(m != "echo: hi there")' \
    "$work/chat.json" || fail "chat completion on :$p: not the stub's answer: $(cat "$work/chat.json")"
  [ "$(chat "$p" gpt-4o-mini true "$work/chat.sse")" = 200 ] || fail "streamed chat completion on :$p: $(cat "$work/chat.sse")"
  [ "$(grep -v '^[[:space:]]*$' "$work/chat.sse" | tail -n 1 | tr -d '\r')" = "data: [DONE]" ] \
    || fail "the stream on :$p does not end with data: [DONE]: $(tail -c 300 "$work/chat.sse")"
  s=$(chat "$p" flaky false "$work/chat-500.json")
  [[ $s == 5?? ]] || fail "a provider 500 answered $s on :$p: $(cat "$work/chat-500.json")"
done
cooling() {
  for a in "${a_ports[@]}"; do
    curl -fs "http://127.0.0.1:$a/metrics" | grep -Eq '^portcullis_gen_ai_provider_keys\{[^}]*state="cooling"[^}]*\} [1-9]' || return 1
  done
}
wait_for "the rate-limited key out of rotation on both proxies (portcullis_gen_ai_provider_keys)" 10 cooling

step "budgets and rate limits: a rate limit and an LLM token budget per subject, held across both proxies by leases from the controller"
# Two copies of the quickstart policy: one with a rate limit (5 requests a minute per
# subject) for an echo route, one with an LLM token budget (1000 tokens a day per subject)
# for an LLM route on the stub (its key that is not rate limited). The leader checkpoints
# its ledger to the ConfigMap named by --quota-configmap, through the chart's Role.
kc create namespace quota >/dev/null
for pol in limited budgeted; do
  echo "---"; sed -e "s/namespace: default/namespace: quota/" -e "s/name: default/name: $pol/" examples/quickstart/policy.yaml
done > "$work/quota.yaml"
kc apply -f "$work/quota.yaml" >/dev/null
kc patch tokenpolicy limited -n quota --type merge \
  -p '{"spec":{"rateLimits":[{"name":"per-subject","key":"subject","requests":5,"period":"minute"}]}}' >/dev/null
kc patch tokenpolicy budgeted -n quota --type merge \
  -p '{"spec":{"llmBudgets":[{"name":"daily-tokens","key":"subject","tokens":1000,"window":"day"}]}}' >/dev/null
kc apply -f - >/dev/null <<YML
apiVersion: v1
kind: Secret
metadata: {name: llm-keys, namespace: quota}
stringData: {spare: sk-chart-2}
---
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {name: orders, namespace: quota}
spec:
  hosts: [quota.test]
  policyRef: {name: limited}
  backend: {url: "http://127.0.0.1:$echo_port"}
  rules: [{match: {pathPrefix: /orders}, requiredScopes: ["orders:read"]}]
---
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {name: llm, namespace: quota}
spec:
  hosts: [quota-llm.test]
  policyRef: {name: budgeted}
  backend:
    llm:
      provider: openaiCompatible
      url: "http://127.0.0.1:$llm_port/v1"
      credentials: [{secretRef: {name: llm-keys, key: spare}}]
      models: [{name: gpt-4o-mini, providerModel: stub-small}]
  rules: [{match: {pathPrefix: /v1}}]
YML
kc wait --for=condition=Programmed --timeout=60s -n quota tokenpolicy/limited tokenpolicy/budgeted apiroute/orders apiroute/llm >/dev/null \
  || fail "the quota policies and routes are not Programmed: $("$KUBECTL" get tokenpolicies,apiroutes -n quota -o jsonpath='{range .items[*]}{.metadata.name}: {.status.conditions}{"\n"}{end}')"
quota_tok=$("$pc" token mint --key examples/quickstart/dev-private.pem --sub frank --scope orders:read --ttl 10m)
codes=()
for p in "${p_ports[@]}"; do
  for _ in $(seq 1 8); do
    codes+=("$(curl -s -o /dev/null -w '%{http_code}' -H "Host: quota.test" -H "Authorization: Bearer $quota_tok" "http://127.0.0.1:$p/orders")")
  done
done
admitted=$(printf '%s\n' "${codes[@]}" | grep -c '^200$' || true)
refused=$(printf '%s\n' "${codes[@]}" | grep -c '^429$' || true)
# One allowance for both proxies: at most the burst (5), plus one refill (every 12 s).
[ "$admitted" -ge 1 ] && [ "$admitted" -le 6 ] && [ $((admitted + refused)) -eq ${#codes[@]} ] \
  || fail "rate limit of 5 a minute per subject, 16 requests over both proxies: ${codes[*]}"
# 50 words echoed back cut at max_tokens 50: about 100 tokens a call, each reserving its
# body's bytes (about 330) plus 50; so a few calls fit in 1000 tokens, then 429.
words=$(seq -s ' ' 1 50)
budget_chat() { # port
  curl -s -N -m 10 -o /dev/null -w '%{http_code}' -H "Host: quota-llm.test" -H "Authorization: Bearer $llm" \
    -H 'content-type: application/json' \
    -d "{\"model\":\"gpt-4o-mini\",\"messages\":[{\"role\":\"user\",\"content\":\"$words\"}],\"max_tokens\":50,\"stream\":false}" \
    "http://127.0.0.1:$1/v1/chat/completions" || true
}
llm_codes=()
for i in $(seq 0 39); do
  s=$(budget_chat "${p_ports[$((i % 2))]}"); llm_codes+=("$s")
  [ "$s" = 429 ] && break
done
[ "${llm_codes[0]}" = 200 ] && [ "${llm_codes[-1]}" = 429 ] \
  || fail "a budget of 1000 tokens a day per subject: expected 200s, then 429: ${llm_codes[*]}"
quota_cm=$(printf '%s\n' "${cargs[@]}" | sed -n 's/^--quota-configmap=//p')
[ -n "$quota_cm" ] || fail "the controller Deployment passes no --quota-configmap"
wait_for "the quota ledger checkpointed to ConfigMap $ns/$quota_cm (configmaps RBAC)" 60 \
  "$KUBECTL" get configmap "$quota_cm" -n "$ns"
quota_metrics() {
  for a in "${a_ports[@]}"; do
    curl -fs "http://127.0.0.1:$a/metrics" | grep -q '^portcullis_quota_lease_requests_total{' || return 1
  done
  curl -fs "http://127.0.0.1:$cm_port/metrics" | grep -q '^portcullis_controller_quota_checkpoints_total{[^}]*result="ok"'
}
wait_for "quota metrics on both proxies and a successful checkpoint on the controller" 30 quota_metrics

step "API lifecycle: a Deprecated route served with its headers, a Retired one answered 410 Gone, both counted by the proxies"
# Copies of the quickstart route: the dashboard's "API lifecycle" panels and the alert
# PortcullisRetiredRouteStillCalled read the counters these calls (and the steady traffic
# below) move on both proxies.
kc apply -f - >/dev/null <<YML
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {name: legacy, namespace: $app}
spec:
  hosts: [legacy.test]
  policyRef: {name: default}
  backend: {url: "http://127.0.0.1:$echo_port"}
  lifecycle:
    stage: Deprecated
    deprecatedAt: "2025-01-01T00:00:00Z"
    sunsetAt: "2099-01-01T00:00:00Z"
    successor: https://shop.test/v2/orders
  rules: [{match: {pathPrefix: /orders}, requiredScopes: ["orders:read"]}]
---
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {name: gone, namespace: $app}
spec:
  hosts: [gone.test]
  policyRef: {name: default}
  backend: {url: "http://127.0.0.1:$echo_port"}
  lifecycle: {stage: Retired, successor: https://shop.test/v2/orders}
  rules: [{match: {pathPrefix: /orders}, requiredScopes: ["orders:read"]}]
YML
kc wait --for=condition=Programmed --timeout=60s -n $app apiroute/legacy apiroute/gone >/dev/null \
  || fail "the lifecycle ApiRoutes are not Programmed: $("$KUBECTL" get apiroutes legacy gone -n $app -o jsonpath='{range .items[*]}{.metadata.name}: {.status.conditions}{"\n"}{end}')"
# status.stage (the Stage printer column) is the stage in effect, written through the
# chart's RBAC.
wait_for "status.stage Deprecated and Retired" 30 bash -c \
  "[ \"\$('$KUBECTL' get apiroutes legacy gone -n $app -o jsonpath='{.items[*].status.stage}')\" = 'Deprecated Retired' ]"
"$KUBECTL" get apiroutes legacy gone -n $app | grep -q 'Deprecated' || fail "kubectl get apiroutes shows no Stage column"
life_tok=$("$pc" token mint --key examples/quickstart/dev-private.pem --sub erin --scope orders:read --ttl 10m)
lifecycle_served() {
  for p in "${p_ports[@]}"; do
    curl -s -D "$work/legacy.headers" -o /dev/null -H "Host: legacy.test" -H "Authorization: Bearer $life_tok" "http://127.0.0.1:$p/orders" || return 1
    head -n 1 "$work/legacy.headers" | grep -q ' 200' && grep -qi '^deprecation:' "$work/legacy.headers" || return 1
    [ "$(curl -s -o /dev/null -w '%{http_code}' -H "Host: gone.test" -H "Authorization: Bearer $life_tok" "http://127.0.0.1:$p/orders")" = 410 ] || return 1
  done
}
wait_for "the Deprecated route served with a Deprecation header and the Retired one 410 on both proxies" 10 lifecycle_served
lifecycle_metrics() {
  for a in "${a_ports[@]}"; do
    curl -fs "http://127.0.0.1:$a/metrics" > "$work/lifecycle.metrics" || return 1
    grep -Eq "^portcullis_deprecated_requests_total\{[^}]*route=\"$app/legacy\"[^}]*\} [1-9]" "$work/lifecycle.metrics" || return 1
    grep -Eq "^portcullis_deprecated_requests_total\{[^}]*consumer=" "$work/lifecycle.metrics" || return 1
    grep -Eq "^portcullis_retired_requests_total\{[^}]*route=\"$app/gone\"[^}]*\} [1-9]" "$work/lifecycle.metrics" || return 1
  done
}
wait_for "portcullis_deprecated_requests_total{route,consumer} and portcullis_retired_requests_total{route} on both proxies" 10 lifecycle_metrics

step "traffic through both proxies: 200, 401, 403, 404 (and LLM calls in the steady traffic)"
key=examples/quickstart/dev-private.pem
good=$("$pc" token mint --key $key --sub alice --scope orders:read --ttl 10m --jti live-good)
steady=$("$pc" token mint --key $key --sub dave --scope orders:read --ttl 10m --jti live-steady)
scoped=$("$pc" token mint --key $key --sub bob --scope profile --ttl 10m)
expired=$("$pc" token mint --key $key --sub carol --scope orders:read --ttl 5m --issued-ago 20m)
code() { curl -s -o /dev/null -w '%{http_code}' -H "Host: $1" ${3:+-H "Authorization: Bearer $3"} "http://127.0.0.1:$2/orders"; }
# Light steady traffic until the checks end (at most 90 s), so the dashboard's rates and
# ratios have something to show at query time (LLM ones included: tokens, time to first
# token, provider errors).
steady_traffic() {
  local end=$((SECONDS + 90))
  while [ $SECONDS -lt $end ]; do
    for p in "${p_ports[@]}"; do
      code $app.test "$p" "$steady"; code $app.test "$p" "$scoped"; code $app.test "$p"
      code legacy.test "$p" "$steady"; code gone.test "$p" "$steady"
      chat "$p" gpt-4o-mini false; chat "$p" gpt-4o-mini true; chat "$p" flaky false
    done >/dev/null
    sleep 0.2
  done
}
steady_traffic & pids+=($!)
for p in "${p_ports[@]}"; do
  for _ in $(seq 1 20); do [ "$(code $app.test "$p" "$good")" = 200 ] || fail "valid token refused on :$p"; done
  for _ in 1 2 3; do
    [ "$(code $app.test "$p")" = 401 ] || fail "no token: not 401"
    [ "$(code $app.test "$p" "$scoped")" = 403 ] || fail "missing scope: not 403"
    [ "$(code $app.test "$p" "$expired")" = 401 ] || fail "expired: not 401"
    [ "$(code unknown.test "$p" "$good")" = 404 ] || fail "unknown host: not 404"
  done
done
# A stream without a token is refused (portcullis_controller_refused_streams_total), over
# the chart's mutual TLS: the proxies' client certificate and no token. Without that
# certificate there is no TLS session at all, and no cleartext answer either.
ctl_url=https://$ctl_dns:$c_port/v1/stream
tls_curl() { curl -s -o /dev/null -w '%{http_code}' -X POST --resolve "$ctl_dns:$c_port:127.0.0.1" --cacert "$work/tls/proxy/ca.crt" "$@" "$ctl_url" || true; }
[ "$(tls_curl --cert "$work/tls/proxy/tls.crt" --key "$work/tls/proxy/tls.key")" = 401 ] \
  || fail "a config stream without a token was not refused"
[ "$(tls_curl)" = 000 ] || fail "the controller served a client without a certificate (controller.tls.mutual)"
[ "$(curl -s -o /dev/null -w '%{http_code}' -X POST "http://127.0.0.1:$c_port/v1/stream" || true)" = 000 ] \
  || fail "the controller answered plain HTTP on its TLS port"

step "revocations: one enforced on both proxies, one pruned after its expiresAt (patch RBAC)"
soon=$(date -u -d '+3 seconds' +%Y-%m-%dT%H:%M:%SZ)
kc patch tokenpolicy default -n $app --type json \
  -p "[{\"op\":\"add\",\"path\":\"/spec/revocations/-\",\"value\":{\"jti\":\"live-good\"}},{\"op\":\"add\",\"path\":\"/spec/revocations/-\",\"value\":{\"jti\":\"short-lived\",\"expiresAt\":\"$soon\"}}]" >/dev/null
revoked() { for p in "${p_ports[@]}"; do [ "$(code $app.test "$p" "$good")" = 401 ] || return 1; done; }
wait_for "the revocation on both proxies" 10 revoked
pruned() { ! "$KUBECTL" get tokenpolicy default -n $app -o jsonpath='{.spec.revocations}' | grep -q short-lived; }
wait_for "the expired revocation pruned by the leader" 30 pruned
for p in "${p_ports[@]}"; do for _ in 1 2 3; do code $app.test "$p" "$good" >/dev/null; done; done

step "tokens from a real OpenID provider: discovery keys (kept in a Secret: the chart's RBAC) and introspection"
[ -d e2e/oidc/node_modules/oidc-provider ] || (cd e2e/oidc && npm ci --no-audit --no-fund --loglevel=error)
idp_port=$(free_port); idp_admin=$(free_port)
PORT=$idp_port ADMIN_PORT=$idp_admin node e2e/oidc/provider.mjs > "$work/idp.out" 2> "$work/idp.log" & pids+=($!)
wait_for "the OpenID provider" 20 grep -q READY "$work/idp.out"
issuer=http://127.0.0.1:$idp_port
kc create namespace idp >/dev/null
kc apply -f - >/dev/null <<YML
apiVersion: v1
kind: Secret
metadata: {name: idp-gateway, namespace: idp}
stringData: {client-id: portcullis-gateway, client-secret: portcullis-gateway-secret}
---
apiVersion: portcullis.dev/v1alpha1
kind: TokenPolicy
metadata: {name: idp, namespace: idp}
spec:
  issuers:
    - issuer: $issuer
      audiences: [https://api.portcullis.test, https://opaque.portcullis.test]
      algorithms: [RS256]
      jwks: {discovery: true}
      introspection:
        endpoint: $issuer/token/introspection
        credentialsSecretRef: {name: idp-gateway}
        cacheTTL: 2s
---
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {name: orders, namespace: idp}
spec:
  hosts: [idp.test]
  policyRef: {name: idp}
  backend: {url: "http://127.0.0.1:$echo_port"}
  rules: [{match: {pathPrefix: /orders}, requiredScopes: ["orders:read"]}]
YML
kc wait --for=condition=KeysReady --timeout=30s -n idp tokenpolicy/idp >/dev/null \
  || fail "KeysReady: $("$KUBECTL" get tokenpolicy idp -n idp -o jsonpath='{.status.conditions[?(@.type=="KeysReady")].message}')"
kc wait --for=condition=Programmed --timeout=30s -n idp tokenpolicy/idp apiroute/orders >/dev/null \
  || fail "the provider's policy is not Programmed"
idp_token() { curl -fs -u orders-client:orders-client-secret -d grant_type=client_credentials \
  -d scope=orders:read -d "resource=$1" "$issuer/token" | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])'; }
jwt=$(idp_token https://api.portcullis.test)
opaque=$(idp_token https://opaque.portcullis.test)
for p in "${p_ports[@]}"; do
  [ "$(code idp.test "$p" "$jwt")" = 200 ] || fail "a provider JWT refused on :$p"
  [ "$(code idp.test "$p" "$opaque")" = 200 ] || fail "an introspected opaque token refused on :$p"
done
sleep 3 # past cacheTTL: a second introspection call per proxy, for the rate panels
for p in "${p_ports[@]}"; do code idp.test "$p" "$opaque" >/dev/null; done

step "every dashboard and alert expression on Prometheus"
python3 $tests/promql_check.py --prometheus "$prom" --dashboard "$chart/dashboards/portcullis.json" \
  --rules "$work/rules.json" --var namespace=$ns --var pod='.*'

echo "== chart: all checks passed in $((SECONDS - started))s"
