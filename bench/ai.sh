#!/usr/bin/env bash
# AI-gateway overhead benchmark, run by hand (not in CI). See bench/README.md, "AI gateway".
#
# What one LLM request costs through a gateway, over calling the upstream directly, with
# Portcullis side by side with LiteLLM's proxy on the same stub upstream and the same load:
#
#   direct      bench/ai_load.py -> the stub (OpenAI-compatible, no gateway)
#   litellm     bench/ai_load.py -> LiteLLM proxy (litellm[proxy], pinned; no database,
#               a master key, 1 worker) -> the stub
#   portcullis  bench/ai_load.py -> portcullis standalone (LLM route, RS256 token with
#               model:*) -> the stub
#
# bench/ai_load.py: CONCURRENCY keep-alive connections per target, closed loop, WARMUP then
# REQUESTS chat completions per target and mode (non-streaming and streaming), the targets
# interleaved in ROUNDS rounds. Printed: p50/p99 per target (streams: to the last byte and to
# the first), the overhead over `direct`, and Portcullis' overhead / LiteLLM's overhead (the
# issue's goal: <= 0.1). Then CPU time per request and peak RSS of each gateway.
#
# Environment:
#   CONCURRENCY=4  REQUESTS=2000  WARMUP=200  ROUNDS=10  WORDS=20  MODES=plain,stream
#   ONLY="direct litellm portcullis"   a subset of targets (direct is always measured)
#   STUB=fast                   fast: bench/ai_stub.py (one asyncio loop, tens of us per
#                               request); llm-stub: tools/llm-stub/llm_stub.py (threaded)
#   PORT_BASE=18280             ports PORT_BASE..PORT_BASE+3 on 127.0.0.1 are used
#   PORTCULLIS_BIN=path         use this binary (default target/dist/portcullis, built with
#                               `cargo build --profile dist -p portcullis --locked` when
#                               missing or older than the sources)
#   PORTCULLIS_ARGS="..."       extra flags for `portcullis standalone`
#   LITELLM_ARGS="..."          extra flags for `litellm` (e.g. "--run_granian")
#   SKIP_INSTALL=1              do not create the LiteLLM venv; fail if it is missing
#   BENCH_CACHE=dir             default ${XDG_CACHE_HOME:-$HOME/.cache}/portcullis-bench; the
#                               LiteLLM venv is $BENCH_CACHE/litellm-venv
#   RESULTS_DIR=dir             raw results, configs and logs (default: a new
#                               /tmp/portcullis-ai-bench.XXXXXX, kept after the run)
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CONCURRENCY=${CONCURRENCY:-4}
REQUESTS=${REQUESTS:-2000}
WARMUP=${WARMUP:-200}
ROUNDS=${ROUNDS:-10}
WORDS=${WORDS:-20}
MODES=${MODES:-plain,stream}
ONLY=${ONLY:-direct litellm portcullis}
STUB=${STUB:-fast}
PORT_BASE=${PORT_BASE:-18280}
BENCH_CACHE=${BENCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/portcullis-bench}

# LiteLLM: the highest version whose `proxy` extra installs from PyPI. (1.108.8+ and 1.109
# pin litellm-enterprise/litellm-proxy-extras releases, and 1.110 a `litellm-proxy` package,
# that PyPI does not serve.) Every dependency is pinned in ai-litellm-constraints.txt.
LITELLM_VERSION=1.108.7
LITELLM_VENV=$BENCH_CACHE/litellm-venv
LITELLM_CONSTRAINTS=$ROOT/bench/ai-litellm-constraints.txt

STUB_PORT=$PORT_BASE
LITELLM_PORT=$((PORT_BASE + 1))
PORTCULLIS_PORT=$((PORT_BASE + 2))
ADMIN_PORT=$((PORT_BASE + 3))

# The provider keys the stub accepts; the gateways hold them, clients never see them.
STUB_KEYS=sk-stub-primary,sk-stub-backup
MODEL=gpt-4o-mini          # what clients of a gateway ask for
PROVIDER_MODEL=stub-small  # what the gateways send upstream (and `direct` asks for)

