#!/usr/bin/env bash
# Side-by-side proxy benchmark, run by hand (not in CI). See bench/README.md for every row.
#
#   direct     wrk -> upstream (nginx `return 200 "ok"`, 1 worker)
#   nginx      wrk -> nginx proxy_pass, no auth -> upstream
#   haproxy    wrk -> HAProxy jwt_verify RS256 (+ alg, iss, aud, exp checks) -> upstream
#   portcullis wrk -> portcullis standalone: RS256 + scope + ~100 revocations -> upstream
#
# Sections (all in one run, same machine, same wrk settings):
#   saturation  one repeated token, wrk at full speed, every target
#   tokens      TOKENS distinct tokens round-robin (wrk + Lua): HAProxy, Portcullis, and
#               Portcullis with a 1-entry token cache (every request verifies a signature)
#   percore     the proxy pinned to CPU 0 (one worker/thread), wrk and upstream on CPU 1
#   latency     a fixed moderate RATE (vegeta, constant rate): p50/p99 and added over direct
# Peak RSS (VmHWM) of every server, and Portcullis' idle RSS before its first request.
#
# Environment:
#   DURATION=15s  CONNECTIONS=64  THREADS=2  WARMUP=3s   wrk settings
#   RATE=2000  LATENCY_DURATION=10s  constant-rate run (requests/s, length)
#   TOKENS=10000                    distinct tokens for the `tokens` section
#   REVOCATIONS=100                 revocation entries (other jtis) in the Portcullis policy
#   PORT_BASE=18080                 ports PORT_BASE..PORT_BASE+4 on 127.0.0.1 are used
#   PORTCULLIS_BIN=path             use this binary instead of `cargo build --profile dist`
#   PORTCULLIS_ARGS="--workers 0"   extra flags for every `portcullis standalone` (A/B runs)
#   SKIP_INSTALL=1                  do not install missing tools
#   ONLY="direct nginx haproxy portcullis"   run a subset of targets
#   SECTIONS="saturation tokens percore latency"   run a subset of sections
#   RESULTS_DIR=dir                 where raw output and configs are kept
#                                   (default: a new /tmp/portcullis-bench.XXXXXX)
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DURATION=${DURATION:-15s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
WARMUP=${WARMUP:-3s}
REVOCATIONS=${REVOCATIONS:-100}
PORT_BASE=${PORT_BASE:-18080}
ONLY=${ONLY:-direct nginx haproxy portcullis}
SECTIONS=${SECTIONS:-saturation tokens percore latency}
RATE=${RATE:-2000}
LATENCY_DURATION=${LATENCY_DURATION:-10s}
TOKENS=${TOKENS:-10000}
VEGETA_VERSION=v12.13.0
BENCH_CACHE=${BENCH_CACHE:-$HOME/.cache/portcullis-bench}
export PATH="$BENCH_CACHE/bin:$PATH"

UPSTREAM_PORT=$PORT_BASE
NGINX_PORT=$((PORT_BASE + 1))
HAPROXY_PORT=$((PORT_BASE + 2))
PORTCULLIS_PORT=$((PORT_BASE + 3))
ADMIN_PORT=$((PORT_BASE + 4))

DEV_KEY=$ROOT/examples/quickstart/dev-private.pem
DEV_PUB=$ROOT/examples/quickstart/dev-public.pem
QUICKSTART_POLICY=$ROOT/examples/quickstart/policy.yaml

BENCH_TAG=bench
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
section() { [[ " $SECTIONS " == *" $1 "* ]]; }

# Checks that `curl` with optional Authorization gets the expected status.
expect_status() {
    local want=$1 url=$2 auth=${3:-} code
    if [[ -n $auth ]]; then
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 -H "Authorization: Bearer $auth" "$url" || true)
    else
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$url" || true)
    fi
    [[ $code == "$want" ]] || die "$url answered $code, expected $want (${auth:+with}${auth:-without} token)"
}

