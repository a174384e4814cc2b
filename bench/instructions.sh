#!/usr/bin/env bash
# Instructions per proxied request, counted by valgrind's callgrind: repeatable for the
# same binary and inputs whatever else the machine is doing, so it can compare two builds
# where wrk's requests/s on a shared 2-core machine swing by 10%.
#
#   bench/instructions.sh BIN [BIN...]
#
# For each binary: `portcullis standalone` under callgrind with the bench manifests of
# bench/run.sh (RS256 + scope + REVOCATIONS revoked jtis) in front of a real nginx upstream,
# then N1 and N2 keep-alive requests with the same token; the difference of the two
# totals over N2 - N1 is the per-request cost, start-up and shutdown cancelling out.
#
# Environment: N1=200 N2=2200 REVOCATIONS=100 PORT_BASE=18180.
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
N1=${N1:-200}
N2=${N2:-2200}
REVOCATIONS=${REVOCATIONS:-100}
PORT_BASE=${PORT_BASE:-18180}
UP=$PORT_BASE
PROXY=$((PORT_BASE + 1))
ADMIN=$((PORT_BASE + 2))
[ $# -ge 1 ] || { echo "usage: $0 BIN [BIN...]" >&2; exit 2; }
command -v valgrind >/dev/null || { echo "valgrind is required (Debian: valgrind)" >&2; exit 1; }
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$NGINX" ] || { echo "nginx is required (Debian: nginx-light)" >&2; exit 1; }

work=$(mktemp -d /tmp/portcullis-instr.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# The upstream: nginx answering 200 "ok".
mkdir -p "$work/nginx"
cat >"$work/nginx/nginx.conf" <<EOF
daemon off; master_process off; worker_processes 1;
error_log $work/nginx/error.log; pid $work/nginx/nginx.pid;
events { worker_connections 256; }
http { access_log off; client_body_temp_path $work/nginx/b; proxy_temp_path $work/nginx/p;
  fastcgi_temp_path $work/nginx/f; uwsgi_temp_path $work/nginx/u; scgi_temp_path $work/nginx/s;
  server { listen 127.0.0.1:$UP; location / { return 200 "ok"; } } }
EOF
"$NGINX" -p "$work/nginx" -c "$work/nginx/nginx.conf" &
pids+=($!)

# The manifests of bench/run.sh: the quickstart policy with REVOCATIONS revoked jtis.
mkdir -p "$work/manifests"
python3 - "$ROOT/examples/quickstart/policy.yaml" "$work/manifests/policy.yaml" "$REVOCATIONS" <<'EOF'
import re, sys
src, dst, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
text = open(src).read()
text = re.sub(r"(?m)^  revocations:.*(\n    .*)*", "", text).rstrip() + "\n"
text += "  revocations:\n" + "".join(f"    - jti: other-{i}\n" for i in range(n))
open(dst, "w").write(text)
EOF
cat >"$work/manifests/route.yaml" <<EOF
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {name: bench, namespace: default}
spec:
  hosts: [localhost, 127.0.0.1]
  policyRef: {name: default}
  backend: {url: "http://127.0.0.1:$UP"}
  rules:
    - match: {pathPrefix: /orders, methods: [GET]}
      requiredScopes: [orders:read]
EOF

# N keep-alive requests on one connection; every answer must be 200.
client() {
  python3 - "$PROXY" "$1" "$2" <<'EOF'
import http.client, sys
port, n, token = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
for i in range(n):
    c.request("GET", "/orders/42", headers={"Host": "localhost", "Authorization": "Bearer " + token})
    r = c.getresponse(); r.read()
    if r.status != 200:
        sys.exit(f"request {i}: status {r.status}")
EOF
}

# Total instructions of one standalone run serving N requests.
run() {
  local bin=$1 n=$2 out=$3
  valgrind --tool=callgrind --callgrind-out-file="$out" --trace-children=no \
    "$bin" standalone --manifests "$work/manifests" --listen "127.0.0.1:$PROXY" \
    --admin "127.0.0.1:$ADMIN" >"$out.log" 2>&1 &
  local pid=$!
  for _ in $(seq 600); do
    curl -fs "http://127.0.0.1:$ADMIN/readyz" >/dev/null 2>&1 && break
    kill -0 "$pid" 2>/dev/null || { cat "$out.log" >&2; exit 1; }
    sleep 0.1
  done
  client "$n" "$TOKEN"
  kill -INT "$pid"
  wait "$pid" || true
  sed -n 's/^summary: *//p; s/^totals: *//p' "$out" | head -1
}

printf '%-50s %12s %12s %16s\n' binary "Ir($N1)" "Ir($N2)" "Ir/request"
for bin in "$@"; do
  TOKEN=$("$bin" token mint --key "$ROOT/examples/quickstart/dev-private.pem" --sub bench \
    --scope orders:read --ttl 1h --jti bench-token)
  a=$(run "$bin" "$N1" "$work/a.out")
  b=$(run "$bin" "$N2" "$work/b.out")
  printf '%-50s %12s %12s %16s\n' "$bin" "$a" "$b" "$(( (b - a) / (N2 - N1) ))"
done
