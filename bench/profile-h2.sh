#!/usr/bin/env bash
# Where do HTTP/2 and gRPC calls through sift-proxy go (scenario s5)?
# Runs the proxy alone on the proxy CPU with an h2c and a gRPC listener in
# front of siftbench's h2c and grpc-go backends (load CPU), drives each with
# the s5 loads, and prints per request:
#   1. read(2)/write(2) calls of the proxy and of the backend, from
#      /proc/<pid>/io syscr/syscw deltas (no tracer attached: batching depends
#      on timing, and strace would change it) — load-independent counts;
#      PROFILE_STRACE=1 adds every system call by name (strace -f -c; it
#      slows the proxy, and HAProxy's recv/send are not in /proc/<pid>/io);
#   2. optionally (PROFILE_PERF=1) a perf CPU profile of sift-proxy under
#      the gRPC unary load, top symbols by self and cumulative time;
#   3. optionally (PROFILE_PPROF=DIR) Go CPU profiles of sift-proxy under the
#      gRPC unary and h2c loads from its admin server's /debug/pprof/profile
#      (admin on BENCH_PORT_BASE+56), written to DIR/{grpc,h2c}.pprof, with
#      their top entries printed.
#
#   bash bench/profile-h2.sh [sift|haproxy] [sift-proxy] [siftbench]
#
# Loopback only; every load bounded (PROFILE_SECONDS, default 5).
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${1:-sift}
SIFT=${2:-bench/.bin/sift-proxy}
SB=${3:-bench/.bin/siftbench}
BASE=${BENCH_PORT_BASE:-15000}
HPORT=$((BASE + 54)) GPORT=$((BASE + 55)) HB=$((BASE + 154)) GB=$((BASE + 155)) APORT=$((BASE + 56))
SECS=${PROFILE_SECONDS:-5}
PCPU=${BENCH_PROXY_CPU:-1} LCPU=${BENCH_LOAD_CPU:-0}
WORK=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
listening() { grep -q "$(printf ':%04X ' "$1").* 0A " /proc/net/tcp; }
wait_listen() { for _ in $(seq 1 200); do listening "$1" && return 0; sleep 0.05; done; echo "nothing on $1" >&2; return 1; }
io() { awk '/^syscr/ {r=$2} /^syscw/ {w=$2} END {print r, w}' "/proc/$1/io"; }
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; } # user+system clock ticks

