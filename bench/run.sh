#!/usr/bin/env bash
# Proxy header-swap benchmark harness (folded in from shared/bench, extended with the
# keybridge candidates and peak RSS). Only targets 127.0.0.1. Every load run is bounded
# by wrk -d (and an outer `timeout`). See README.md for methodology.
#
#   ./run.sh                                   # built-in candidates, PIN=shared
#   PIN=split ./run.sh                         # wrk on CPU0, upstream+proxy on CPU1
#   PROXY_CMD='./target/release/myproxy --listen 127.0.0.1:$PROXY_PORT --upstream $UPSTREAM_ADDR --keys $KEYS_TSV' \
#   PROXY_PORT=18090 PROXY_NAME=mine CANDIDATES="direct nginx-w1 mine" ./run.sh
#
# Env knobs: DURATION(10) WARMUP(2) CONNS(64) THREADS(2) REPEATS(3) PIN(shared|split)
#   CASES("get post") CANDIDATES(default list below, plus keybridge-fleet: PostgreSQL audit and
#   Redis tokens at BENCH_PG_URL / BENCH_REDIS_URL; PROXY_NAME is appended when PROXY_CMD is set)
#   PROXY_CMD (run via bash -c; sees $PROXY_PORT $UPSTREAM_ADDR $KEYS_TSV $BENCH) PROXY_PORT(18090)
#   PROXY_NAME(candidate) PROXY_MODE(key: client sends X-COUPA-API-KEY | bearer: client sends Authorization)
set -euo pipefail
cd "$(dirname "$0")"
BENCH=$(pwd); export BENCH
DURATION=${DURATION:-10}; WARMUP=${WARMUP:-2}; CONNS=${CONNS:-64}; THREADS=${THREADS:-2}
REPEATS=${REPEATS:-3}; PIN=${PIN:-shared}; CASES=${CASES:-"get post"}
UP_PORT=18080; export UPSTREAM_ADDR=127.0.0.1:$UP_PORT
export KEYS_TSV=$BENCH/gen/keys.tsv
PROXY_PORT=${PROXY_PORT:-18090}; PROXY_NAME=${PROXY_NAME:-candidate}; PROXY_MODE=${PROXY_MODE:-key}
export PROXY_PORT
ENVOY_BIN=${ENVOY_BIN:-$BENCH/.venv/lib/python3.11/site-packages/envoy/_bin/envoy}
KEYBRIDGE_BIN=${KEYBRIDGE_BIN:-$BENCH/../target/dist/keybridge}; export KEYBRIDGE_BIN
DEFAULT_CANDS="direct nginx-w1 haproxy-t2 hyper-floor keybridge keybridge-noaudit"
[ -x "$ENVOY_BIN" ] && DEFAULT_CANDS="$DEFAULT_CANDS envoy-c1 envoy-c2"
CANDIDATES=${CANDIDATES:-$DEFAULT_CANDS}
if [ -n "${PROXY_CMD:-}" ] && [[ " $CANDIDATES " != *" $PROXY_NAME "* ]]; then CANDIDATES="$CANDIDATES $PROXY_NAME"; fi

case "$PIN" in
  shared) WRK_PIN=""; SRV_PIN="" ;;                                  # everything floats on both cores
  split)  WRK_PIN="taskset -c 0"; SRV_PIN="taskset -c 1" ;;          # load gen | upstream+proxy
  *) echo "PIN must be shared|split" >&2; exit 2 ;;
esac

RUNDIR=$BENCH/runs/$(date +%Y%m%d-%H%M%S)-$PIN; mkdir -p "$RUNDIR"
OUT=$RUNDIR/results.tsv
echo -e "pin\tcase\trepeat\tcandidate\trps\tp50_us\tp90_us\tp99_us\tp999_us\tmax_us\trequests\tnon2xx\tsock_errs\tproxy_cpu_us_per_req\tupstream_cpu_us_per_req\tpeak_rss_kb" > "$OUT"

# ---------- prerequisites ----------
[ -f gen/keys.tsv ] || python3 gen_keys.py
[ -f gen/envoy_filter.lua ] || { cat gen/envoy_keys.lua conf/envoy_filter_body.lua > gen/envoy_filter.lua; }
if [ ! -x target/release/bench-upstream ] || [ ! -x target/release/hyperfloor ]; then cargo build --release -q; fi
if [[ " $CANDIDATES " == *" keybridge"* ]] && [ ! -x "$KEYBRIDGE_BIN" ]; then (cd "$BENCH/.." && cargo build --profile dist -q); fi
command -v wrk >/dev/null || { echo "wrk missing: apt-get install -y wrk nginx haproxy" >&2; exit 1; }

