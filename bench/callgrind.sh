#!/usr/bin/env bash
# Instructions per request under valgrind's callgrind: a figure that does not move with
# the machine's load (unlike req/s and CPU time on this shared 2-core box).
#
#   ./callgrind.sh                                   # nginx, hyper-floor, ../target/dist/keybridge
#   ./callgrind.sh nginx /tmp/kb-old ../target/dist/keybridge   # any mix, in this order
#
# A candidate is `nginx` (1 worker, master_process off, the run.sh map swap), `hyper-floor`
# (the naive hyper 1 pass-through with its HashMap key swap: hyper-util legacy client,
# multi-thread tokio) or the path of a keybridge binary (one worker, the run.sh config:
# 1000 keys over 20 clients, audit on, shaping on far above the load, access log off).
# Each starts under callgrind with instrumentation off; once it answers, collection is
# switched on, the same CASE (get|post) requests are sent with wrk (key mode: every
# request carries X-COUPA-API-KEY, one of the 1000 keys in turn) for RUN_SECONDS, it is
# switched off, and the table reports instructions (Ir) / request, and the ratio to the
# first candidate, and heap allocations per request (calls into malloc/mimalloc counted from
# the same callgrind file by cg_allocs.py, the whole process, audit included).
# Env: CASE (get), RUN_SECONDS (15), CONNS (4), KEEP (keep the .cg files).
# keybridge's audit flush is moved out of the window (flush_interval 1h): a flush costs by
# the integrations it writes, not by requests, so inside a 15 s window it made the count
# depend on how many requests valgrind managed (one flush or two, over 11k or 26k
# requests: 51k–57k Ir/request for one binary). The request path's own recording is counted.
set -euo pipefail
BENCH=$(cd "$(dirname "$0")" && pwd); export BENCH
CASE=${CASE:-get}; SECONDS_RUN=${RUN_SECONDS:-15}; CONNS=${CONNS:-4}
[ $# -gt 0 ] || set -- nginx hyper-floor "$BENCH/../target/dist/keybridge"
command -v valgrind >/dev/null || { echo "apt-get install -y valgrind" >&2; exit 1; }
command -v wrk >/dev/null || { echo "apt-get install -y wrk" >&2; exit 1; }
if [ ! -x "$BENCH/target/release/bench-upstream" ] || [ ! -x "$BENCH/target/release/hyperfloor" ]; then
  (cd "$BENCH" && cargo build --release -q)
fi
[ -f "$BENCH/gen/keys.tsv" ] || (cd "$BENCH" && python3 gen_keys.py)
export KEYS_TSV=$BENCH/gen/keys.tsv UPSTREAM_ADDR=127.0.0.1:18280 PROXY_PORT=18290
out=$(mktemp -d)
if curl -s "http://127.0.0.1:$PROXY_PORT/" >/dev/null 2>&1; then
  echo "port $PROXY_PORT is taken (an earlier run still going?)" >&2; exit 1
fi
setsid "$BENCH/target/release/bench-upstream" "$UPSTREAM_ADDR" >/dev/null 2>&1 & UP=$!
PG=""
trap 'kill -- -$UP 2>/dev/null || true; [ -n "$PG" ] && kill -KILL -- -$PG 2>/dev/null; [ -n "${KEEP:-}" ] || rm -rf "$out"' EXIT
sleep 0.5
key=$(head -1 "$KEYS_TSV" | cut -f1)
echo "# callgrind: case=$CASE ${SECONDS_RUN}s conns=$CONNS valgrind $(valgrind --version) $(date -Is)"
printf '| candidate | case | requests | instructions (Ir) | Ir / request | ratio to %s | heap allocations / request |\n|---|---|---:|---:|---:|---:|---:|\n' "$1"
first=""
i=0
for cand in "$@"; do
  i=$((i + 1))
  cg=$out/$i.cg
  vg=(valgrind --tool=callgrind --instr-atstart=no "--callgrind-out-file=$cg")
  case "$cand" in
    nginx)
      dir=$out/nginx; mkdir -p "$dir"
      sed -e "s|@WORKERS@|1|g" -e "s|@PORT@|$PROXY_PORT|g" -e "s|@UPSTREAM@|$UPSTREAM_ADDR|g" \
          -e "s|@RUNDIR@|$dir|g" -e "s|@GEN@|$BENCH/gen|g" "$BENCH/conf/nginx.conf.tmpl" > "$dir/nginx.conf"
      setsid "${vg[@]}" nginx -p "$dir" -c "$dir/nginx.conf" -g 'daemon off; master_process off;' \
        >"$out/$i.log" 2>&1 & PG=$! ;;
    hyper-floor)
      setsid "${vg[@]}" "$BENCH/target/release/hyperfloor" "127.0.0.1:$PROXY_PORT" "$UPSTREAM_ADDR" "$KEYS_TSV" \
        >"$out/$i.log" 2>&1 & PG=$! ;;
    *)
      printf '#!/bin/sh\nexec valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=%s "%s" "$@"\n' \
        "$cg" "$(realpath "$cand")" > "$out/wrap-$i.sh"; chmod +x "$out/wrap-$i.sh"
      KEYBRIDGE_BIN=$out/wrap-$i.sh WORKERS=1 AUDIT_FLUSH=1h setsid bash "$BENCH/keybridge-candidate.sh" >"$out/$i.log" 2>&1 & PG=$! ;;
  esac
  ok=""
  for _ in $(seq 1 240); do
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "X-COUPA-API-KEY: $key" \
             "http://127.0.0.1:$PROXY_PORT/api/invoices?limit=1" 2>/dev/null || true)
    [ "$code" = 200 ] && { ok=1; break; }; sleep 0.5
  done
  [ -n "$ok" ] || { echo "$cand never answered 200 (log: $out/$i.log)" >&2; KEEP=1; exit 1; }
  vpid=$(pgrep -f -- "--callgrind-out-file=$cg" | head -1)
  callgrind_control -i on "$vpid" >/dev/null
  res=$(MODE=key CASE=$CASE KEYS=$KEYS_TSV wrk -t1 -c"$CONNS" -d"${SECONDS_RUN}s" --timeout 10s \
          -s "$BENCH/conf/wrk.lua" "http://127.0.0.1:$PROXY_PORT" | sed -n 's/^RESULT requests=\([0-9]*\).*non2xx=\([0-9]*\).*/\1 \2/p')
  callgrind_control -i off "$vpid" >/dev/null
  kill -TERM -- -"$PG" 2>/dev/null || true; wait "$PG" 2>/dev/null || true
  while pgrep -f -- "--callgrind-out-file=$cg" >/dev/null; do sleep 0.2; done
  PG=""
  read -r n bad <<<"$res"
  [ "${bad:-1}" = 0 ] || { echo "$cand: $bad non-2xx responses" >&2; KEEP=1; exit 1; }
  ir=$(callgrind_annotate "$cg" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); if (!done) print $1; done = 1}')
  per=$(( ir / n ))
  allocs=$(python3 "$BENCH/cg_allocs.py" "$cg")
  [ -n "$first" ] || first=$per
  printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$cand" "$CASE" "$n" "$ir" "$per" \
    "$(awk -v a="$per" -v b="$first" 'BEGIN { printf "%.2f", a / b }')" \
    "$(awk -v a="$allocs" -v b="$n" 'BEGIN { printf "%.1f", a / b }')"
done
[ -z "${KEEP:-}" ] || echo "callgrind files kept in $out"
