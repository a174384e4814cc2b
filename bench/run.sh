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
#   dpop        Portcullis with DPoP (RFC 9449) on the issuer: the one token as Bearer, then
#               DPoP-bound tokens with a fresh proof per request (bench/dpop.lua), both also
#               with the proxy pinned to CPU 0; any non-200 answer fails the run
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
#   SECTIONS="saturation tokens percore latency dpop"   run a subset of sections
#   DPOP_KEYS=16  DPOP_MAX_AGE=300  DPOP_GUESS_RPS=20000  DPOP_HEADROOM=2
#                                   DPoP client keys (one bound token each), the policy's
#                                   dpop.maxAge (s), the rate the warm-up's proofs are sized
#                                   for, and proofs per expected request (see bench/README.md)
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
SECTIONS=${SECTIONS:-saturation tokens percore latency dpop}
RATE=${RATE:-2000}
LATENCY_DURATION=${LATENCY_DURATION:-10s}
TOKENS=${TOKENS:-10000}
DPOP_KEYS=${DPOP_KEYS:-16}
DPOP_MAX_AGE=${DPOP_MAX_AGE:-300}
DPOP_GUESS_RPS=${DPOP_GUESS_RPS:-20000}
DPOP_HEADROOM=${DPOP_HEADROOM:-2}
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

# --- DPoP ---------------------------------------------------------------------------------------

DPOP_VENV=$BENCH_CACHE/dpop-venv
DPOP_PY=$DPOP_VENV/bin/python

# A venv with `cryptography` for bench/dpop_proofs.py, made once.
ensure_dpop_venv() {
    "$DPOP_PY" -c 'import cryptography' 2>/dev/null && return 0
    [[ ${SKIP_INSTALL:-} == 1 ]] && die "missing: $DPOP_VENV with cryptography (and SKIP_INSTALL=1)"
    log "creating $DPOP_VENV (cryptography, for the DPoP proofs)"
    python3 -m venv "$DPOP_VENV" >&2 || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
    "$DPOP_VENV/bin/pip" install -q cryptography >&2
    "$DPOP_PY" -c 'import cryptography' || die "cryptography does not import in $DPOP_VENV"
}

# secs DURATION: wrk's 500ms / 15s / 2m / 1h (or a bare number of seconds) in seconds.
secs() {
    awk -v d="$1" 'BEGIN { n = d + 0; u = substr(d, length(d));
        if (d ~ /ms$/) n /= 1000; else if (u == "m") n *= 60; else if (u == "h") n *= 3600; print n }'
}

# DPOP_KEYS ES256 client keys, a token bound to each (cnf.jkt, `token mint --claim`), and
# manifests with dpop on the issuer: the bench policy plus
# `dpop: {mode: Optional, algorithms: [ES256], maxAge: DPOP_MAX_AGE}` (Optional: the
# unbound bench token still passes as Bearer, for the bearer rows on the same instance).
prepare_dpop() {
    # A proof's iat is when it was made: the last one sent must still be within maxAge.
    awk -v d="$(secs "$DURATION")" -v m="$DPOP_MAX_AGE" 'BEGIN { exit !(d + 60 <= m) }' ||
        die "DURATION=$DURATION plus a minute (making the proofs) does not fit in DPOP_MAX_AGE=${DPOP_MAX_AGE}s"
    ensure_dpop_venv
    log "dpop: $DPOP_KEYS client keys and bound tokens (cryptography $("$DPOP_PY" -c 'import cryptography; print(cryptography.__version__)'))"
    local i=0 jkt
    DPOP_TOKENS_FILE=$RESULTS_DIR/dpop-tokens.txt
    : >"$DPOP_TOKENS_FILE"
    while read -r jkt; do
        i=$((i + 1))
        "$PORTCULLIS_BIN" token mint --key "$DEV_KEY" --sub "bench-dpop-$i" --scope orders:read \
            --ttl 1h --jti "bench-dpop-$i" --claim "cnf={\"jkt\":\"$jkt\"}" >>"$DPOP_TOKENS_FILE"
    done < <("$DPOP_PY" "$ROOT/bench/dpop_proofs.py" keys "$RESULTS_DIR/dpop-keys" "$DPOP_KEYS")
    [[ $(wc -l <"$DPOP_TOKENS_FILE") == "$DPOP_KEYS" ]] || die "minted $(wc -l <"$DPOP_TOKENS_FILE") bound tokens, wanted $DPOP_KEYS"
    local dir=$RESULTS_DIR/manifests-dpop
    mkdir -p "$dir"
    cp "$RESULTS_DIR/manifests/route.yaml" "$dir/"
    grep -q '^      algorithms: \[RS256\]$' "$RESULTS_DIR/manifests/policy.yaml" ||
        die "the bench policy has no '      algorithms: [RS256]' line to put dpop after"
    sed "/^      algorithms: \[RS256\]$/a\\
      dpop: {mode: Optional, algorithms: [ES256], maxAge: ${DPOP_MAX_AGE}s}" \
        "$RESULTS_DIR/manifests/policy.yaml" >"$dir/policy.yaml"
}

