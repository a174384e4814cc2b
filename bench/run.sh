#!/usr/bin/env bash
# Side-by-side proxy benchmark, run by hand (not in CI). See bench/README.md.
#
#   (a) direct     wrk -> upstream (nginx `return 200 "ok"`)
#   (b) nginx      wrk -> nginx proxy_pass, no auth -> upstream
#   (c) haproxy    wrk -> HAProxy jwt_verify RS256 (+ alg, iss, aud, exp checks) -> upstream
#   (d) portcullis wrk -> portcullis standalone: RS256 + scope + ~100 revocations -> upstream
#
# Same machine, same run, same wrk settings, same Authorization header for every target.
# Prints RPS, p50, p99, RPS relative to direct, and the peak RSS (VmHWM) of each server.
#
# Environment:
#   DURATION=15s  CONNECTIONS=64  THREADS=2  WARMUP=3s   wrk settings
#   REVOCATIONS=100                 revocation entries (other jtis) in the Portcullis policy
#   PORT_BASE=18080                 ports PORT_BASE..PORT_BASE+4 on 127.0.0.1 are used
#   PORTCULLIS_BIN=path             use this binary instead of `cargo build --release`
#   SKIP_INSTALL=1                  do not apt-get install missing tools
#   ONLY="direct nginx haproxy portcullis"   run a subset
#   RESULTS_DIR=dir                 where raw wrk output and configs are kept
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

UPSTREAM_PORT=$PORT_BASE
NGINX_PORT=$((PORT_BASE + 1))
HAPROXY_PORT=$((PORT_BASE + 2))
PORTCULLIS_PORT=$((PORT_BASE + 3))
ADMIN_PORT=$((PORT_BASE + 4))

DEV_KEY=$ROOT/examples/quickstart/dev-private.pem
DEV_PUB=$ROOT/examples/quickstart/dev-public.pem
QUICKSTART_POLICY=$ROOT/examples/quickstart/policy.yaml

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] error: %s\n' "$*" >&2; exit 1; }
wants() { [[ " $ONLY " == *" $1 "* ]]; }

# --- processes we start, and cleanup --------------------------------------------------------

PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Starts "$@" in the background, logging to $RESULTS_DIR/$name.log; sets STARTED_PID.
start() {
    local name=$1
    shift
    "$@" >"$RESULTS_DIR/$name.log" 2>&1 &
    STARTED_PID=$!
    PIDS+=("$STARTED_PID")
}