DEV_KEY=$ROOT/examples/quickstart/dev-private.pem
QUICKSTART_POLICY=$ROOT/examples/quickstart/policy.yaml

BENCH_TAG=ai-bench
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

# expect_chat WANT BASE_URL MODEL [TOKEN] [STREAM]: one chat completion gets status WANT
# ('!200': any answer but 200); a 200 must carry the stub's reply.
expect_chat() {
    local want=$1 base=$2 model=$3 token=${4:-} stream=${5:-false} out=$RESULTS_DIR/check.out code
    local auth=()
    [[ -n $token ]] && auth=(-H "Authorization: Bearer $token")
    code=$(curl -s -o "$out" -w '%{http_code}' --max-time 30 "${auth[@]}" \
        -H 'Content-Type: application/json' "$base/chat/completions" \
        -d "{\"model\":\"$model\",\"stream\":$stream,\"messages\":[{\"role\":\"user\",\"content\":\"bench check\"}]}" || true)
    if [[ $want == '!200' ]]; then
        [[ $code != 200 && $code != 000 ]] || die "$base/chat/completions (model $model, ${token:+with}${token:-without} token) answered $code, expected a refusal: $(head -c 300 "$out")"
        return 0
    fi
    [[ $code == "$want" ]] || die "$base/chat/completions (model $model, stream $stream, ${token:+with}${token:-without} token) answered $code, expected $want: $(head -c 300 "$out")${CHECK_HINT:+ ($CHECK_HINT)}"
    if [[ $want == 200 ]] && ! grep -q 'echo:' "$out"; then
        die "$base/chat/completions answered 200 without the stub's reply: $(head -c 300 "$out")"
    fi
}

# --- tools ------------------------------------------------------------------------------------

install_tools() {
    local missing=()
    command -v curl >/dev/null || missing+=(curl)
    command -v pgrep >/dev/null || missing+=(procps)
    command -v python3 >/dev/null || missing+=(python3)
    if wants litellm && ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
        missing+=(python3-venv)
    fi
    apt_install "${missing[@]}"
}

# The LiteLLM venv, made once: litellm[proxy]==LITELLM_VERSION with every dependency pinned.
# A marker file says the install finished, so an interrupted one is redone.
install_litellm() {
    local marker=$LITELLM_VENV/.portcullis-bench-litellm-$LITELLM_VERSION
    [[ -f $marker && -x $LITELLM_VENV/bin/litellm ]] && return 0
    [[ ${SKIP_INSTALL:-} == 1 ]] && die "no LiteLLM $LITELLM_VERSION venv at $LITELLM_VENV (and SKIP_INSTALL=1)"
    log "installing litellm[proxy]==$LITELLM_VERSION into $LITELLM_VENV (once; ~750 MB)"
    rm -rf "$LITELLM_VENV"
    mkdir -p "$BENCH_CACHE"
    python3 -m venv "$LITELLM_VENV"
    local pip=("$LITELLM_VENV/bin/python" -m pip install -q --disable-pip-version-check)
    if ! "${pip[@]}" -c "$LITELLM_CONSTRAINTS" "litellm[proxy]==$LITELLM_VERSION" >&2; then
        log "WARNING: the pinned dependencies of $LITELLM_CONSTRAINTS do not install with $(python3 --version); installing litellm[proxy]==$LITELLM_VERSION with whatever pip resolves"
        "${pip[@]}" "litellm[proxy]==$LITELLM_VERSION" >&2
    fi
    [[ -x $LITELLM_VENV/bin/litellm ]] || die "no litellm command in $LITELLM_VENV after the install"
    touch "$marker"
}

# mint_token NAME SCOPE: a one-hour quickstart-issuer token (the quickstart key is dev-only).
mint_token() {
    "$PORTCULLIS_BIN" token mint --key "$DEV_KEY" --sub "bench-$1" --scope "$2" --ttl 1h \
        --jti "bench-ai-$1" 2>"$RESULTS_DIR/mint.log" ||
        die "portcullis token mint failed: $(head -c 300 "$RESULTS_DIR/mint.log")"
}

