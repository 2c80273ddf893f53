#!/usr/bin/env bash
# Starts keybridge as a bench candidate: the harness's 1000 keys spread over 20 OAuth
# clients, the bench upstream as both Coupa instance and token endpoint.
# Env: KEYBRIDGE_BIN, PROXY_PORT, UPSTREAM_ADDR, KEYS_TSV (run.sh exports them),
#      AUDIT=on|off|fleet (default on: SQLite; fleet: the PostgreSQL audit at
#      BENCH_PG_URL and the Redis token cache at BENCH_REDIS_URL, machine defaults),
#      WORKERS (default: one per CPU),
#      SHAPING=far|off (default far: the instance's rate_limit on, 100000/s with a burst of
#      100000, far above any load here, so its cost is measured without it throttling),
#      TOKEN_URL (default: the upstream's /oauth2/token),
#      AUDIT_FLUSH (the SQLite audit's flush_interval; default keybridge's 10 s).
set -euo pipefail
dir=$(mktemp -d)
cfg=$dir/config.yaml
audit=${AUDIT:-on}
{
  echo "listen: 127.0.0.1:$PROXY_PORT"
  echo "admin_listen: 127.0.0.1:$((PROXY_PORT + 1))"
  echo "instances:"
  echo "  bench:"
  echo "    base_url: http://$UPSTREAM_ADDR"
  if [ -n "${TOKEN_URL:-}" ]; then echo "    token_url: $TOKEN_URL"; fi
  if [ "${SHAPING:-far}" = off ]; then
    echo "    rate_limit: off"
  else
    echo "    rate_limit: {per_second: 100000, burst: 100000, max_wait: 10s}"
  fi
  echo "clients:"
  for i in $(seq 0 19); do
    echo "  c$i: {instance: bench, client_id: c$i, client_secret: s$i, scopes: [core.invoice.read, core.invoice.write]}"
  done
  echo "integrations:"
  python3 - "$KEYS_TSV" <<'PY'
import hashlib, sys
for i, line in enumerate(open(sys.argv[1])):
    key = line.split("\t")[0]
    print(f"  - {{name: k{i}, api_key_sha256: {hashlib.sha256(key.encode()).hexdigest()}, client: c{i % 20}}}")
PY
  echo "token: {settle_delay: 0s}"
  # Logging off, like nginx/haproxy here. All bench load comes from 127.0.0.1, i.e. one
  # "caller": the per-address caps (meant against one hostile source) are raised so
  # extra.sh's 1000 connections measure memory, not the cap.
  echo "server: {access_log: false, workers: ${WORKERS:-0}, max_connections_per_ip: 4096, max_in_flight_per_ip: 4096}"
  echo "upstream: {pool_max_idle_per_host: 64}"   # per worker: 2 × 64 = nginx's keepalive 128
  if [ "$audit" = fleet ]; then
    echo "audit: {enabled: true, postgres_url: '${BENCH_PG_URL:-postgres://postgres@127.0.0.1:5432/test}'}"
    echo "fleet: {replica: bench, redis_url: '${BENCH_REDIS_URL:-redis://127.0.0.1:6379/0}', redis_prefix: 'keybridge-bench-$$:'}"
  elif [ "$audit" = on ]; then
    echo "audit: {enabled: true, path: $dir/audit.db${AUDIT_FLUSH:+, flush_interval: $AUDIT_FLUSH}}"
  else
    echo "audit: {enabled: false}"
  fi
} > "$cfg"
cd "$dir"
RUST_LOG=${RUST_LOG:-warn} exec "$KEYBRIDGE_BIN" run --config "$cfg"
