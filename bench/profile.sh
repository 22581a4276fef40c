#!/usr/bin/env bash
# Where does sift-proxy spend its time on short connections (scenario s3)?
# Runs sift-proxy alone on the proxy CPU with an opaque listener in front of the
# siftbench HTTP/1.1 backend, drives short connections at it, and prints
#   1. a CPU profile: `perf record -e cpu-clock -g` (a software clock, which
#      works inside VMs without hardware counters), top symbols by self time;
#   2. syscalls per connection: `strace -f -c`, and the same for HAProxy.
#
#   bash bench/profile.sh [sift-proxy] [siftbench]
#
# Loopback only; every load bounded (PROFILE_SECONDS, default 5).
set -euo pipefail
cd "$(dirname "$0")/.."
SIFT=${1:-bench/.bin/sift-proxy}
SB=${2:-bench/.bin/siftbench}
BASE=${BENCH_PORT_BASE:-15000}
LPORT=$((BASE + 52)) BPORT=$((BASE + 152)) HPORT=$((BASE + 53))
SECS=${PROFILE_SECONDS:-5}
PCPU=${BENCH_PROXY_CPU:-1} LCPU=${BENCH_LOAD_CPU:-0}
WORK=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
listening() { grep -q "$(printf ':%04X ' "$1").* 0A " /proc/net/tcp; }
wait_listen() { for _ in $(seq 1 200); do listening "$1" && return 0; sleep 0.05; done; echo "nothing on $1" >&2; return 1; }
wait_gone() { for _ in $(seq 1 100); do listening "$1" || return 0; sleep 0.05; done; }
stop() { # pid: TERM, then KILL
  kill -TERM "$1" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
}
load() { taskset -c "$LCPU" "$SB" load short-http -addr "127.0.0.1:$LPORT" -c 16 -d "${1}s"; }
ops() { sed -n 's/.*"ops":\([0-9]*\).*/\1/p'; }

cat > "$WORK/sift.yaml" <<YAML
node: {id: profile, cluster: bench}
static_resources:
  listeners:
  - name: opaque
    address: {socket_address: {address: 127.0.0.1, port_value: $LPORT}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: opaque
          cluster: backend
  clusters:
  - name: backend
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: backend
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $BPORT}}}}]}]
YAML
# The same backend behind Sift's HTTP connection manager (scenario s4).
cat > "$WORK/sift-http.yaml" <<YAML
node: {id: profile, cluster: bench}
static_resources:
  listeners:
  - name: http
    address: {socket_address: {address: 127.0.0.1, port_value: $HPORT}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: http
          codec_type: AUTO
          route_config:
            name: r
            virtual_hosts: [{name: all, domains: ["*"], routes: [{match: {prefix: "/"}, route: {cluster: backend}}]}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
  - name: backend
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: backend
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $BPORT}}}}]}]
YAML
cat > "$WORK/haproxy.cfg" <<CFG
global
    nbthread 1
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
frontend f
    bind 127.0.0.1:$LPORT
    default_backend b
backend b
    server s0 127.0.0.1:$BPORT
CFG

taskset -c "$LCPU" "$SB" serve http1 -addr "127.0.0.1:$BPORT" >/dev/null 2>&1 & pids+=($!)
wait_listen "$BPORT"

echo "== 1. CPU profile of sift-proxy under short connections (16 clients, ${SECS}s, opaque listener)"
taskset -c "$PCPU" "$SIFT" -c "$WORK/sift.yaml" -l warning --drain-time-s 1 >"$WORK/sift.log" 2>&1 & SP=$!; pids+=($SP)
wait_listen "$LPORT"
load 1 >/dev/null # warm up
if command -v perf >/dev/null 2>&1; then
  perf record -e cpu-clock -F 1999 -g -p "$SP" -o "$WORK/perf.data" -- sleep "$SECS" >/dev/null 2>&1 & PR=$!
  res=$(load "$SECS")
  wait "$PR" || true
  echo "connections: $(echo "$res" | ops) in ${SECS}s"
  echo
  echo "-- top symbols, self time (user and kernel) --"
  perf report -i "$WORK/perf.data" --no-children --stdio --sort sym --percent-limit 1.2 -g none 2>/dev/null \
    | grep -v '^#' | grep -v '^$' | head -40
  echo
  echo "-- time by area --"
  perf report -i "$WORK/perf.data" --no-children --stdio --sort dso -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -8
