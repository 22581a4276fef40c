#!/usr/bin/env bash
# Zero-copy evidence for Sift's opaque TCP path: run sift-proxy under
# `strace -f -c` while iperf3 pushes data through an opaque (tcp_proxy)
# listener, and count splice(2) against read/write-family syscalls.
#
#   bash bench/splicecheck.sh [path/to/sift-proxy]
#
# strace slows the proxy down a lot: the throughput printed here is not a
# benchmark figure; the syscall counts are the point. Loopback only, bounded.
set -euo pipefail
cd "$(dirname "$0")/.."
SIFT=${1:-bench/.bin/sift-proxy}
BASE=${BENCH_PORT_BASE:-15000}
LPORT=$((BASE + 51)) BPORT=$((BASE + 151))
SECS=${SPLICECHECK_SECONDS:-3}
WORK=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

listening() { # port → 0 when something listens on 127.0.0.1:port (reads /proc, opens no connection)
  local hex; hex=$(printf ':%04X ' "$1")
  grep -q "$hex.* 0A " /proc/net/tcp
}
wait_listen() {
  for _ in $(seq 1 200); do listening "$1" && return 0; sleep 0.05; done
  echo "nothing listening on $1" >&2; return 1
}

cat > "$WORK/sift.yaml" <<YAML
node: {id: splicecheck, cluster: bench}
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

iperf3 -s -B 127.0.0.1 -p "$BPORT" >/dev/null 2>&1 & pids+=($!)
strace -f -c -e trace=splice,read,write,readv,writev,recvfrom,sendto,recvmsg,sendmsg -o "$WORK/strace.txt" \
  "$SIFT" -c "$WORK/sift.yaml" -l warning --drain-time-s 1 >"$WORK/sift.log" 2>&1 & STRACE=$!
pids+=($STRACE)
wait_listen "$BPORT"
wait_listen "$LPORT"
iperf3 -c 127.0.0.1 -p "$LPORT" -t "$SECS" -J > "$WORK/iperf.json"
# Stop sift-proxy itself (strace ignores SIGINT in a background job); strace
# prints its summary when its tracee exits.
SIFTPID=$(ps --ppid "$STRACE" -o pid= | tr -d ' ' | head -1)
[ -n "$SIFTPID" ] && kill -TERM "$SIFTPID"
for _ in $(seq 1 100); do kill -0 "$STRACE" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$STRACE" 2>/dev/null; then [ -n "$SIFTPID" ] && kill -KILL "$SIFTPID"; fi
wait "$STRACE" 2>/dev/null || true

bytes=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["end"]["sum_received"]["bytes"])' "$WORK/iperf.json" 2>/dev/null \
  || grep -o '"bytes":[[:space:]]*[0-9]*' "$WORK/iperf.json" | tail -1 | grep -o '[0-9]*$')
count() { awk -v s="$1" '$NF==s {print $4}' "$WORK/strace.txt" | head -1; }
splice=$(count splice); splice=${splice:-0}
rw=0
for s in read write readv writev recvfrom sendto recvmsg sendmsg; do c=$(count "$s"); rw=$((rw + ${c:-0})); done

echo "sift-proxy opaque tcp_proxy under strace -f -c, iperf3 1 stream for ${SECS}s through 127.0.0.1:$LPORT"
echo "bytes carried: $bytes"
echo
cat "$WORK/strace.txt"
echo
echo "splice calls: $splice; read/write-family calls: $rw"
if [ "$splice" -gt 0 ] && [ "$bytes" -gt 0 ]; then
  echo "bytes per splice call: $((bytes / splice)) (each byte is spliced twice: socket→pipe, pipe→socket)"
fi
if [ "$splice" -gt 0 ] && [ "$rw" -lt "$splice" ]; then
  echo "verdict: ZERO-COPY — the payload moves by splice(2); the few reads/writes are the proxy's own (config, logs, control)."
elif [ "$splice" -gt 0 ]; then
  echo "verdict: MIXED — splice is used, but read/write calls are as many or more; check which path copies."
else
  echo "verdict: NO SPLICE — the payload goes through user space (read/write)."
fi