# make_proofs PREFIX N PORT [THREADS]: N proofs for GET http://127.0.0.1:PORT/orders, into
# PREFIX.0 .. PREFIX.(THREADS-1) (one file per wrk thread: no proof is in two threads).
make_proofs() {
    local prefix=$1 n=$2 port=$3 threads=${4:-$THREADS} made
    made=$("$DPOP_PY" "$ROOT/bench/dpop_proofs.py" proofs "$RESULTS_DIR/dpop-keys" "$DPOP_TOKENS_FILE" \
        GET "http://127.0.0.1:$port/orders" "$n" "$threads" "$prefix")
    [[ $made -ge $n ]] || die "made $made proofs, wanted $n"
}

# dpop_count RATE DURATION: proofs for DURATION at RATE requests/s, times DPOP_HEADROOM,
# plus 1000 per wrk thread (wrk's threads do not run at exactly the same pace).
dpop_count() {
    awk -v r="$1" -v d="$(secs "$2")" -v h="$DPOP_HEADROOM" -v t="$THREADS" \
        'BEGIN { printf "%d\n", r * d * h + 1000 * t }'
}

# Portcullis' answers so far, from /metrics: "200s 499s OTHERS". 499: the client closed
# the connection before the answer, as wrk does with its requests in flight when it stops.
status_counts() {
    curl -s --max-time 5 "http://127.0.0.1:$ADMIN_PORT/metrics" |
        awk '/^portcullis_requests_total\{/ { if ($1 ~ /code="200"/) ok += $2; else if ($1 ~ /code="499"/) cut += $2; else bad += $2 }
             END {printf "%d %d %d\n", ok, cut, bad}'
}

# dpop_status AUTH [PROOF]: the status of GET /orders with `Authorization: AUTH` (and the
# DPoP header).
dpop_status() {
    local h=(-H "Authorization: $1")
    [[ -n ${2:-} ]] && h+=(-H "DPoP: $2")
    curl -s -o /dev/null -w '%{http_code}' --max-time 5 "${h[@]}" "http://127.0.0.1:$PORTCULLIS_PORT/orders" || true
}