# --- configs ----------------------------------------------------------------------------------

write_litellm_config() {
    LITELLM_MASTER_KEY=sk-bench-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
    # One deployment of the stub under the name clients use; no database; a master key
    # (LiteLLM refuses to start without one, and it makes LiteLLM authenticate every request
    # as Portcullis does); no retries, so a failure shows instead of being retried away.
    cat >"$RESULTS_DIR/litellm.yaml" <<EOF
model_list:
  - model_name: $MODEL
    litellm_params:
      model: openai/$PROVIDER_MODEL
      api_base: http://127.0.0.1:$STUB_PORT/v1
      api_key: ${STUB_KEYS%%,*}
litellm_settings:
  telemetry: false
  num_retries: 0
  request_timeout: 60
general_settings:
  master_key: $LITELLM_MASTER_KEY
EOF
}

write_portcullis_manifests() {
    local dir=$RESULTS_DIR/manifests
    mkdir -p "$dir"
    # The quickstart TokenPolicy `default` (issuer, audience, JWKS of the dev key) as it is.
    cp "$QUICKSTART_POLICY" "$dir/policy.yaml"
    cat >"$dir/llm.yaml" <<EOF
apiVersion: v1
kind: Secret
metadata: {name: llm-keys, namespace: default}
stringData: {primary: ${STUB_KEYS%%,*}, backup: ${STUB_KEYS#*,}}
---
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {name: llm, namespace: default}
spec:
  hosts: [localhost, 127.0.0.1]
  policyRef: {name: default}
  backend:
    llm:
      provider: openaiCompatible
      url: http://127.0.0.1:$STUB_PORT/v1
      credentials:
        - secretRef: {name: llm-keys, key: primary}
          priority: 0
        - secretRef: {name: llm-keys, key: backup}
          priority: 1
      cooldown: 30s
      models:
        - name: $MODEL
          providerModel: $PROVIDER_MODEL
  rules:
    - match: {pathPrefix: /v1}
EOF
}

# --- targets ----------------------------------------------------------------------------------

start_stub() {
    case $STUB in
    fast)
        start stub python3 "$ROOT/bench/ai_stub.py" --host 127.0.0.1 --port "$STUB_PORT" --keys "$STUB_KEYS"
        ;;
    llm-stub)
        [[ -f $ROOT/tools/llm-stub/llm_stub.py ]] || die "no tools/llm-stub/llm_stub.py (STUB=fast needs none)"
        # Run with TCP_NODELAY on its sockets: a ThreadingHTTPServer handler writes the head
        # and the body in two writes, and with Nagle's algorithm on the body waits for the
        # client's delayed ACK of the head, ~40 ms on Linux, on every answer.
        start stub python3 -c 'import sys
sys.path.insert(0, sys.argv[1])
import llm_stub
if hasattr(llm_stub, "Handler"):
    llm_stub.Handler.disable_nagle_algorithm = True
sys.exit(llm_stub.main(sys.argv[2:]))' "$ROOT/tools/llm-stub" --host 127.0.0.1 --port "$STUB_PORT" --keys "$STUB_KEYS"
        ;;
    *) die "STUB=$STUB: fast or llm-stub" ;;
    esac
    STUB_PID=$STARTED_PID
    local i
    for ((i = 0; i < 100; i++)); do
        grep -q '^listening on' "$RESULTS_DIR/stub.log" 2>/dev/null && break
        kill -0 "$STUB_PID" 2>/dev/null || { cat "$RESULTS_DIR/stub.log" >&2; die "the stub exited during startup"; }
        sleep 0.1
    done
    grep -q '^listening on' "$RESULTS_DIR/stub.log" || die "the stub did not say 'listening on' within 10s"
    expect_chat 200 "http://127.0.0.1:$STUB_PORT/v1" "$PROVIDER_MODEL" "${STUB_KEYS%%,*}"
    expect_chat 200 "http://127.0.0.1:$STUB_PORT/v1" "$PROVIDER_MODEL" "${STUB_KEYS%%,*}" true
    expect_chat 401 "http://127.0.0.1:$STUB_PORT/v1" "$PROVIDER_MODEL" sk-wrong
}

