#!/usr/bin/env bash
# Coverage-guided fuzzing of Portcullis (cargo-fuzz / libFuzzer) on the pinned stable
# toolchain. The fuzz crate lives in fuzz/ (its own workspace and Cargo.lock); targets and
# their invariants are described in fuzz/README.md and at the top of each
# fuzz/fuzz_targets/<target>.rs.
#
#   scripts/fuzz.sh smoke            build, run every target for a fixed number of inputs
#                                    with a fixed seed from the committed seeds only, so a
#                                    commit's result is the same on every run and machine;
#                                    fails on any crash (FUZZ_SMOKE_SCALE scales the counts)
#   scripts/fuzz.sh long [TARGET..]  FUZZ_SECONDS per target (default 900) with FUZZ_JOBS
#                                    processes (default 1; >1 uses libFuzzer -fork); prints
#                                    a Markdown table (also in target/fuzz/report-long.md)
#   scripts/fuzz.sh build            build the targets only
#   scripts/fuzz.sh run TARGET [libFuzzer args..]   run one target until stopped
#   scripts/fuzz.sh repro TARGET FILE              run one input (a crash artifact)
#   scripts/fuzz.sh seeds            regenerate the committed seed files fuzz/corpus/*/seed-*
#
# Also: FUZZ_TIMEOUT (s per input, default 10), FUZZ_NICE (default 10), FUZZ_ARGS (extra
# libFuzzer flags), PORTCULLIS_FUZZ_STRICT_BACKEND=1 (route: hold relaxed-normalization
# routes to what a slash-merging, %2F-decoding backend serves; see fuzz/README.md).
#
# Installs what it needs: cargo-fuzz (pinned) into ~/.cache/portcullis-fuzz (override with
# PORTCULLIS_FUZZ_CACHE), and a C++ compiler for libFuzzer when missing. cargo-fuzz passes
# nightly-only rustc flags, so RUSTC_BOOTSTRAP=1 lets the pinned stable toolchain take them.
# Builds go to target/fuzz (never the workspace's target/debug). Inputs the fuzzer finds go
# to target/fuzz/corpus/<target> (the committed seeds in fuzz/corpus/<target> are only
# read); crashes to fuzz/artifacts/<target>/ (gitignored).
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.2
CACHE=${PORTCULLIS_FUZZ_CACHE:-$HOME/.cache/portcullis-fuzz}
TARGET_DIR=target/fuzz
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
BIN_DIR=$TARGET_DIR/$TRIPLE/release
ALL_TARGETS=(path bearer jwt jwks route manifest push_frame quota_ledger identity_event)
export PATH="$CACHE/bin:$PATH"
export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

# --sanitizer none: the workspace forbids unsafe code, and what unsafe code remains (std,
# aws-lc's C, serde_json/yaml internals) is not instrumented by a RUSTFLAGS-only ASan build
# anyway (no -Zbuild-std; cc-built C gets no -fsanitize); ASan would halve exec/s for
# checks that cannot fire. Panics (every invariant is an assert) abort and are crashes.
FUZZ_BUILD_FLAGS=(--sanitizer none --target-dir "$TARGET_DIR")

ensure_tools() {
  if ! command -v c++ >/dev/null 2>&1; then
    echo "== installing g++ (libFuzzer is C++)"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
    $SUDO apt-get update -q && $SUDO apt-get install -y -q g++
  fi
  if ! cargo fuzz --version 2>/dev/null | grep -q "cargo-fuzz $CARGO_FUZZ_VERSION\b"; then
    echo "== installing cargo-fuzz $CARGO_FUZZ_VERSION into $CACHE"
    cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION" --root "$CACHE"
  fi
}

build() {
  ensure_tools
  echo "== building fuzz targets (cargo fuzz build ${FUZZ_BUILD_FLAGS[*]})"
  local start=$SECONDS
  nice -n "${FUZZ_NICE:-10}" cargo fuzz build "${FUZZ_BUILD_FLAGS[@]}"
  echo "== built in $((SECONDS - start)) s"
}

