#!/usr/bin/env bash
# The measurements beside throughput (issue 5), on loopback only, each bounded in time:
#  1. startup time and memory with 10 000 integrations (20 clients, tokens fetched);
#  2. RSS with 1 000 open idle client connections, and peak RSS with 1 000 connections
#     under full load; token-endpoint calls
#     on the request path in steady state (must be 0);
#  3. 1 000 concurrent requests on a cold token cache, against a token endpoint that takes
#     1 s to answer: token requests must equal the number of clients (one each).
# Prints a markdown summary. Env: N (10000 integrations), CONNS (1000), DURATION (10).
set -euo pipefail
cd "$(dirname "$0")"
BENCH=$(pwd)
N=${N:-10000}; CONNS=${CONNS:-1000}; DURATION=${DURATION:-10}
KEYBRIDGE_BIN=${KEYBRIDGE_BIN:-$BENCH/../target/dist/keybridge}; export KEYBRIDGE_BIN
[ -x target/release/bench-upstream ] || cargo build --release -q
[ -x "$KEYBRIDGE_BIN" ] || (cd .. && cargo build --profile dist -q)
ulimit -n 65536 2>/dev/null || true

work=$(mktemp -d); PGS=()
cleanup() { for pg in "${PGS[@]}"; do kill -TERM -- "-$pg" 2>/dev/null || true; done; sleep 0.3; rm -rf "$work"; }
trap cleanup EXIT INT TERM
launch() { setsid "$@" >>"$work/$(basename "$1").log" 2>&1 </dev/null & LAST=$!; PGS+=("$LAST"); }
stop() { kill -TERM -- "-$1" 2>/dev/null || true; for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done; kill -KILL -- "-$1" 2>/dev/null || true; }
kb_pid() { pgrep -g "$1" -f " run --config" | head -1; }
status_kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }
now_ms() { date +%s%3N; }

python3 - "$N" >"$work/keys.tsv" <<'PY'
import hashlib, sys
for i in range(int(sys.argv[1])):
    k = hashlib.sha1(f"coupa-key-{i}".encode()).hexdigest()
    t = "tok_" + hashlib.sha256(f"coupa-token-{i}".encode()).hexdigest()[:60]
    print(f"{k}\t{t}")
PY
export KEYS_TSV=$work/keys.tsv UPSTREAM_ADDR=127.0.0.1:18080 PROXY_PORT=18190
launch target/release/bench-upstream $UPSTREAM_ADDR; UP=$LAST
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/18080) 2>/dev/null && break; sleep 0.1; done
ADMIN=127.0.0.1:$((PROXY_PORT + 1))
fetches() { curl -s "http://$ADMIN/metrics" | awk '/^keybridge_token_fetches_total\{.*result="ok"/ { s += $2 } END { print s + 0 }'; }

echo "## keybridge extra measurements ($(date -Is), $(nproc) CPUs, $N integrations over 20 clients)"
echo

# 1. Startup.
t0=$(now_ms); launch bash keybridge-candidate.sh; KB=$LAST
until curl -sf "http://$ADMIN/readyz" >/dev/null; do sleep 0.01; [ $(( $(now_ms) - t0 )) -lt 30000 ] || { echo "never ready"; exit 1; }; done
t1=$(now_ms); pid=$(kb_pid "$KB")
echo "| measurement | value |"
echo "|---|---:|"
echo "| startup to ready (config parse, 10k fingerprints, 20 token fetches) | $(( t1 - t0 )) ms |"
echo "| RSS when ready | $(( $(status_kb "$pid" VmRSS) / 1024 )) MB |"

# 2a. 1000 open, idle keep-alive connections (one request each, then held): opened 8 at
# a time (how idle connections pile up), then all at once (a thundering herd: 1000
# requests reach Coupa together, and the upstream pool fills to its idle cap).
key=$(head -1 "$KEYS_TSV" | cut -f1)
up_conns() { ss -Htn state established "( dport = :${UPSTREAM_ADDR##*:} )" | wc -l; }
for parallel in 8 "$CONNS"; do
  python3 idle_conns.py "$key" "$PROXY_PORT" "$CONNS" 5 "$parallel" >"$work/idle.out" &
  IDLE=$!; sleep 4
  how=$([ "$parallel" = "$CONNS" ] && echo "all at once" || echo "$parallel at a time")
  echo "| RSS with $CONNS open idle keep-alive connections (opened $how; $(up_conns) idle to Coupa) | $(( $(status_kb "$pid" VmRSS) / 1024 )) MB |"
  wait $IDLE
  echo "| … connections answered 200 | $(cat "$work/idle.out") |"
  sleep 1
done

# 2b. 1000 connections under load; token fetches before/after.
f0=$(fetches)
res=$(MODE=key CASE=get KEYS=$KEYS_TSV timeout $(( DURATION + 30 )) wrk -t2 -c"$CONNS" -d"${DURATION}s" --timeout 5s \
  -s conf/wrk.lua "http://127.0.0.1:$PROXY_PORT" | grep '^RESULT' || true)
f1=$(fetches)
field() { sed -n "s/.*[ ]$1=\([0-9.]*\).*/\1/p" <<<"$res"; }
echo "| $CONNS connections, GET for ${DURATION}s: req/s | $(field rps) |"
echo "| … p50 / p99 / p99.9 | $(( $(field p50_us) / 1000 )) / $(( $(field p99_us) / 1000 )) / $(( $(field p999_us) / 1000 )) ms |"
echo "| … non-2xx, socket errors | $(field non2xx), $(( $(field err_connect) + $(field err_read) + $(field err_write) + $(field err_timeout) )) |"
echo "| peak RSS (VmHWM) with $CONNS connections and $N integrations | $(( $(status_kb "$pid" VmHWM) / 1024 )) MB |"
echo "| token fetches: at ready / after the load | $f0 / $f1 (request path: $(( f1 - f0 ))) |"
stop "$KB"

# 3. Cold cache: a token endpoint that takes 1 s, and $CONNS requests at once.
cat >"$work/slow_token.py" <<'PY'
import http.server, json, sys, threading, time
count = 0; lock = threading.Lock()
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_POST(self):
        global count
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with lock: count += 1; n = count
        time.sleep(1.0)
        body = json.dumps({"access_token": f"tok_cold_{n}", "token_type": "bearer", "expires_in": 86399}).encode()
        self.send_response(200); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def do_GET(self):
        body = str(count).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
http.server.ThreadingHTTPServer(("127.0.0.1", 18085), H).serve_forever()
PY
launch python3 "$work/slow_token.py"; TOK=$LAST
for _ in $(seq 50); do curl -sf http://127.0.0.1:18085/ >/dev/null && break; sleep 0.1; done
TOKEN_URL=http://127.0.0.1:18085/oauth2/token launch bash keybridge-candidate.sh; KB=$LAST
for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/$PROXY_PORT) 2>/dev/null && break; sleep 0.01; done
res=$(MODE=key CASE=get KEYS=$KEYS_TSV timeout 40 wrk -t2 -c"$CONNS" -d5s --timeout 5s \
  -s conf/wrk.lua "http://127.0.0.1:$PROXY_PORT" | grep '^RESULT' || true)
asked=$(curl -s http://127.0.0.1:18085/)
echo "| cold cache: $CONNS concurrent connections at start-up, token endpoint 1 s slow: token requests | $asked (20 clients) |"
echo "| … requests served in 5 s, non-2xx | $(field requests), $(field non2xx) |"
stop "$KB"; stop "$TOK"; stop "$UP"