# Before DPoP rows: a proof passes once (200), again 401 (replay), a proof of another key
# 401, the bound token as Bearer 401, as DPoP without a proof 401.
expect_dpop_enforced() {
    local prefix=$RESULTS_DIR/proofs-check-$1 tok1 p1 p2 code
    make_proofs "$prefix" 2 "$PORTCULLIS_PORT" 1
    tok1=$(sed -n 1p "$DPOP_TOKENS_FILE")
    p1=$(awk '$1 == 1 {print $2; exit}' "$prefix.0")
    p2=$(awk '$1 != 1 {print $2; exit}' "$prefix.0")
    rm -f "$prefix.0"
    [[ -n $p1 && -n $p2 ]] || die "dpop: no check proofs (DPOP_KEYS must be >= 2)"
    code=$(dpop_status "DPoP $tok1" "$p1")
    [[ $code == 200 ]] || die "dpop: a fresh proof got $code, expected 200"
    code=$(dpop_status "DPoP $tok1" "$p1")
    [[ $code == 401 ]] || die "dpop: a replayed proof got $code, expected 401"
    code=$(dpop_status "DPoP $tok1" "$p2")
    [[ $code == 401 ]] || die "dpop: another key's proof got $code, expected 401"
    code=$(dpop_status "Bearer $tok1")
    [[ $code == 401 ]] || die "dpop: the bound token as Bearer got $code, expected 401"
    code=$(dpop_status "DPoP $tok1")
    [[ $code == 401 ]] || die "dpop: DPoP without a proof got $code, expected 401"
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
# Rows that must see only 200s (the dpop section): set STRICT=1 around them. FAILED: why not.
STRICT=0
FAILED=()
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

# run_wrk ROW PORT PID [CPUS] [tokens|dpop]: warm up, measure, record. CPUS pins wrk;
# `tokens` sends the TOKENS distinct tokens round-robin instead of the one token; `dpop`
# sends DPoP-bound tokens, each request with a proof of its own (bench/dpop.lua): the
# warm-up's proofs are sized for DPOP_GUESS_RPS, the measurement's for the warm-up's rate.
run_wrk() {
    local row=$1 port=$2 pid=$3 cpus=${4:-} mode=${5:-} out=$RESULTS_DIR/wrk-$1.txt
    local url="http://127.0.0.1:$port/orders"
    local args=(-t "$THREADS" -c "$CONNECTIONS") extra=() runner=() warm_out=/dev/null
    local proofs=$RESULTS_DIR/proofs-$row nwarm nmeasure
    [[ -n $cpus ]] && runner=(taskset -c "$cpus")
    if [[ $mode == tokens ]]; then
        args+=(-s "$ROOT/bench/tokens.lua")
        extra=(-- "$TOKENS_FILE" "$THREADS")
    elif [[ $mode == dpop ]]; then
        args+=(-s "$ROOT/bench/dpop.lua")
        extra=(-- "$proofs-warmup" "$DPOP_TOKENS_FILE")
        warm_out=$RESULTS_DIR/wrk-$row-warmup.txt
        nwarm=$(dpop_count "$DPOP_GUESS_RPS" "$WARMUP")
        log "$row: $nwarm proofs for the warm-up"
        make_proofs "$proofs-warmup" "$nwarm" "$port"
    else
        args+=(-H "Authorization: Bearer $TOKEN")
    fi
    log "$row: warm-up $WARMUP"
    "${runner[@]}" wrk "${args[@]}" -d "$WARMUP" "$url" "${extra[@]}" >"$warm_out"
    if [[ $mode == dpop ]]; then
        rm -f "$proofs-warmup".*
        grep -q 'requests without a proof 0$' "$warm_out" ||
            log "$row: the warm-up ran out of proofs ($(grep '^dpop:' "$warm_out")); its rate, so the measurement's proofs, are overestimated"
        nmeasure=$(dpop_count "$(awk '/^Requests\/sec:/ {print $2}' "$warm_out")" "$DURATION")
        # Every proof stays in the replay cache for the whole run (maxAge + 2 x skew): its
        # million entries per policy bound one instance's proofs.
        ((nwarm + nmeasure < 990000)) ||
            die "$row: $nwarm + $nmeasure proofs overflow Portcullis' replay cache (1,000,000 per policy); shorten DURATION"
        log "$row: $nmeasure proofs for $DURATION (the warm-up's rate x $DPOP_HEADROOM)"
        make_proofs "$proofs" "$nmeasure" "$port"
        extra=(-- "$proofs" "$DPOP_TOKENS_FILE")
    fi
    local before="" codes_before=""
    [[ $row == portcullis* ]] && before=$(cache_counts)
    ((STRICT)) && codes_before=$(status_counts)
    log "$row: measuring $DURATION ($CONNECTIONS connections, $THREADS threads${cpus:+, wrk on CPU $cpus})"
    "${runner[@]}" wrk "${args[@]}" -d "$DURATION" --latency "$url" "${extra[@]}" >"$out"
    [[ $mode == dpop ]] && rm -f "$proofs".*
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
    if ((STRICT)); then
        # Only 200s count: a stale or replayed proof is answered 401, fast.
        local why=() codes_after bad cut noproof
        codes_after=$(status_counts)
        read -r cut bad < <(awk -v b="$codes_before" -v a="$codes_after" \
            'BEGIN { split(b, x, " "); split(a, y, " "); print y[2] - x[2], y[3] - x[3] }')
        [[ -n ${NON2XX[$row]} ]] && why+=("wrk saw ${NON2XX[$row]%% *} non-2xx")
        [[ -n ${ERRS[$row]} ]] && why+=("socket errors: ${ERRS[$row]}")
        ((bad == 0)) || why+=("Portcullis answered $bad non-200")
        # More 499s than twice the connections: not just the requests in flight when the
        # warm-up and the measurement stopped.
        ((cut <= 2 * CONNECTIONS)) || why+=("$cut requests closed by the client (499)")
        if [[ $mode == dpop ]]; then
            noproof=$(sed -n 's/^dpop: proofs used [0-9]*, requests without a proof \([0-9]*\)$/\1/p' "$out")
            [[ -n $noproof ]] || why+=("no proof count from dpop.lua")
            ((${noproof:-0} == 0)) || why+=("$noproof requests without a proof (raise DPOP_HEADROOM)")
            NOTE[$row]="${NOTE[$row]:+${NOTE[$row]}, }$(sed -n 's/^dpop: proofs used \([0-9]*\),.*/\1/p' "$out") of $nmeasure proofs used"
        fi
        if ((${#why[@]})); then
            local IFS=';'
            NOTE[$row]="${NOTE[$row]:+${NOTE[$row]}, }FAILED: ${why[*]}"
            FAILED+=("$row: ${why[*]}")
            unset IFS
        else
            NOTE[$row]="${NOTE[$row]:+${NOTE[$row]}, }all 200"
        fi
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
    if section dpop; then
        echo "dpop rows: the issuer with dpop {mode: Optional, algorithms: [ES256], maxAge: ${DPOP_MAX_AGE}s};"
        echo "*-bearer: the one unbound token as Bearer; *-dpop: $DPOP_KEYS DPoP-bound tokens, one ES256"
        echo "proof per request, never reused. Any non-200 in these rows fails the run."
    fi
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
    if section dpop; then
        echo "  portcullis-dpop / portcullis-bearer       $(ratio "${RPS[portcullis-dpop]:-}" "${RPS[portcullis-bearer]:-}")"
        echo "  portcullis-dpop-1core / -bearer-1core     $(ratio "${RPS[portcullis-dpop-1core]:-}" "${RPS[portcullis-bearer-1core]:-}")"
    fi
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
        --manifests "${MANIFESTS:-$RESULTS_DIR/manifests}" \
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

    if section dpop && wants portcullis; then
        prepare_dpop
        STRICT=1
        MANIFESTS=$RESULTS_DIR/manifests-dpop
        start_portcullis portcullis-dpop
        pid=$STARTED_PID
        expect_dpop_enforced portcullis-dpop
        run_wrk portcullis-bearer "$PORTCULLIS_PORT" "$pid"
        run_wrk portcullis-dpop "$PORTCULLIS_PORT" "$pid" "" dpop
        stop "$pid"
        if ((cpus >= 2)); then
            pin 1 "${UPSTREAM_PIDS[@]}"
            start_portcullis portcullis-dpop-1core taskset 0 -- --workers 1
            pid=$STARTED_PID
            expect_dpop_enforced portcullis-dpop-1core
            run_wrk portcullis-bearer-1core "$PORTCULLIS_PORT" "$pid" 1
            run_wrk portcullis-dpop-1core "$PORTCULLIS_PORT" "$pid" 1 dpop
            stop "$pid"
            pin "0-$((cpus - 1))" "${UPSTREAM_PIDS[@]}"
        fi
        STRICT=0
        unset MANIFESTS
    fi

    print_tables
    if ((${#FAILED[@]})); then
        local f
        for f in "${FAILED[@]}"; do
            log "FAILED $f"
        done
        die "${#FAILED[@]} row(s) saw answers other than 200: their RPS is not a DPoP figure"
    fi
}

main "$@"