start_litellm() {
    write_litellm_config
    # Nothing may leave the machine: the model cost map, Anthropic beta headers, policy
    # templates, blog posts and auto-router presets come from the package's own copies;
    # no telemetry; no database (DATABASE_URL unset); started in RESULTS_DIR so that no
    # .env of the caller's directory is read. LITELLM_LOG=WARNING also keeps uvicorn's
    # access log off, as Portcullis' is by default.
    # shellcheck disable=SC2086 # LITELLM_ARGS is split into flags on purpose
    start litellm env -C "$RESULTS_DIR" -u DATABASE_URL -u LITELLM_MASTER_KEY \
        LITELLM_LOCAL_MODEL_COST_MAP=True \
        LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS=True \
        LITELLM_LOCAL_POLICY_TEMPLATES=True \
        LITELLM_LOCAL_BLOG_POSTS=True \
        LITELLM_LOCAL_AUTOROUTER_PRESETS=True \
        LITELLM_DONT_SHOW_FEEDBACK_BOX=True \
        LITELLM_LOG=WARNING \
        HF_HUB_OFFLINE=1 \
        "$LITELLM_VENV/bin/litellm" --config "$RESULTS_DIR/litellm.yaml" \
        --host 127.0.0.1 --port "$LITELLM_PORT" --num_workers 1 --keepalive_timeout 300 \
        ${LITELLM_ARGS:-}
    LITELLM_PID=$STARTED_PID
    log "waiting for LiteLLM to start (10-30 s)"
    wait_http "http://127.0.0.1:$LITELLM_PORT/health/liveliness" 200 "$LITELLM_PID" litellm 180
    # Enforcing, not just passing: no key or a wrong key is refused, the master key gets the
    # stub's reply. (Without a database LiteLLM refuses a missing key with a 500 and a wrong
    # one with a 400 "No connected db.", not 401; refused all the same.)
    expect_chat '!200' "http://127.0.0.1:$LITELLM_PORT/v1" "$MODEL"
    expect_chat '!200' "http://127.0.0.1:$LITELLM_PORT/v1" "$MODEL" sk-wrong
    expect_chat 200 "http://127.0.0.1:$LITELLM_PORT/v1" "$MODEL" "$LITELLM_MASTER_KEY"
    expect_chat 200 "http://127.0.0.1:$LITELLM_PORT/v1" "$MODEL" "$LITELLM_MASTER_KEY" true
}

start_portcullis() {
    write_portcullis_manifests
    TOKEN=$(mint_token all 'model:*')
    local other
    other=$(mint_token other 'model:other')
    # shellcheck disable=SC2086 # PORTCULLIS_ARGS is split into flags on purpose
    start portcullis env RUST_LOG=warn "$PORTCULLIS_BIN" standalone \
        --manifests "$RESULTS_DIR/manifests" \
        --listen "127.0.0.1:$PORTCULLIS_PORT" --admin "127.0.0.1:$ADMIN_PORT" ${PORTCULLIS_ARGS:-}
    PORTCULLIS_PID=$STARTED_PID
    wait_http "http://127.0.0.1:$ADMIN_PORT/readyz" 200 "$PORTCULLIS_PID" portcullis
    # Enforcing, not just passing: no token 401, a token without the model's scope 403,
    # the model:* token 200 with the stub's reply (and no provider key needed from us).
    local base=http://127.0.0.1:$PORTCULLIS_PORT/v1
    CHECK_HINT="is $PORTCULLIS_BIN from before the AI gateway? rebuild it"
    expect_chat 401 "$base" "$MODEL"
    expect_chat 403 "$base" "$MODEL" "$other"
    expect_chat 200 "$base" "$MODEL" "$TOKEN"
    expect_chat 200 "$base" "$MODEL" "$TOKEN" true
    CHECK_HINT=
}

# --- main -------------------------------------------------------------------------------------

