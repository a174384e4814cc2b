# Shared by bench/run.sh and bench/ai.sh (sourced, not run): logging, the processes a
# benchmark starts and their cleanup, start-up waits, Debian installs, the Portcullis build,
# and per-process CPU and memory. The sourcing script sets BENCH_TAG (the log prefix), ROOT,
# RESULTS_DIR and ONLY before calling these.

log() { printf '[%s] %s\n' "$BENCH_TAG" "$*" >&2; }
die() { printf '[%s] error: %s\n' "$BENCH_TAG" "$*" >&2; exit 1; }
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

# wait_http URL WANT PID NAME [SECONDS]: until `curl URL` answers WANT (default 10 s), or
# the process dies.
wait_http() {
    local url=$1 want=$2 pid=$3 name=$4 secs=${5:-10} code i
    for ((i = 0; i < secs * 10; i++)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 40 "$RESULTS_DIR/$name.log" >&2 || true
            die "$name exited during startup (log above; whole log: $RESULTS_DIR/$name.log)"
        fi
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" || true)
        [[ $code == "$want" ]] && return 0
        sleep 0.1
    done
    tail -n 40 "$RESULTS_DIR/$name.log" >&2 || true
    die "$name did not answer $url with $want within ${secs}s (last: ${code:-none})"
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

# CPU time (user + system) in clock ticks of a process and its live children.
cpu_ticks() {
    local total=0 pid t
    for pid in "$1" $(pgrep -P "$1" 2>/dev/null || true); do
        # Fields 14 and 15 of /proc/PID/stat, counted after the ")" that ends the name.
        t=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{print $12 + $13}' || true)
        total=$((total + ${t:-0}))
    done
    echo "$total"
}

# --- tools ------------------------------------------------------------------------------------

# apt_install PACKAGE...: installs them from Debian (with sudo when not root), unless
# SKIP_INSTALL=1, which makes a missing package an error.
apt_install() {
    (($# == 0)) && return 0
    [[ ${SKIP_INSTALL:-} == 1 ]] && die "missing: $* (and SKIP_INSTALL=1)"
    local sudo=()
    ((EUID == 0)) || sudo=(sudo)
    log "installing $* from Debian"
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "$@" >/dev/null
}

# PORTCULLIS_BIN, or target/dist/portcullis built when missing or older than the sources
# (the profile the container image ships: release + fat LTO, one codegen unit).
build_portcullis() {
    if [[ -n ${PORTCULLIS_BIN:-} ]]; then
        [[ -x $PORTCULLIS_BIN ]] || die "PORTCULLIS_BIN=$PORTCULLIS_BIN is not executable"
        return
    fi
    PORTCULLIS_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/dist/portcullis
    if [[ -x $PORTCULLIS_BIN ]] &&
        [[ -z $(find "$ROOT/crates" "$ROOT/Cargo.toml" "$ROOT/Cargo.lock" -newer "$PORTCULLIS_BIN" -print -quit) ]]; then
        return
    fi
    log "building portcullis (--profile dist)"
    (cd "$ROOT" && cargo build --profile dist -p portcullis --locked) >&2
    [[ -x $PORTCULLIS_BIN ]] || die "no binary at $PORTCULLIS_BIN after the build"
}