cluster() { # name port
  cat <<YAML
  - name: $1
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
    load_assignment:
      cluster_name: $1
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $2}}}}]}]
YAML
}
listener() { # name port cluster
  cat <<YAML
  - name: $1
    address: {socket_address: {address: 127.0.0.1, port_value: $2}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: $1
          codec_type: AUTO
          route_config:
            name: r
            virtual_hosts: [{name: all, domains: ["*"], routes: [{match: {prefix: "/"}, route: {cluster: $3}}]}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
YAML
}
{
  echo "node: {id: profile, cluster: bench}"
  if [ -n "${PROFILE_PPROF:-}" ]; then
    echo "admin: {address: {socket_address: {address: 127.0.0.1, port_value: $APORT}}}"
  fi
  echo "static_resources:"
  echo "  listeners:"
  listener h2 "$HPORT" c_h2
  listener grpc "$GPORT" c_grpc
  echo "  clusters:"
  cluster c_h2 "$HB"
  cluster c_grpc "$GB"
} >"$WORK/sift.yaml"
cat >"$WORK/haproxy.cfg" <<CFG
global
    nbthread 1
defaults
    timeout connect 5s
    timeout client 1h
    timeout server 1h
frontend f_h2
    mode http
    bind 127.0.0.1:$HPORT proto h2
    default_backend b_h2
backend b_h2
    mode http
    http-reuse safe
    server s0 127.0.0.1:$HB proto h2
frontend f_grpc
    mode http
    bind 127.0.0.1:$GPORT proto h2
    default_backend b_grpc
backend b_grpc
    mode http
    http-reuse safe
    server s0 127.0.0.1:$GB proto h2
CFG

taskset -c "$LCPU" "$SB" serve h2c -addr "127.0.0.1:$HB" >/dev/null 2>&1 & HBP=$!; pids+=($HBP)
taskset -c "$LCPU" "$SB" serve grpc -addr "127.0.0.1:$GB" >/dev/null 2>&1 & GBP=$!; pids+=($GBP)
wait_listen "$HB"; wait_listen "$GB"
if [ "$TARGET" = sift ]; then
  taskset -c "$PCPU" "$SIFT" -c "$WORK/sift.yaml" -l warning --drain-time-s 1 >"$WORK/proxy.log" 2>&1 & PX=$!
else
  taskset -c "$PCPU" haproxy -db -f "$WORK/haproxy.cfg" >"$WORK/proxy.log" 2>&1 & PX=$!
fi
pids+=($PX)
wait_listen "$HPORT"; wait_listen "$GPORT"

# per_call name backend-pid ops-command...: runs the load, prints counts per op.
per_call() {
  local name=$1 bp=$2; shift 2
  read -r pr0 pw0 < <(io "$PX"); read -r br0 bw0 < <(io "$bp"); local c0; c0=$(cpu "$PX")
  local ST=""
  if [ "${PROFILE_STRACE:-0}" = 1 ]; then # all system calls, by name (strace slows the proxy)
    strace -f -c -p "$PX" -o "$WORK/strace-$name.txt" 2>/dev/null & ST=$!
    sleep 0.5
  fi
  local n; n=$("$@")
  if [ -n "$ST" ]; then
    kill -INT "$ST"; wait "$ST" 2>/dev/null || true
    awk -v n="$n" 'NR>2 && $1 !~ /^-/ && NF>=5 && $NF!="total" && $4/n >= 0.05 { printf "    %s %.2f", $NF, $4/n } END { print "" }' "$WORK/strace-$name.txt"
  fi
  read -r pr1 pw1 < <(io "$PX"); read -r br1 bw1 < <(io "$bp"); local c1; c1=$(cpu "$PX")
  awk -v name="$name" -v n="$n" -v pr=$((pr1 - pr0)) -v pw=$((pw1 - pw0)) -v br=$((br1 - br0)) -v bw=$((bw1 - bw0)) -v s="$SECS" \
    -v cpu=$((c1 - c0)) -v hz="$(getconf CLK_TCK)" \
    'BEGIN { printf "%-15s %7d ops (%6.0f/s)  proxy: %5.2f read %5.2f write %5.1f CPU-us  backend: %5.2f read %5.2f write  per op\n", name, n, n/s, pr/n, pw/n, cpu/hz*1e6/n, br/n, bw/n }'
}
h2load_ops() { taskset -c "$LCPU" h2load -c 32 -m 10 -t 1 -D "$SECS" ${PROFILE_RATE:+--rps=$((PROFILE_RATE / 32))} "http://127.0.0.1:$HPORT/" | sed -n 's/^requests: .* \([0-9]*\) succeeded.*/\1/p'; }
# PROFILE_RATE=N: every load at N requests (calls, streamed messages) per
# second instead of as fast as it goes (CPU per call compared at the same
# load; h2load: N/32 per client).
grpc_ops() { taskset -c "$LCPU" "$SB" load grpc -addr "127.0.0.1:$GPORT" -mode "$1" -conns 4 -c 32 -d "${SECS}s" -rate "${PROFILE_RATE:-0}" | sed -n 's/.*"ops":\([0-9]*\).*/\1/p'; }

grpc_ops unary >/dev/null # warm up (connections, pools)
echo "== $TARGET: read/write system calls per request (/proc/<pid>/io), ${SECS}s each"
per_call "h2load h2c" "$HBP" h2load_ops
per_call "gRPC unary" "$GBP" grpc_ops unary
per_call "gRPC streaming" "$GBP" grpc_ops stream

if [ "${PROFILE_PERF:-0}" = 1 ] && [ "$TARGET" = sift ] && command -v perf >/dev/null 2>&1; then
  echo
  echo "== sift-proxy CPU profile under gRPC unary (perf, ${SECS}s)"
  perf record -e cpu-clock -F 1999 -g -p "$PX" -o "$WORK/perf.data" -- sleep "$SECS" >/dev/null 2>&1 & PR=$!
  echo "calls: $(grpc_ops unary)"
  wait "$PR" || true
  echo "-- top symbols, self time --"
  perf report -i "$WORK/perf.data" --no-children --stdio --sort sym --percent-limit 1.5 -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -30
  echo "-- cumulative (Go functions) --"
  perf report -i "$WORK/perf.data" --children --stdio --sort sym --percent-limit 4 -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | grep -v '\[k\]' | head -30
fi

if [ -n "${PROFILE_PPROF:-}" ] && [ "$TARGET" = sift ]; then
  mkdir -p "$PROFILE_PPROF"
  for what in grpc h2c; do
    echo
    echo "== sift-proxy Go CPU profile under $what (${SECS}s): $PROFILE_PPROF/$what.pprof"
    curl -s -o "$PROFILE_PPROF/$what.pprof" "http://127.0.0.1:$APORT/debug/pprof/profile?seconds=$SECS" & CP=$!
    curl -s -o "$PROFILE_PPROF/$what.allocs" "http://127.0.0.1:$APORT/debug/pprof/allocs?seconds=$SECS" & AP=$!
    sleep 0.2
    if [ "$what" = grpc ]; then n=$(grpc_ops unary); else n=$(h2load_ops); fi
    wait "$CP" "$AP" || true
    # Allocations (sampled every 512 KiB, scaled) per operation; the
    # profiles cover the load's window within 0.2 s.
    objs=$(go tool pprof -sample_index=alloc_objects -top -nodecount=1 "$PROFILE_PPROF/$what.allocs" 2>/dev/null |
      sed -n 's/.* of \([0-9]*\) total.*/\1/p' | head -1)
    echo "ops: $n, allocations per op (sampled): $(awk -v o="$objs" -v n="$n" 'BEGIN {printf "%.0f", o/n}')"
    go tool pprof -top -cum -nodecount=40 "$SIFT" "$PROFILE_PPROF/$what.pprof" 2>/dev/null | sed -n '1,50p'
  done
fi