main() {
    install_tools
    if [[ -n ${RESULTS_DIR:-} ]]; then
        mkdir -p "$RESULTS_DIR"
    else
        RESULTS_DIR=$(mktemp -d /tmp/portcullis-ai-bench.XXXXXX)
    fi
    RESULTS_DIR=$(cd "$RESULTS_DIR" && pwd)
    local port
    for port in "$STUB_PORT" "$LITELLM_PORT" "$PORTCULLIS_PORT" "$ADMIN_PORT"; do
        port_free "$port" || die "port $port is in use (set PORT_BASE)"
    done
    wants litellm && install_litellm
    wants portcullis && build_portcullis

    start_stub
    local targets=(--target "direct,http://127.0.0.1:$STUB_PORT/v1,$PROVIDER_MODEL,${STUB_KEYS%%,*}")
    if wants litellm; then
        start_litellm
        targets+=(--target "litellm,http://127.0.0.1:$LITELLM_PORT/v1,$MODEL,$LITELLM_MASTER_KEY")
    fi
    if wants portcullis; then
        start_portcullis
        targets+=(--target "portcullis,http://127.0.0.1:$PORTCULLIS_PORT/v1,$MODEL,$TOKEN")
    fi

    local name pid
    declare -A SERVER_PID=([stub]=$STUB_PID)
    wants litellm && SERVER_PID[litellm]=$LITELLM_PID
    wants portcullis && SERVER_PID[portcullis]=$PORTCULLIS_PID
    declare -A CPU_BEFORE
    for name in "${!SERVER_PID[@]}"; do
        CPU_BEFORE[$name]=$(cpu_ticks "${SERVER_PID[$name]}")
    done

    log "load: $CONCURRENCY connections per target, $WARMUP + $REQUESTS requests per target and mode ($MODES), $ROUNDS rounds; stub: $STUB; $(nproc) CPUs"
    local rc=0
    python3 "$ROOT/bench/ai_load.py" "${targets[@]}" --concurrency "$CONCURRENCY" \
        --requests "$REQUESTS" --warmup "$WARMUP" --rounds "$ROUNDS" --modes "$MODES" \
        --words "$WORDS" --json "$RESULTS_DIR/ai-results.json" | tee "$RESULTS_DIR/ai-results.txt" || rc=$?

    # Every request to a gateway is one of its target's; the stub serves all targets.
    local modes_n ticks per_target
    modes_n=$(tr ',' '\n' <<<"$MODES" | grep -c .)
    ticks=$(getconf CLK_TCK)
    per_target=$(((WARMUP + REQUESTS) * modes_n))
    echo
    printf '%-12s %14s %12s  %s\n' server cpu-ms/request peak-RSS requests
    for name in stub litellm portcullis; do
        [[ -n ${SERVER_PID[$name]:-} ]] || continue
        pid=${SERVER_PID[$name]}
        local n=$per_target
        [[ $name == stub ]] && n=$((per_target * ${#targets[@]} / 2))
        printf '%-12s %14s %12s  %s\n' "$name" \
            "$(awk -v a="${CPU_BEFORE[$name]}" -v b="$(cpu_ticks "$pid")" -v t="$ticks" -v n="$n" \
                'BEGIN {printf "%.3f", (b - a) * 1000 / t / n}')" \
            "$(awk -v k="$(peak_rss_kib "$pid")" 'BEGIN {printf "%.1f MiB", k / 1024}')" "$n"
    done
    echo "cpu-ms/request: the server's user+system CPU over the whole load (warm-up included,"
    echo "both modes mixed) / the requests it served. LiteLLM: litellm[proxy]==$LITELLM_VERSION, 1 worker."
    if wants portcullis; then
        echo
        echo "Portcullis' gen_ai request counters after the run:"
        curl -s --max-time 5 "http://127.0.0.1:$ADMIN_PORT/metrics" |
            grep '^portcullis_gen_ai_requests_total' | sed 's/^/  /' || echo "  (none)"
    fi
    echo
    echo "Raw output, configs and logs: $RESULTS_DIR"
    return "$rc"
}

main "$@"
