# Shared by the Node-driven suites (scripts/{mcp,dpop,mtls,catalog}-tests.sh): a work
# directory, the processes started (stopped on exit, also on failure or Ctrl-C), failures
# recorded, npm dependencies installed when missing or stale, free loopback ports, and
# waiting for a process's readiness line. Source it with HARNESS (the suite's name, for the
# work directory) and NPM_CI (1: always run `npm ci`) set.

WORK=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-${HARNESS:?}.XXXXXX")
PIDS=()
FAILED=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "${KEEP_WORK:-0}" = 1 ] || [ "${#FAILED[@]}" -gt 0 ]; then
    echo "logs, manifests and results kept in $WORK"
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
trap 'FAILED+=("interrupted"); exit 130' INT TERM

die() { # what, then files whose tails to show
  FAILED+=("$1")
  echo "FATAL: $1" >&2
  shift
  for f in "$@"; do [ -f "$f" ] && { echo "--- $f" >&2; tail -n 40 "$f" >&2; }; done
  exit 1
}

npm_deps() { # dir
  if [ "${NPM_CI:-0}" = 1 ] || [ ! -f "$1/node_modules/.package-lock.json" ] \
    || [ "$1/package-lock.json" -nt "$1/node_modules/.package-lock.json" ]; then
    echo "== npm ci ($1)"
    (cd "$1" && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci in $1"
  fi
}

free_ports() { # n: n distinct free loopback ports
  node -e '
    const net = require("net"); const n = Number(process.argv[1]); const servers = [];
    for (let i = 0; i < n; i++) {
      const s = net.createServer();
      s.listen(0, "127.0.0.1", () => {
        servers.push(s);
        if (servers.length === n) {
          console.log(servers.map((x) => x.address().port).join(" "));
          servers.forEach((x) => x.close());
        }
      });
    }' "$1"
}

wait_for_line() { # file pattern pid seconds
  local i
  for ((i = 0; i < $4 * 10; i++)); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    kill -0 "$3" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# gateway_ready PID ADMIN_PORT ROUTES [URL]: waits (up to 20 s) until the gateway PID is
# ready on ADMIN_PORT with exactly ROUTES routes and no config errors (and, when given,
# URL answers 200); returns 1 otherwise, after saving its /config to $WORK/config.json.
gateway_ready() {
  local pid=$1 admin=$2 routes=$3 url=${4:-} i
  for ((i = 0; i < 200; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    if curl -fsS "http://127.0.0.1:$admin/readyz" >/dev/null 2>&1 \
      && curl -fsS "http://127.0.0.1:$admin/config" 2>/dev/null \
        | node -e 'let s="";process.stdin.on("data",(c)=>s+=c).on("end",()=>{const c=JSON.parse(s);process.exit(c.stats.routes===Number(process.argv[1])&&c.errors.length===0?0:1)})' "$routes" \
      && { [ -z "$url" ] || [ "$(curl -sS -o /dev/null -w '%{http_code}' "$url" 2>/dev/null)" = 200 ]; }; then
      return 0
    fi
    sleep 0.1
  done
  curl -sS "http://127.0.0.1:$admin/config" >"$WORK/config.json" 2>&1
  return 1
}

# check_gateway_alive: PASS when the gateway ($GW_PID) still runs and its log
# ($WORK/portcullis.log) holds no panic; a recorded FAIL otherwise.
check_gateway_alive() {
  if kill -0 "$GW_PID" 2>/dev/null && ! grep -q -i 'panicked' "$WORK/portcullis.log"; then
    echo "PASS gateway still running, no panic"
  else
    echo "FAIL gateway exited or panicked"
    FAILED+=("gateway exited or panicked")
    grep -n -i -A5 'panicked' "$WORK/portcullis.log" | head -n 20
  fi
}

# finish WHAT: the time since $START, then every recorded failure (exit 1), or
# "all WHAT checks passed".
finish() {
  echo "== $(($(date +%s) - START))s"
  if [ "${#FAILED[@]}" -gt 0 ]; then
    echo "FAILED (${#FAILED[@]}):"
    printf '  - %s\n' "${FAILED[@]}"
    exit 1
  fi
  echo "all $1 checks passed"
}