# Waits until `curl URL` answers with status $2 (default 200) or the process dies.
wait_http() {
    local url=$1 want=${2:-200} pid=$3 name=$4 code
    for _ in $(seq 100); do
        if ! kill -0 "$pid" 2>/dev/null; then
            cat "$RESULTS_DIR/$name.log" >&2 || true
            die "$name exited during startup (log above)"
        fi
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" || true)
        [[ $code == "$want" ]] && return 0
        sleep 0.1
    done
    cat "$RESULTS_DIR/$name.log" >&2 || true
    die "$name did not answer $url with $want within 10s (last: ${code:-none})"
}

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

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Peak RSS in KiB of a process and its children (nginx: master + workers), from VmHWM.
peak_rss_kib() {
    local total=0 pid hwm
    for pid in "$1" $(pgrep -P "$1" 2>/dev/null || true); do
        hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
        total=$((total + ${hwm:-0}))
    done
    echo "$total"
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
    ((${#missing[@]} == 0)) && return 0
    [[ ${SKIP_INSTALL:-} == 1 ]] && die "missing: ${missing[*]} (and SKIP_INSTALL=1)"
    local sudo=()
    ((EUID == 0)) || sudo=(sudo)
    log "installing ${missing[*]} from Debian"
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
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

build_portcullis() {
    if [[ -n ${PORTCULLIS_BIN:-} ]]; then
        [[ -x $PORTCULLIS_BIN ]] || die "PORTCULLIS_BIN=$PORTCULLIS_BIN is not executable"
        return
    fi
    log "building portcullis (release)"
    (cd "$ROOT" && cargo build --release -p portcullis) >&2
    PORTCULLIS_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/portcullis
    [[ -x $PORTCULLIS_BIN ]] || die "no binary at $PORTCULLIS_BIN after the build"
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

    cat >"$RESULTS_DIR/nginx-proxy/nginx.conf" <<EOF
$user
worker_processes auto;
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
}

write_haproxy_config() {
    # The checks of HAProxy's own JWT walkthrough: alg pinned to RS256, issuer, audience,
    # signature with the public key, expiry. HAProxy has no scopes or revocation list.
    cat >"$RESULTS_DIR/haproxy.cfg" <<EOF
global
    maxconn 4096
    # nbthread defaults to the number of CPUs, like nginx's "worker_processes auto".

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

declare -A RPS P50 P99 RSS NON2XX ERRS

# run_wrk NAME PORT PID: warm up, measure, record.
run_wrk() {
    local name=$1 port=$2 pid=$3 out=$RESULTS_DIR/wrk-$1.txt
    local url="http://127.0.0.1:$port/orders"
    local args=(-t "$THREADS" -c "$CONNECTIONS" -H "Authorization: Bearer $TOKEN")
    log "$name: warm-up $WARMUP"
    wrk "${args[@]}" -d "$WARMUP" "$url" >/dev/null
    log "$name: measuring $DURATION ($CONNECTIONS connections, $THREADS threads)"
    wrk "${args[@]}" -d "$DURATION" --latency "$url" >"$out"
    RPS[$name]=$(awk '/^Requests\/sec:/ {print $2}' "$out")
    P50[$name]=$(awk '/^ +50%/ {print $2}' "$out")
    P99[$name]=$(awk '/^ +99%/ {print $2}' "$out")
    NON2XX[$name]=$(awk '/Non-2xx or 3xx responses:/ {print $5}' "$out")
    ERRS[$name]=$(sed -n 's/^ *Socket errors: *//p' "$out")
    RSS[$name]=$(peak_rss_kib "$pid")
    [[ -n ${RPS[$name]} ]] || { cat "$out" >&2; die "$name: could not read wrk's output"; }
}

print_table() {
    local direct=${RPS[direct]:-} name ratio rss
    printf '\n%-11s %12s %10s %10s %10s %12s  %s\n' name RPS p50 p99 vs-direct peak-RSS notes
    for name in direct nginx haproxy portcullis; do
        [[ -n ${RPS[$name]:-} ]] || continue
        ratio=-
        [[ -n $direct ]] && ratio=$(awk -v a="${RPS[$name]}" -v b="$direct" 'BEGIN {printf "%.2f", a / b}')
        rss=$(awk -v k="${RSS[$name]}" 'BEGIN {printf "%.1f MiB", k / 1024}')
        printf '%-11s %12s %10s %10s %10s %12s  %s\n' "$name" "${RPS[$name]}" "${P50[$name]}" \
            "${P99[$name]}" "$ratio" "$rss" \
            "${NON2XX[$name]:+NON-2xx: ${NON2XX[$name]} }${ERRS[$name]:+socket errors: ${ERRS[$name]}}"
    done
    echo
    echo "wrk -d $DURATION -c $CONNECTIONS -t $THREADS --latency, one Authorization header for all; $(nproc) CPUs."
    echo "peak-RSS: VmHWM summed over the server's processes (direct: the upstream nginx)."
    echo "Raw wrk output, configs and logs: $RESULTS_DIR"
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
    build_portcullis # also mints the token
    TOKEN=$(mint_token)
    [[ $(tr -cd . <<<"$TOKEN" | wc -c) == 2 ]] || die "minting produced no token"

    write_nginx_configs
    write_haproxy_config
    write_portcullis_manifests

    start upstream nginx -p "$RESULTS_DIR/nginx-upstream" -c "$RESULTS_DIR/nginx-upstream/nginx.conf" -g 'daemon off;'
    local upstream_pid=$STARTED_PID
    wait_http "http://127.0.0.1:$UPSTREAM_PORT/orders" 200 "$upstream_pid" upstream

    if wants direct; then
        run_wrk direct "$UPSTREAM_PORT" "$upstream_pid"
    fi

    if wants nginx; then
        start nginx nginx -p "$RESULTS_DIR/nginx-proxy" -c "$RESULTS_DIR/nginx-proxy/nginx.conf" -g 'daemon off;'
        local nginx_pid=$STARTED_PID
        wait_http "http://127.0.0.1:$NGINX_PORT/orders" 200 "$nginx_pid" nginx
        run_wrk nginx "$NGINX_PORT" "$nginx_pid"
        stop "$nginx_pid"
    fi

    if wants haproxy; then
        haproxy -c -q -f "$RESULTS_DIR/haproxy.cfg" || die "haproxy rejects $RESULTS_DIR/haproxy.cfg"
        start haproxy haproxy -db -f "$RESULTS_DIR/haproxy.cfg"
        local haproxy_pid=$STARTED_PID
        wait_http "http://127.0.0.1:$HAPROXY_PORT/orders" 401 "$haproxy_pid" haproxy
        expect_status 200 "http://127.0.0.1:$HAPROXY_PORT/orders" "$TOKEN"
        expect_status 401 "http://127.0.0.1:$HAPROXY_PORT/orders" "$(tamper "$TOKEN")"
        run_wrk haproxy "$HAPROXY_PORT" "$haproxy_pid"
        stop "$haproxy_pid"
    fi

    if wants portcullis; then
        start portcullis env RUST_LOG=warn "$PORTCULLIS_BIN" standalone \
            --manifests "$RESULTS_DIR/manifests" \
            --listen "127.0.0.1:$PORTCULLIS_PORT" --admin "127.0.0.1:$ADMIN_PORT"
        local portcullis_pid=$STARTED_PID
        wait_http "http://127.0.0.1:$ADMIN_PORT/readyz" 200 "$portcullis_pid" portcullis
        # Enforcing, not just passing: no token 401, a broken signature 401, ours 200.
        expect_status 401 "http://127.0.0.1:$PORTCULLIS_PORT/orders"
        expect_status 401 "http://127.0.0.1:$PORTCULLIS_PORT/orders" "$(tamper "$TOKEN")"
        expect_status 200 "http://127.0.0.1:$PORTCULLIS_PORT/orders" "$TOKEN"
        run_wrk portcullis "$PORTCULLIS_PORT" "$portcullis_pid"
    fi

    print_table
}

main "$@"
