#!/usr/bin/env bash
# Instructions per request under valgrind's callgrind: a figure that does not move with
# the machine's load (unlike req/s and CPU time on this shared 2-core box).
#
#   ./callgrind.sh /tmp/kb-old ../target/dist/keybridge     # keybridge binaries to compare
#
# For each binary: start it (one worker, the run.sh config: 1000 keys over 20 clients,
# audit on, access log off) under callgrind with instrumentation off, wait until ready, switch
# collection on, send CASE (get|post) requests with wrk for SECONDS, switch it off, and
# report instructions (Ir) / requests. Env: CASE (get), RUN_SECONDS (15), CONNS (4).
set -euo pipefail
BENCH=$(cd "$(dirname "$0")" && pwd); export BENCH
CASE=${CASE:-get}; SECONDS_RUN=${RUN_SECONDS:-15}; CONNS=${CONNS:-4}
command -v valgrind >/dev/null || { echo "apt-get install -y valgrind" >&2; exit 1; }
[ -x "$BENCH/target/release/bench-upstream" ] || (cd "$BENCH" && cargo build --release -q)
[ -f "$BENCH/gen/keys.tsv" ] || (cd "$BENCH" && python3 gen_keys.py)
export KEYS_TSV=$BENCH/gen/keys.tsv UPSTREAM_ADDR=127.0.0.1:18280 PROXY_PORT=18290
out=$(mktemp -d)
if curl -s "http://127.0.0.1:$((PROXY_PORT + 1))/healthz" >/dev/null 2>&1; then
  echo "port $((PROXY_PORT + 1)) is taken (an earlier run still going?)" >&2; exit 1
fi
setsid "$BENCH/target/release/bench-upstream" "$UPSTREAM_ADDR" >/dev/null 2>&1 & UP=$!
trap 'kill -- -$UP 2>/dev/null || true' EXIT
sleep 0.5
printf '| binary | case | requests | instructions (Ir) | Ir / request |\n|---|---|---:|---:|---:|\n'
for bin in "$@"; do
  name=$(basename "$bin")
  wrapper=$out/wrap-$name.sh
  printf '#!/bin/sh\nexec valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=%s "%s" "$@"\n' \
    "$out/$name.cg" "$(realpath "$bin")" > "$wrapper"; chmod +x "$wrapper"
  KEYBRIDGE_BIN=$wrapper WORKERS=1 setsid bash "$BENCH/keybridge-candidate.sh" >"$out/$name.log" 2>&1 & PG=$!
  for _ in $(seq 1 240); do
    curl -sf "http://127.0.0.1:$((PROXY_PORT + 1))/readyz" >/dev/null 2>&1 && break; sleep 0.5
  done
  vpid=$(pgrep -f "callgrind-out-file=$out/$name.cg" | head -1)
  callgrind_control -i on "$vpid" >/dev/null
  res=$(MODE=key CASE=$CASE KEYS=$KEYS_TSV wrk -t1 -c"$CONNS" -d"${SECONDS_RUN}s" --timeout 10s \
          -s "$BENCH/conf/wrk.lua" "http://127.0.0.1:$PROXY_PORT" | awk '/requests in/ {print $1}')
  callgrind_control -i off "$vpid" >/dev/null
  kill -TERM -- -"$PG" 2>/dev/null || true; wait "$PG" 2>/dev/null || true
  while pgrep -f "callgrind-out-file=$out/$name.cg" >/dev/null; do sleep 0.2; done
  ir=$(callgrind_annotate "$out/$name.cg" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1}')
  printf '| %s | %s | %s | %s | %s |\n' "$bin" "$CASE" "$res" "$ir" "$(( ir / res ))"
done