else
  echo "perf not installed (apt-get install linux-perf): no CPU profile"
fi
stop "$SP"; wait_gone "$LPORT"

echo
echo "== 2. CPU profile of sift-proxy on HTTP/1.1 keep-alive (wrk -t1 -c32, ${SECS}s, http_connection_manager)"
if command -v perf >/dev/null 2>&1 && command -v wrk >/dev/null 2>&1; then
  taskset -c "$PCPU" "$SIFT" -c "$WORK/sift-http.yaml" -l warning --drain-time-s 1 >"$WORK/sift-http.log" 2>&1 & SP=$!; pids+=($SP)
  if wait_listen "$HPORT"; then
    perf record -e cpu-clock -F 1999 -g -p "$SP" -o "$WORK/perf-http.data" -- sleep "$SECS" >/dev/null 2>&1 & PR=$!
    taskset -c "$LCPU" wrk -t1 -c32 -d"${SECS}s" "http://127.0.0.1:$HPORT/" | grep -E 'Requests/sec|requests in|Socket errors|Non-2xx'
    wait "$PR" || true
    echo
    echo "-- top symbols, self time --"
    perf report -i "$WORK/perf-http.data" --no-children --stdio --sort sym --percent-limit 1.2 -g none 2>/dev/null \
      | grep -v '^#' | grep -v '^$' | head -40
    echo
    echo "-- top Go functions including callees (cumulative) --"
    perf report -i "$WORK/perf-http.data" --children --stdio --sort sym --percent-limit 4 -g none 2>/dev/null \
      | grep -v '^#' | grep -v '^$' | grep -v '\[k\]' | head -30
    echo
    echo "-- time by area --"
    perf report -i "$WORK/perf-http.data" --no-children --stdio --sort dso -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -8
  else
    echo "sift-proxy did not start with an HTTP listener: $(tail -3 "$WORK/sift-http.log" | tr '\n' ' ')"
  fi
  stop "$SP"
else
  echo "perf or wrk missing: no HTTP profile"
fi

for proxy in sift haproxy; do
  echo
  echo "== 3. syscalls per connection: $proxy (strace -f -c, 16 clients, 3s; strace slows it, counts are what matter)"
  if [ $proxy = sift ]; then
    strace -f -c -o "$WORK/strace-$proxy.txt" taskset -c "$PCPU" "$SIFT" -c "$WORK/sift.yaml" -l warning --drain-time-s 1 >/dev/null 2>&1 & ST=$!
  else
    strace -f -c -o "$WORK/strace-$proxy.txt" taskset -c "$PCPU" haproxy -db -f "$WORK/haproxy.cfg" >/dev/null 2>&1 & ST=$!
  fi
  pids+=($ST)
  wait_listen "$LPORT"
  n=$(load 3 | ops)
  child=$(ps --ppid "$ST" -o pid= | tr -d ' ' | head -1)
  [ -n "$child" ] && stop "$child"
  for _ in $(seq 1 100); do kill -0 "$ST" 2>/dev/null || break; sleep 0.1; done
  wait "$ST" 2>/dev/null || true
  wait_gone "$LPORT"
  echo "connections: $n"
  # strace -c columns: % time, seconds, usecs/call, calls, [errors], syscall
  awk -v n="$n" 'NR>2 && $1 !~ /^-/ && NF>=5 && $NF!="total" { printf "  %-18s %9d calls  %6.2f per connection\n", $NF, $4, $4/n }' "$WORK/strace-$proxy.txt" \
    | sort -k2 -n -r | head -16
  awk -v n="$n" 'NR>2 && $NF=="total" { printf "  %-18s %9d calls  %6.2f per connection\n", "TOTAL", $4, $4/n }' "$WORK/strace-$proxy.txt"
done