dict_for() {
  case "$1" in
    path|route) echo "-dict=fuzz/dicts/path.dict" ;;
    jwt|bearer|identity_event) echo "-dict=fuzz/dicts/jwt.dict" ;;
    jwks|push_frame|manifest|quota_ledger) echo "-dict=fuzz/dicts/json.dict" ;;
  esac
}

# Inputs per target in smoke mode: about 20 s each at the exec/s of a 2-core machine
# (fuzz/README.md has the figures). A count, not a time, so that the run is the same
# everywhere: libFuzzer with one job, -seed and -runs explores the same inputs in the same
# order for the same binary and starting corpus.
smoke_runs() {
  local n
  case "$1" in
    path) n=600000 ;; bearer) n=4000000 ;; jwt) n=50000 ;; jwks) n=300000 ;;
    route) n=500000 ;; manifest) n=30000 ;; push_frame) n=150000 ;; quota_ledger) n=200000 ;;
    identity_event) n=25000 ;; *) n=100000 ;;
  esac
  awk -v n="$n" -v s="${FUZZ_SMOKE_SCALE:-1}" 'BEGIN { printf "%.0f", n * s }'
}

# run_one TARGET SECONDS JOBS: runs one target, appends a row to $REPORT, sets $CRASHED.
# SECONDS = 0 means smoke: a fixed seed and input count, from a fresh copy of the seeds.
run_one() {
  local t=$1 secs=$2 jobs=$3
  local work=$TARGET_DIR/corpus/$t seeds=fuzz/corpus/$t art=fuzz/artifacts/$t
  local log=$TARGET_DIR/logs/$t.log
  local budget=(-max_total_time="$secs")
  if [ "$secs" = 0 ]; then
    work=$TARGET_DIR/smoke/$t
    rm -rf "$work"
    budget=(-runs="$(smoke_runs "$t")" -seed="${FUZZ_SMOKE_SEED:-20261204}")
  fi
  mkdir -p "$work" "$seeds" "$art" "$TARGET_DIR/logs"
  local before
  before=$(find "$art" -type f | wc -l)
  local par=()
  [ "$jobs" -gt 1 ] && par=(-fork="$jobs" -ignore_crashes=0)
  local times rc=0
  local TIMEFORMAT='%R %U %S'
  times=$( { time nice -n "${FUZZ_NICE:-10}" "$BIN_DIR/$t" "$work" "$seeds" \
      "${budget[@]}" -timeout="${FUZZ_TIMEOUT:-10}" -rss_limit_mb=2048 \
      -print_final_stats=1 -artifact_prefix="$art/" $(dict_for "$t") "${par[@]}" \
      ${FUZZ_ARGS:-} >"$log" 2>&1 || echo "rc=$?" >>"$log"; } 2>&1 )
  rc=$(sed -n 's/^rc=//p' "$log" | tail -1); rc=${rc:-0}
  read -r wall user sys <<<"$times"
  local cpu execs eps cov ft corp_files corp_kib crashes last
  cpu=$(awk -v u="$user" -v s="$sys" 'BEGIN{printf "%.0f", u+s}')
  last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  [ -z "$execs" ] && execs=$(sed -E -n 's/^#([0-9]+).*/\1/p' <<<"$last")
  execs=${execs:-0}
  eps=$(awk -v e="$execs" -v w="$wall" 'BEGIN{ if (w > 0) printf "%.0f", e/w; else print 0 }')
  cov=$(sed -E -n 's/.*cov: ([0-9]+).*/\1/p' <<<"$last"); cov=${cov:--}
  ft=$(sed -E -n 's/.*ft: ([0-9]+).*/\1/p' <<<"$last"); ft=${ft:--}
  corp_files=$(find "$work" -type f | wc -l)
  corp_kib=$(find "$work" -type f -printf '%s\n' | awk '{s += $1} END {printf "%.0f", s / 1024}')
  crashes=$(( $(find "$art" -type f | wc -l) - before ))
  printf '| %-10s | %6.0f | %6s | %10s | %7s | %5s | %6s | %5s / %5s | %3s seeds | %7s |\n' \
    "$t" "$wall" "$cpu" "$execs" "$eps" "$cov" "$ft" "$corp_files" "${corp_kib}K" \
    "$(find "$seeds" -type f | wc -l)" "$crashes" | tee -a "$REPORT"
  if [ "$rc" != 0 ] || [ "$crashes" -gt 0 ]; then
    CRASHED+=("$t")
    echo "   !! $t: exit $rc, $crashes new artifact(s) in $art; log $log:" >&2
    grep -E -A25 'panicked|ERROR: libFuzzer|==[0-9]+==|SUMMARY' "$log" | head -60 >&2 || tail -40 "$log" >&2
  fi
}

