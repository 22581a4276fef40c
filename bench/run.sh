#!/usr/bin/env bash
# make bench: Sift side by side with HAProxy, nginx and a direct connection.
#
#   bash bench/run.sh              full run (3 interleaved repeats, ~15 min on 2 cores)
#   BENCH_QUICK=1 bash bench/run.sh    smoke run (1 repeat, short loads, < 3 min)
#
# Other knobs (environment): BENCH_SCENARIOS=s1,s3  BENCH_TARGETS=direct,sift,haproxy
# BENCH_PROXY_CPU=1 BENCH_LOAD_CPU=0  BENCH_PORT_BASE=15000  BENCH_SPLICECHECK=0  BENCH_PROFILE=0
# Extra arguments go to `siftbench run` (see `bench/.bin/siftbench run -h`).
#
# It installs what it lacks (apt: haproxy nginx libnginx-mod-stream wrk
# nghttp2-client iperf3 strace, and linux-perf for the profile; Go: fortio),
# builds Sift and the harness,
# and writes bench/results/latest.md, PNG charts and CSVs. All traffic stays
# on 127.0.0.1; every load is bounded in time and count.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=bench/.bin
mkdir -p "$BIN" bench/results

log() { printf '%s run.sh: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# --- tools ---------------------------------------------------------------
missing=()
for pair in haproxy:haproxy nginx:nginx wrk:wrk h2load:nghttp2-client iperf3:iperf3 strace:strace taskset:util-linux; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
if ! nginx -V 2>&1 | grep -q -- '--with-stream[^_=]' && [ ! -e /usr/lib/nginx/modules/ngx_stream_module.so ]; then
  missing+=(libnginx-mod-stream)
fi
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
GOBIN_DIR=$(go env GOBIN); [ -n "$GOBIN_DIR" ] || GOBIN_DIR=$(go env GOPATH)/bin
FORTIO=$(command -v fortio || true)
[ -n "$FORTIO" ] || FORTIO=$GOBIN_DIR/fortio
if [ ! -x "$FORTIO" ]; then
  log "installing fortio"
  go install fortio.org/fortio@v1.68.0
fi

# --- builds --------------------------------------------------------------
log "building the harness"
(cd bench && go build -o .bin/siftbench ./cmd/siftbench)
SIFT_ARGS=()
if out=$(go build -o "$BIN/sift-proxy" ./cmd/sift-proxy 2>&1); then
  SIFT_ARGS=(-sift "$BIN/sift-proxy")
  log "built sift-proxy"
else
  why="go build ./cmd/sift-proxy failed: $(printf '%s' "$out" | head -3 | tr '\n' ' ')"
  log "$why"
  rm -f "$BIN/sift-proxy"
  SIFT_ARGS=(-sift-unavailable "$why")
fi

# s9 asks the example Redis sniffer plugin.
if go build -o "$BIN/redis-plugin" ./examples/plugins/redis 2>/dev/null; then
  SIFT_ARGS+=(-plugin "$ROOT/$BIN/redis-plugin")
else
  log "go build ./examples/plugins/redis failed: s9 runs without Sift's plugin case"
fi

# --- limits and pinning --------------------------------------------------
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
ncpu=$(nproc)
PROXY_CPU=${BENCH_PROXY_CPU:-1}
LOAD_CPU=${BENCH_LOAD_CPU:-0}
if [ "$ncpu" -lt 2 ]; then
  log "only one CPU: proxy and load share CPU 0 (ratios still comparable, absolute numbers lower)"
  PROXY_CPU=0 LOAD_CPU=0
fi
export BENCH_PROXY_CPU=$PROXY_CPU BENCH_LOAD_CPU=$LOAD_CPU
if [ "${BENCH_QUICK:-}" = 1 ]; then # keep the smoke run under 3 minutes
  export PROFILE_SECONDS=${PROFILE_SECONDS:-2} SPLICECHECK_SECONDS=${SPLICECHECK_SECONDS:-2}
fi

# --- zero-copy evidence (Sift only) ---------------------------------------
if [ -x "$BIN/sift-proxy" ] && [ "${BENCH_SPLICECHECK:-1}" != 0 ]; then
  rm -f bench/results/splicecheck.txt
  log "splicecheck: sift-proxy under strace during an iperf3 transfer"
  if ! bash bench/splicecheck.sh "$BIN/sift-proxy" > bench/results/splicecheck.txt 2>&1; then
    log "splicecheck failed (see bench/results/splicecheck.txt)"
  fi
fi

# --- where Sift spends its time on short connections (perf + strace) ------
if [ -x "$BIN/sift-proxy" ] && [ "${BENCH_PROFILE:-1}" != 0 ]; then
  rm -f bench/results/profile.txt
  command -v perf >/dev/null 2>&1 || { log "installing linux-perf"; apt-get install -y -qq linux-perf >/dev/null 2>&1 || true; }
  log "profile: sift-proxy under short connections (perf record -e cpu-clock, strace -c)"
  if ! bash bench/profile.sh "$BIN/sift-proxy" "$BIN/siftbench" > bench/results/profile.txt 2>&1; then
    log "profile failed (see bench/results/profile.txt)"
  fi
fi

# --- the benchmark -------------------------------------------------------
log "running siftbench (proxy on CPU $PROXY_CPU, load on CPU $LOAD_CPU)"
taskset -c "$LOAD_CPU" "$BIN/siftbench" run "${SIFT_ARGS[@]}" -fortio "$FORTIO" \
  -out bench/results -work bench/.work -wrk-script bench/wrk/percentiles.lua "$@"
log "done: bench/results/latest.md"