# ---------- process helpers (each server gets its own process group for kill + CPU accounting) ----------
PIDS=()
launch() { # launch NAME CMD... ; sets LAST_PG (pid == pgid thanks to setsid)
  local name=$1; shift
  setsid $SRV_PIN "$@" >>"$RUNDIR/$name.log" 2>&1 </dev/null &
  LAST_PG=$!; PIDS+=("$LAST_PG")
}
stop_pg() { local pg=$1; [ -n "$pg" ] || return 0; kill -TERM -- "-$pg" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 -- "-$pg" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL -- "-$pg" 2>/dev/null || true; sleep 0.2; }
cleanup() { for pg in "${PIDS[@]}"; do stop_pg "$pg"; done; }
trap cleanup EXIT INT TERM
cpu_ticks() { # sum utime+stime (clock ticks) over all processes in process group $1
  cat /proc/[0-9]*/stat 2>/dev/null | awk -v pg="$1" '{ sub(/^.*\) /, ""); if ($3 == pg) s += $12 + $13 } END { print s + 0 }'; }
CLK_TCK=$(getconf CLK_TCK)
peak_rss_kb() { # sum of VmHWM over the processes in group $1
  local pg=$1 total=0 pid hwm
  for pid in $(ps -e -o pid=,pgid= | awk -v pg="$pg" '$2 == pg { print $1 }'); do
    hwm=$(awk '/^VmHWM:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || echo 0)
    total=$(( total + ${hwm:-0} ))
  done
  echo "$total"; }
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done
  echo "port $1 never opened" >&2; return 1; }
port_free() { for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null || return 0; sleep 0.1; done; return 1; }

render() { # render TEMPLATE OUT key=val...
  local tmpl=$1 out=$2; shift 2; cp "$tmpl" "$out"
  for kv in "$@"; do sed -i "s|@${kv%%=*}@|${kv#*=}|g" "$out"; done; }

# ---------- candidates: sets C_PG C_PORT C_MODE ----------
start_candidate() {
  local c=$1; C_PG=""; C_MODE=key
  case "$c" in
    direct) C_PORT=$UP_PORT; C_MODE=bearer; return 0 ;;
    nginx-w*) C_PORT=18081; local w=${c#nginx-w}; mkdir -p "$RUNDIR/nginx-$w"
      render conf/nginx.conf.tmpl "$RUNDIR/nginx-$w/nginx.conf" WORKERS="$w" PORT=$C_PORT UPSTREAM=$UPSTREAM_ADDR RUNDIR="$RUNDIR/nginx-$w" GEN="$BENCH/gen"
      launch "$c" nginx -p "$RUNDIR/nginx-$w" -c "$RUNDIR/nginx-$w/nginx.conf" -g 'daemon off;'; C_PG=$LAST_PG ;;
    haproxy-t*) C_PORT=18082; local t=${c#haproxy-t}
      render conf/haproxy.cfg.tmpl "$RUNDIR/haproxy-$t.cfg" THREADS="$t" PORT=$C_PORT UPSTREAM=$UPSTREAM_ADDR GEN="$BENCH/gen"
      launch "$c" haproxy -db -f "$RUNDIR/haproxy-$t.cfg"; C_PG=$LAST_PG ;;
    hyper-floor) C_PORT=18083; C_MODE=bearer
      launch "$c" "$BENCH/target/release/hyperfloor" 127.0.0.1:$C_PORT $UPSTREAM_ADDR; C_PG=$LAST_PG ;;
    envoy-c*) C_PORT=18084; local n=${c#envoy-c}
      render conf/envoy.yaml.tmpl "$RUNDIR/envoy.yaml" PORT=$C_PORT UPPORT=$UP_PORT GEN="$BENCH/gen"
      launch "$c" "$ENVOY_BIN" -c "$RUNDIR/envoy.yaml" --concurrency "$n" --disable-hot-restart -l error; C_PG=$LAST_PG ;;
    keybridge|keybridge-noaudit|keybridge-w1|keybridge-fleet|keybridge-noshape) C_PORT=18090
      local audit=on workers=0 shaping=far; [ "$c" = keybridge-noaudit ] && audit=off; [ "$c" = keybridge-w1 ] && workers=1
      [ "$c" = keybridge-noshape ] && shaping=off   # rate_limit: off (the default candidate has it on, far above the load)
      [ "$c" = keybridge-fleet ] && audit=fleet   # PostgreSQL audit + Redis tokens (BENCH_PG_URL, BENCH_REDIS_URL)
      launch "$c" env AUDIT=$audit WORKERS=$workers SHAPING=$shaping bash "$BENCH/keybridge-candidate.sh"; C_PG=$LAST_PG ;;
    "$PROXY_NAME") [ -n "${PROXY_CMD:-}" ] || { echo "PROXY_CMD not set" >&2; return 1; }
      C_PORT=$PROXY_PORT; C_MODE=$PROXY_MODE
      launch "$c" bash -c "$PROXY_CMD"; C_PG=$LAST_PG ;;
    *) echo "unknown candidate $c" >&2; return 1 ;;
  esac
  wait_port "$C_PORT"
}