# The token with one signature character changed (a middle one: all six bits are data).
tamper() {
    local t=$1 i=$((${#1} - 10)) r=A
    [[ ${t:i:1} == A ]] && r=B
    echo "${t:0:i}$r${t:i+1}"
}

# Stops one process we started and waits for it, so the next stage has the CPUs.
stop() {
    kill -TERM "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# --- tools ------------------------------------------------------------------------------------

install_tools() {
    local missing=()
    command -v nginx >/dev/null || missing+=(nginx)
    command -v haproxy >/dev/null || missing+=(haproxy)
    command -v wrk >/dev/null || missing+=(wrk)
    command -v curl >/dev/null || missing+=(curl)
    command -v pgrep >/dev/null || missing+=(procps)
    command -v openssl >/dev/null || missing+=(openssl)
    command -v taskset >/dev/null || missing+=(util-linux)
    command -v python3 >/dev/null || missing+=(python3)
    if ! command -v vegeta >/dev/null; then
        [[ ${SKIP_INSTALL:-} == 1 ]] && die "missing: vegeta (and SKIP_INSTALL=1)"
        command -v go >/dev/null || die "vegeta is built with go (go install); install Go"
        log "building vegeta $VEGETA_VERSION (constant-rate load) into $BENCH_CACHE/bin"
        GOBIN=$BENCH_CACHE/bin go install "github.com/tsenart/vegeta/v12@$VEGETA_VERSION" >&2
    fi
    apt_install "${missing[@]}"
}

check_haproxy_version() {
    local v major minor
    v=$(haproxy -v 2>/dev/null | sed -n 's/^HAProxy version \([0-9]*\.[0-9]*\).*/\1/p')
    major=${v%%.*}
    minor=${v#*.}
    [[ -n $v ]] || die "cannot read the HAProxy version"
    if ((major < 2 || (major == 2 && minor < 5))); then
        die "HAProxy $v has no jwt_verify (needs >= 2.5); Debian 12 ships 2.6"
    fi
    # Not `haproxy -vv | grep -q`: with pipefail, grep closing early fails the pipe.
    [[ $(haproxy -vv 2>/dev/null) == *USE_OPENSSL=1* ]] || die "HAProxy built without OpenSSL: no jwt_verify"
    log "haproxy $v, $(nginx -v 2>&1 | sed 's/^nginx version: //'), $(wrk -v 2>&1 | awk 'NR == 1 {print $1, $2}')"
}

# A token for the quickstart issuer: scope orders:read, one hour. `portcullis token mint`
# refuses non-dev keys; the quickstart key is dev-only.
mint_token() {
    local token
    if token=$("$PORTCULLIS_BIN" token mint --key "$DEV_KEY" --sub bench \
        --scope orders:read --ttl 1h --jti bench-token 2>"$RESULTS_DIR/mint.log"); then
        echo "$token"
        return
    fi
    # Only while `token` is not wired into the binary: the same claims, signed with openssl.
    log "WARNING: 'portcullis token mint' failed ($(head -c 200 "$RESULTS_DIR/mint.log")); minting with openssl instead"
    local now header claims b64url
    b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
    now=$(date +%s)
    header=$(printf '{"alg":"RS256","typ":"JWT","kid":"dev-1"}' | b64url)
    claims=$(printf '{"iss":"https://issuer.portcullis.local","sub":"bench","aud":"quickstart","iat":%d,"exp":%d,"jti":"bench-token","scope":"orders:read"}' \
        "$now" $((now + 3600)) | b64url)
    grep -v '^#' "$DEV_KEY" >"$RESULTS_DIR/dev-key-nocomment.pem"
    echo "$header.$claims.$(printf '%s' "$header.$claims" |
        openssl dgst -sha256 -sign "$RESULTS_DIR/dev-key-nocomment.pem" -binary | b64url)"
}

# --- configs ----------------------------------------------------------------------------------

write_nginx_configs() {
    local dir
    for dir in nginx-upstream nginx-proxy; do
        mkdir -p "$RESULTS_DIR/$dir/tmp"
    done
    # Shared settings: no logs, temp files in our folder, keep-alive without a request cap
    # (nginx closes a keep-alive connection after 1000 requests by default).
    local common="
    access_log off;
    client_body_temp_path @TMP@/body;
    proxy_temp_path @TMP@/proxy;
    fastcgi_temp_path @TMP@/fastcgi;
    uwsgi_temp_path @TMP@/uwsgi;
    scgi_temp_path @TMP@/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 75s;"
    local user=""
    ((EUID == 0)) && user="user root;"

    cat >"$RESULTS_DIR/nginx-upstream/nginx.conf" <<EOF
$user
worker_processes 1;
pid $RESULTS_DIR/nginx-upstream/nginx.pid;
error_log $RESULTS_DIR/nginx-upstream/error.log warn;
events { worker_connections 4096; }
http {
    ${common//@TMP@/$RESULTS_DIR/nginx-upstream/tmp}
    server {
        listen 127.0.0.1:$UPSTREAM_PORT backlog=4096;
        location / {
            default_type text/plain;
            return 200 "ok\n";
        }
    }
}
EOF

    # nginx-auto.conf: a worker per CPU; nginx-1.conf: one worker, for the per-core row.
    local workers
    for workers in auto 1; do
    cat >"$RESULTS_DIR/nginx-proxy/nginx-$workers.conf" <<EOF
$user
worker_processes $workers;
pid $RESULTS_DIR/nginx-proxy/nginx.pid;
error_log $RESULTS_DIR/nginx-proxy/error.log warn;
events { worker_connections 4096; }
http {
    ${common//@TMP@/$RESULTS_DIR/nginx-proxy/tmp}
    upstream backend {
        server 127.0.0.1:$UPSTREAM_PORT;
        keepalive 128;
        keepalive_requests 100000000;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT backlog=4096;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
    done
}

write_haproxy_config() {
    # The checks of HAProxy's own JWT walkthrough: alg pinned to RS256, issuer, audience,
    # signature with the public key, expiry. HAProxy has no scopes or revocation list.
    # haproxy-auto.cfg: nbthread defaults to the CPUs HAProxy may run on, like nginx's
    # "worker_processes auto"; haproxy-1.cfg: one thread, for the per-core row.
    local threads nbthread
    for threads in auto 1; do
    nbthread=""
    [[ $threads == 1 ]] && nbthread="nbthread 1"
    cat >"$RESULTS_DIR/haproxy-$threads.cfg" <<EOF
global
    maxconn 4096
    $nbthread

defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    option http-keep-alive
    http-reuse always

frontend bench
    bind 127.0.0.1:$HAPROXY_PORT
    http-request set-var(txn.bearer) http_auth_bearer
    http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('$.alg')
    http-request set-var(txn.iss) var(txn.bearer),jwt_payload_query('$.iss')
    http-request set-var(txn.aud) var(txn.bearer),jwt_payload_query('$.aud')
    http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('$.exp','int')
    http-request set-var(txn.now) date()
    http-request deny status 401 unless { var(txn.alg) -m str RS256 }
    http-request deny status 401 unless { var(txn.iss) -m str https://issuer.portcullis.local }
    http-request deny status 401 unless { var(txn.aud) -m str quickstart }
    http-request deny status 401 unless { var(txn.bearer),jwt_verify(txn.alg,"$DEV_PUB") -m int 1 }
    http-request deny status 401 unless { var(txn.exp),sub(txn.now) -m int gt 0 }
    default_backend upstream

backend upstream
    server up 127.0.0.1:$UPSTREAM_PORT
EOF
    done
}

write_portcullis_manifests() {
    local dir=$RESULTS_DIR/manifests i
    mkdir -p "$dir"
    # The quickstart policy (same issuer, audience, JWKS), with REVOCATIONS entries for
    # other tokens' jtis in place of its empty list.
    grep -q '^  revocations: \[\]$' "$QUICKSTART_POLICY" ||
        die "$QUICKSTART_POLICY has no '  revocations: []' line to replace"
    {
        sed '/^  revocations: \[\]$/d' "$QUICKSTART_POLICY"
        echo "  revocations:"
        for ((i = 0; i < REVOCATIONS; i++)); do
            printf '    - jti: bench-revoked-%04d\n' "$i"
        done
    } >"$dir/policy.yaml"
    cat >"$dir/route.yaml" <<EOF
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata:
  name: bench
  namespace: default
spec:
  hosts: [localhost, 127.0.0.1]
  policyRef:
    name: default
  backend:
    url: "http://127.0.0.1:$UPSTREAM_PORT"
  rules:
    - match:
        pathPrefix: /orders
        methods: [GET]
      requiredScopes: [orders:read]
EOF
}

# --- measuring --------------------------------------------------------------------------------

# Per row: requests/s, wrk's p50/p99, peak RSS after the row, non-2xx, socket errors, notes.
declare -A RPS P50 P99 RSS NON2XX ERRS NOTE
# Per target at the constant rate: p50/p99 in ms, and anything odd.
declare -A LAT50 LAT99 LATNOTE
ROWS=()
IDLE_RSS=""

# The upstream's processes (nginx master + worker), for pinning.
UPSTREAM_PIDS=()

# pin CPUS PID...: moves every thread of the given processes to CPUS.
pin() {
    local cpus=$1 pid
    shift
    for pid in "$@"; do
        taskset -a -cp "$cpus" "$pid" >/dev/null
    done
}

# Token cache hits and misses so far (Portcullis' admin port): "HITS MISSES".
cache_counts() {
    curl -s --max-time 5 "http://127.0.0.1:$ADMIN_PORT/metrics" |
        awk '/^portcullis_token_cache_hits_total / {h = $2} /^portcullis_token_cache_misses_total / {m = $2}
             END {printf "%d %d\n", h, m}'
}

# run_wrk ROW PORT PID [CPUS] [tokens]: warm up, measure, record. CPUS pins wrk; `tokens`
# sends the TOKENS distinct tokens round-robin instead of the one token.
run_wrk() {
    local row=$1 port=$2 pid=$3 cpus=${4:-} mode=${5:-} out=$RESULTS_DIR/wrk-$1.txt
    local url="http://127.0.0.1:$port/orders"
    local args=(-t "$THREADS" -c "$CONNECTIONS") extra=() runner=()
    [[ -n $cpus ]] && runner=(taskset -c "$cpus")
    if [[ $mode == tokens ]]; then
        args+=(-s "$ROOT/bench/tokens.lua")
        extra=(-- "$TOKENS_FILE" "$THREADS")
    else
        args+=(-H "Authorization: Bearer $TOKEN")
    fi
    log "$row: warm-up $WARMUP"
    "${runner[@]}" wrk "${args[@]}" -d "$WARMUP" "$url" "${extra[@]}" >/dev/null
    local before=""
    [[ $row == portcullis* ]] && before=$(cache_counts)
    log "$row: measuring $DURATION ($CONNECTIONS connections, $THREADS threads${cpus:+, wrk on CPU $cpus})"
    "${runner[@]}" wrk "${args[@]}" -d "$DURATION" --latency "$url" "${extra[@]}" >"$out"
    RPS[$row]=$(awk '/^Requests\/sec:/ {print $2}' "$out")
    P50[$row]=$(awk '/^ +50%/ {print $2}' "$out")
    P99[$row]=$(awk '/^ +99%/ {print $2}' "$out")
    NON2XX[$row]=$(awk '/Non-2xx or 3xx responses:/ {print $5}' "$out")
    ERRS[$row]=$(sed -n 's/^ *Socket errors: *//p' "$out")
    [[ -n ${NON2XX[$row]} ]] && NON2XX[$row]="${NON2XX[$row]} (INVALID ROW)"
    RSS[$row]=$(peak_rss_kib "$pid")
    [[ -n ${RPS[$row]} ]] || { cat "$out" >&2; die "$row: could not read wrk's output"; }
    if [[ -n $before ]]; then
        local after
        after=$(cache_counts)
        NOTE[$row]=$(awk -v b="$before" -v a="$after" 'BEGIN {
            split(b, x, " "); split(a, y, " "); h = y[1] - x[1]; m = y[2] - x[2];
            if (h + m > 0) printf "token cache hits %.1f%%", 100 * h / (h + m) }')
    fi
    ROWS+=("$row")
}

# run_rate NAME PORT: a constant RATE for LATENCY_DURATION with vegeta (after a short
# warm-up); records p50/p99 in ms.
run_rate() {
    local name=$1 port=$2 out=$RESULTS_DIR/vegeta-$1.json targets=$RESULTS_DIR/targets-$1.txt
    printf 'GET http://127.0.0.1:%s/orders\nAuthorization: Bearer %s\n' "$port" "$TOKEN" >"$targets"
    vegeta attack -targets="$targets" -rate="$RATE/1s" -duration=2s >/dev/null
    log "$name: $RATE requests/s for $LATENCY_DURATION (vegeta, constant rate)"
    vegeta attack -targets="$targets" -rate="$RATE/1s" -duration="$LATENCY_DURATION" |
        vegeta report -type=json >"$out"
    read -r "LAT50[$name]" "LAT99[$name]" "LATNOTE[$name]" < <(python3 - "$out" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
lat = d["latencies"]
codes = {k: v for k, v in d.get("status_codes", {}).items() if k != "200"}
note = "ok" if not codes and d.get("success", 0) == 1 else "non-200:" + ",".join(f"{k}x{v}" for k, v in codes.items())
print(f'{lat["50th"] / 1e6:.3f} {lat["99th"] / 1e6:.3f} {note}')
PY
)
}

ratio() { awk -v a="${1:-}" -v b="${2:-}" 'BEGIN { if (a == "" || b == "" || b == 0) print "-"; else printf "%.2f", a / b }'; }

print_tables() {
    local direct=${RPS[direct]:-} row rss
    printf '\n%-20s %10s %9s %9s %9s %11s  %s\n' row RPS p50 p99 vs-direct peak-RSS notes
    for row in "${ROWS[@]}"; do
        rss=$(awk -v k="${RSS[$row]}" 'BEGIN {printf "%.1f MiB", k / 1024}')
        printf '%-20s %10s %9s %9s %9s %11s  %s\n' "$row" "${RPS[$row]}" "${P50[$row]}" \
            "${P99[$row]}" "$(ratio "${RPS[$row]}" "$direct")" "$rss" \
            "${NOTE[$row]:-}${NON2XX[$row]:+ NON-2xx: ${NON2XX[$row]}}${ERRS[$row]:+ socket errors: ${ERRS[$row]}}"
    done
    echo
    echo "wrk -d $DURATION -c $CONNECTIONS -t $THREADS --latency; $(nproc) CPUs. *-10k rows: $TOKENS distinct"
    echo "tokens round-robin; *-1core rows: the server pinned to CPU 0, wrk and the upstream on CPU 1."
    echo "peak-RSS: VmHWM after the row, summed over the server's processes (direct: the upstream)."
    if section latency && [[ -n ${LAT50[*]:-} ]]; then
        printf '\nConstant rate %s requests/s for %s (vegeta), one token:\n' "$RATE" "$LATENCY_DURATION"
        printf '%-12s %9s %9s %12s %12s  %s\n' target p50-ms p99-ms added-p50 added-p99 notes
        local name
        for name in direct nginx haproxy portcullis; do
            [[ -n ${LAT50[$name]:-} ]] || continue
            printf '%-12s %9s %9s %12s %12s  %s\n' "$name" "${LAT50[$name]}" "${LAT99[$name]}" \
                "$(awk -v a="${LAT50[$name]}" -v b="${LAT50[direct]:-}" 'BEGIN { if (b == "") print "-"; else printf "%.3f", a - b }')" \
                "$(awk -v a="${LAT99[$name]}" -v b="${LAT99[direct]:-}" 'BEGIN { if (b == "") print "-"; else printf "%.3f", a - b }')" \
                "${LATNOTE[$name]}"
        done
    fi
    echo
    echo "Against the targets (bench/README.md):"
    echo "  portcullis / nginx (no auth)              $(ratio "${RPS[portcullis]:-}" "${RPS[nginx]:-}")   goal >= 1.0"
    echo "  portcullis / haproxy (jwt_verify)         $(ratio "${RPS[portcullis]:-}" "${RPS[haproxy]:-}")   goal >= 1.5"
    echo "  portcullis-10k / portcullis               $(ratio "${RPS[portcullis-10k]:-}" "${RPS[portcullis]:-}")   goal >= 0.8"
    echo "  portcullis-nocache / haproxy-10k          $(ratio "${RPS[portcullis-nocache]:-}" "${RPS[haproxy-10k]:-}")   goal > 1.0"
    echo "  portcullis-1core / nginx-1core            $(ratio "${RPS[portcullis-1core]:-}" "${RPS[nginx-1core]:-}")"
    echo "  added p99 at $RATE/s (ms)                  $(awk -v a="${LAT99[portcullis]:-}" -v b="${LAT99[direct]:-}" 'BEGIN { if (a == "" || b == "") print "-"; else printf "%.3f", a - b }')   goal <= 1"
    echo "  portcullis RSS idle / peak                 ${IDLE_RSS:--} / $(awk -v k="${RSS[portcullis-nocache]:-${RSS[portcullis]:-0}}" 'BEGIN {printf "%.1f MiB", k / 1024}')   goal <= 20 / 40 MiB"
    echo
    echo "Raw output, configs and logs: $RESULTS_DIR"
}

# expect_tokens PORT: the first and last of the many tokens get 200 (they are valid for
# the target's checks, so the tokens rows measure allowed requests).
expect_tokens() {
    expect_status 200 "http://127.0.0.1:$1/orders" "$(head -n 1 "$TOKENS_FILE")"
    expect_status 200 "http://127.0.0.1:$1/orders" "$(tail -n 1 "$TOKENS_FILE")"
}

# --- targets ----------------------------------------------------------------------------------

# start_portcullis NAME [taskset CPUS] -- EXTRA ARGS: starts, checks that it enforces; sets
# STARTED_PID.
start_portcullis() {
    local name=$1
    shift
    local runner=()
    if [[ ${1:-} == taskset ]]; then
        runner=(taskset -c "$2")
        shift 2
    fi
    [[ ${1:-} == -- ]] && shift
    start "$name" env RUST_LOG=warn "${runner[@]}" "$PORTCULLIS_BIN" standalone \
        --manifests "$RESULTS_DIR/manifests" \
        --listen "127.0.0.1:$PORTCULLIS_PORT" --admin "127.0.0.1:$ADMIN_PORT" "$@" ${PORTCULLIS_ARGS:-}
    local pid=$STARTED_PID
    wait_http "http://127.0.0.1:$ADMIN_PORT/readyz" 200 "$pid" "$name"
    # Enforcing, not just passing: no token 401, a broken signature 401, ours 200.
    expect_status 401 "http://127.0.0.1:$PORTCULLIS_PORT/orders"
    expect_status 401 "http://127.0.0.1:$PORTCULLIS_PORT/orders" "$(tamper "$TOKEN")"
    expect_status 200 "http://127.0.0.1:$PORTCULLIS_PORT/orders" "$TOKEN"
    STARTED_PID=$pid
}

# start_haproxy CONFIG [taskset CPUS]: starts, checks that it enforces; sets STARTED_PID.
start_haproxy() {
    local cfg=$RESULTS_DIR/$1.cfg runner=()
    [[ ${2:-} == taskset ]] && runner=(taskset -c "$3")
    haproxy -c -q -f "$cfg" || die "haproxy rejects $cfg"
    start "$1" "${runner[@]}" haproxy -db -f "$cfg"
    local pid=$STARTED_PID
    wait_http "http://127.0.0.1:$HAPROXY_PORT/orders" 401 "$pid" "$1"
    expect_status 200 "http://127.0.0.1:$HAPROXY_PORT/orders" "$TOKEN"
    expect_status 401 "http://127.0.0.1:$HAPROXY_PORT/orders" "$(tamper "$TOKEN")"
    STARTED_PID=$pid
}

# start_nginx WORKERS [taskset CPUS]; sets STARTED_PID.
start_nginx() {
    local runner=()
    [[ ${2:-} == taskset ]] && runner=(taskset -c "$3")
    start "nginx-$1" "${runner[@]}" nginx -p "$RESULTS_DIR/nginx-proxy" \
        -c "$RESULTS_DIR/nginx-proxy/nginx-$1.conf" -g 'daemon off;'
    wait_http "http://127.0.0.1:$NGINX_PORT/orders" 200 "$STARTED_PID" "nginx-$1"
}

# --- main -------------------------------------------------------------------------------------

main() {
    install_tools
    check_haproxy_version
    if [[ -n ${RESULTS_DIR:-} ]]; then
        mkdir -p "$RESULTS_DIR"
    else
        RESULTS_DIR=$(mktemp -d /tmp/portcullis-bench.XXXXXX)
    fi
    RESULTS_DIR=$(cd "$RESULTS_DIR" && pwd)
    chmod 755 "$RESULTS_DIR"
    local port
    for port in "$UPSTREAM_PORT" "$NGINX_PORT" "$HAPROXY_PORT" "$PORTCULLIS_PORT" "$ADMIN_PORT"; do
        port_free "$port" || die "port $port is in use (set PORT_BASE)"
    done
    build_portcullis
    TOKEN=$(mint_token)
    [[ $(tr -cd . <<<"$TOKEN" | wc -c) == 2 ]] || die "minting produced no token"
    TOKENS_FILE=$RESULTS_DIR/tokens.txt
    if section tokens; then
        log "minting $TOKENS tokens"
        "$PORTCULLIS_BIN" token mint --key "$DEV_KEY" --sub bench --scope orders:read \
            --ttl 1h --count "$TOKENS" >"$TOKENS_FILE"
        [[ $(wc -l <"$TOKENS_FILE") == "$TOKENS" ]] || die "minted $(wc -l <"$TOKENS_FILE") tokens, wanted $TOKENS"
    fi
    local cpus
    cpus=$(nproc)
    if section percore && ((cpus < 2)); then
        log "one CPU only: no per-core section"
        SECTIONS=${SECTIONS//percore/}
    fi

    write_nginx_configs
    write_haproxy_config
    write_portcullis_manifests

    start upstream nginx -p "$RESULTS_DIR/nginx-upstream" -c "$RESULTS_DIR/nginx-upstream/nginx.conf" -g 'daemon off;'
    local upstream_pid=$STARTED_PID
    wait_http "http://127.0.0.1:$UPSTREAM_PORT/orders" 200 "$upstream_pid" upstream
    UPSTREAM_PIDS=("$upstream_pid" $(pgrep -P "$upstream_pid" || true))
    local pid

    if wants direct; then
        section saturation && run_wrk direct "$UPSTREAM_PORT" "$upstream_pid"
        section latency && run_rate direct "$UPSTREAM_PORT"
    fi

    if wants nginx && { section saturation || section latency; }; then
        start_nginx auto
        pid=$STARTED_PID
        section saturation && run_wrk nginx "$NGINX_PORT" "$pid"
        section latency && run_rate nginx "$NGINX_PORT"
        stop "$pid"
    fi

    if wants haproxy && { section saturation || section tokens || section latency; }; then
        start_haproxy haproxy-auto
        pid=$STARTED_PID
        section saturation && run_wrk haproxy "$HAPROXY_PORT" "$pid"
        if section tokens; then
            expect_tokens "$HAPROXY_PORT"
            run_wrk haproxy-10k "$HAPROXY_PORT" "$pid" "" tokens
        fi
        section latency && run_rate haproxy "$HAPROXY_PORT"
        stop "$pid"
    fi

    if wants portcullis && { section saturation || section tokens || section latency; }; then
        start_portcullis portcullis
        pid=$STARTED_PID
        IDLE_RSS=$(awk '/^VmRSS:/ {printf "%.1f MiB", $2 / 1024}' "/proc/$pid/status")
        section saturation && run_wrk portcullis "$PORTCULLIS_PORT" "$pid"
        if section tokens; then
            expect_tokens "$PORTCULLIS_PORT"
            run_wrk portcullis-10k "$PORTCULLIS_PORT" "$pid" "" tokens
        fi
        section latency && run_rate portcullis "$PORTCULLIS_PORT"
        stop "$pid"
        if section tokens; then
            # A one-entry token cache and TOKENS tokens round-robin: nearly every request
            # verifies its RS256 signature, as HAProxy's does.
            start_portcullis portcullis-nocache -- --token-cache-size 1
            pid=$STARTED_PID
            expect_tokens "$PORTCULLIS_PORT"
            run_wrk portcullis-nocache "$PORTCULLIS_PORT" "$pid" "" tokens
            stop "$pid"
        fi
    fi

    if section percore; then
        local all="0-$((cpus - 1))"
        pin 1 "${UPSTREAM_PIDS[@]}"
        if wants nginx; then
            start_nginx 1 taskset 0
            pid=$STARTED_PID
            pin 0 "$pid" $(pgrep -P "$pid" || true)
            run_wrk nginx-1core "$NGINX_PORT" "$pid" 1
            stop "$pid"
        fi
        if wants haproxy; then
            start_haproxy haproxy-1 taskset 0
            pid=$STARTED_PID
            run_wrk haproxy-1core "$HAPROXY_PORT" "$pid" 1
            stop "$pid"
        fi
        if wants portcullis; then
            start_portcullis portcullis-1core taskset 0 -- --workers 1
            pid=$STARTED_PID
            run_wrk portcullis-1core "$PORTCULLIS_PORT" "$pid" 1
            stop "$pid"
        fi
        pin "$all" "${UPSTREAM_PIDS[@]}"
    fi

    print_tables
}

main "$@"