fuzz_many() {
  local mode=$1 secs=$2 jobs=$3; shift 3
  local targets=("$@")
  [ ${#targets[@]} -eq 0 ] && targets=("${ALL_TARGETS[@]}")
  build
  REPORT=$TARGET_DIR/report-$mode.md
  CRASHED=()
  local start=$SECONDS
  {
    local budget="${secs} s per target"
    [ "$secs" = 0 ] && budget="fixed inputs per target (seed ${FUZZ_SMOKE_SEED:-20261204}, scale ${FUZZ_SMOKE_SCALE:-1})"
    echo "Fuzzing ($mode): ${budget}, ${jobs} job(s), $(nproc) CPU(s), $(date -u +%FT%TZ), $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    echo
    echo "| target     | wall s | CPU s  |      execs |  exec/s |   cov |     ft |  corpus files / size | seeds     | crashes |"
    echo "|------------|--------|--------|------------|---------|-------|--------|---------------------|-----------|---------|"
  } | tee "$REPORT"
  for t in "${targets[@]}"; do
    run_one "$t" "$secs" "$jobs"
  done
  echo | tee -a "$REPORT"
  echo "cov/ft: libFuzzer's edge coverage and features at the end; corpus: target/fuzz/corpus/<target> (smoke: target/fuzz/smoke/<target>, fresh each run). Total $((SECONDS - start)) s." | tee -a "$REPORT"
  if [ ${#CRASHED[@]} -gt 0 ]; then
    echo "== fuzz $mode FAILED: crashes in ${CRASHED[*]} (inputs in fuzz/artifacts/; reproduce with scripts/fuzz.sh repro TARGET FILE)" >&2
    return 1
  fi
  echo "== fuzz $mode: no crashes"
}

mode=${1:-smoke}
shift || true
case "$mode" in
  build) build ;;
  smoke) fuzz_many smoke 0 1 "$@" ;;
  long) fuzz_many long "${FUZZ_SECONDS:-900}" "${FUZZ_JOBS:-1}" "$@" ;;
  run)
    t=${1:?usage: scripts/fuzz.sh run TARGET [libFuzzer args]}; shift
    build
    mkdir -p "$TARGET_DIR/corpus/$t" "fuzz/artifacts/$t"
    exec nice -n "${FUZZ_NICE:-10}" "$BIN_DIR/$t" "$TARGET_DIR/corpus/$t" "fuzz/corpus/$t" \
      -artifact_prefix="fuzz/artifacts/$t/" -print_final_stats=1 $(dict_for "$t") "$@" ;;
  repro)
    t=${1:?usage: scripts/fuzz.sh repro TARGET FILE}; f=${2:?usage: scripts/fuzz.sh repro TARGET FILE}
    build
    RUST_BACKTRACE=1 "$BIN_DIR/$t" "$f" ;;
  seeds)
    echo "== writing seed corpora (fuzz/examples/seeds.rs)"
    cargo run --quiet --manifest-path fuzz/Cargo.toml --example seeds --target-dir target/fuzz-seeds ;;
  *) sed -n '2,26p' "$0"; exit 2 ;;
esac