sanity() { # one good and one bad request; aborts the candidate if it does not swap correctly
  local port=$1 mode=$2 key tok code
  key=$(head -1 gen/keys.tsv | cut -f1); tok=$(head -1 gen/keys.tsv | cut -f2)
  if [ "$mode" = key ]; then
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "X-COUPA-API-KEY: $key" "http://127.0.0.1:$port/api/invoices?limit=1")
    [ "$code" = 200 ] || { echo "SANITY FAIL good key -> $code" >&2; return 1; }
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "X-COUPA-API-KEY: nope" "http://127.0.0.1:$port/api/invoices?limit=1")
    [ "$code" = 401 ] || { echo "SANITY FAIL bad key -> $code (want 401)" >&2; return 1; }
  else
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $tok" "http://127.0.0.1:$port/api/invoices?limit=1")
    [ "$code" = 200 ] || { echo "SANITY FAIL bearer -> $code" >&2; return 1; }
  fi
  code=$(head -c 102400 /dev/zero | curl -s -w '%{http_code}' -o "$RUNDIR/post.out" -X POST --data-binary @- \
    -H "X-COUPA-API-KEY: $key" -H "Authorization: Bearer $tok" -H "Content-Type: application/octet-stream" "http://127.0.0.1:$port/api/attachments" || true)
  # (direct/bearer candidates: upstream rejects leaked X-COUPA-API-KEY, so only check POST via proxies)
  if [ "$mode" = key ]; then
    grep -q '"received":102400' "$RUNDIR/post.out" || { echo "SANITY FAIL post -> $code $(cat "$RUNDIR/post.out")" >&2; return 1; }
  fi
}

run_wrk() { # run_wrk PORT MODE CASE SECONDS -> prints RESULT line
  MODE=$2 CASE=$3 KEYS=$KEYS_TSV timeout $(( $4 + 30 )) $WRK_PIN wrk -t"$THREADS" -c"$CONNS" -d"$4s" --timeout 5s \
    -s conf/wrk.lua "http://127.0.0.1:$1" | grep '^RESULT' || echo "RESULT requests=0"
}

field() { local v; v=$(sed -n "s/.*[ ]$1=\([0-9.]*\).*/\1/p" <<<"$2"); echo "${v:-0}"; }

# ---------- main ----------
{
echo "# run $(date -Is) pin=$PIN duration=${DURATION}s warmup=${WARMUP}s conns=$CONNS threads=$THREADS repeats=$REPEATS"
echo "# candidates: $CANDIDATES ; cases: $CASES"
} | tee "$RUNDIR/meta.txt"
port_free $UP_PORT || { echo "port $UP_PORT busy" >&2; exit 1; }
launch upstream "$BENCH/target/release/bench-upstream" $UPSTREAM_ADDR; UP_PG=$LAST_PG
wait_port $UP_PORT
read -r -a CARR <<<"$CANDIDATES"; NC=${#CARR[@]}
for r in $(seq "$REPEATS"); do
  for cs in $CASES; do
    for ((j = 0; j < NC; j++)); do
      c=${CARR[$(( (j + r - 1) % NC ))]}          # rotate order each repeat (interleaved, no fixed position bias)
      start_candidate "$c" || { echo "skip $c" >&2; continue; }
      if ! sanity "$C_PORT" "$C_MODE"; then echo "skip $c (sanity)" >&2; stop_pg "$C_PG"; continue; fi
      run_wrk "$C_PORT" "$C_MODE" "$cs" "$WARMUP" >/dev/null
      p0=0; [ -n "$C_PG" ] && p0=$(cpu_ticks "$C_PG"); u0=$(cpu_ticks "$UP_PG")
      res=$(run_wrk "$C_PORT" "$C_MODE" "$cs" "$DURATION")
      p1=0; [ -n "$C_PG" ] && p1=$(cpu_ticks "$C_PG"); u1=$(cpu_ticks "$UP_PG")
      rss=0; [ -n "$C_PG" ] && rss=$(peak_rss_kb "$C_PG")
      stop_pg "$C_PG"; [ -n "$C_PG" ] && port_free "$C_PORT"
      n=$(field requests "$res"); n=${n:-0}
      serr=$(( $(field err_connect "$res") + $(field err_read "$res") + $(field err_write "$res") + $(field err_timeout "$res") ))
      pcpu=$(awk -v a="$p0" -v b="$p1" -v n="$n" -v hz="$CLK_TCK" 'BEGIN{ printf "%.1f", n ? (b-a)/hz*1e6/n : 0 }')
      ucpu=$(awk -v a="$u0" -v b="$u1" -v n="$n" -v hz="$CLK_TCK" 'BEGIN{ printf "%.1f", n ? (b-a)/hz*1e6/n : 0 }')
      line="$PIN	$cs	$r	$c	$(field rps "$res")	$(field p50_us "$res")	$(field p90_us "$res")	$(field p99_us "$res")	$(field p999_us "$res")	$(field max_us "$res")	$n	$(field non2xx "$res")	$serr	$pcpu	$ucpu	$rss"
      echo "$line" >> "$OUT"; echo "$line"
    done
  done
done
stop_pg "$UP_PG"
python3 summarize.py "$OUT" | tee "$RUNDIR/summary.md"
echo "raw: $OUT"
