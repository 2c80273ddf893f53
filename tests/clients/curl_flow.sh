#!/usr/bin/env bash
# A legacy Coupa integration as a shell script with curl, run by tests/clients.rs through
# keybridge:  curl_flow.sh <base-url> <key> <mode> [<ca-file>]
# <mode> is a curl HTTP flag: --http1.1, --http2 (on http:// an h2c upgrade offer, on
# https:// ALPN), or --http2-prior-knowledge. It pages XML and JSON, sends Coupa's
# fields=[…] query raw (`-g`), an XML POST, a 5 MB chunked PUT from stdin, a PUT with
# `Expect: 100-continue` and a gzip GET; one line per step, exit 1 on a mismatch.
set -uo pipefail
base=$1 key=$2 mode=$3 ca=${4:-}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
opts=(-sS "$mode" --max-time 30 -H "X-COUPA-API-KEY: $key")
[ -n "$ca" ] && opts+=(--cacert "$ca")
check() { if eval "$1"; then echo "ok $2"; else echo "FAIL $2"; exit 1; fi; }

for pair in "application/xml:<invoice-header>" "application/json:\"invoice-number\""; do
  accept=${pair%%:*} needle=${pair#*:} total=0 offset=0
  while :; do
    code=$(curl "${opts[@]}" -H "Accept: $accept" -o "$tmp/page" -w '%{http_code}' "$base/api/invoices?limit=2&offset=$offset")
    check '[ "$code" = 200 ]' "$accept page at offset $offset: $code"
    n=$(grep -o -- "$needle" "$tmp/page" | wc -l)
    total=$((total + n)) offset=$((offset + 2))
    [ "$n" -lt 2 ] && break
  done
  check '[ "$total" = 5 ]' "$accept paging saw all 5 invoices ($total)"
done
code=$(curl "${opts[@]}" -g -o /dev/null -w '%{http_code}' "$base/api/invoices?fields=[\"id\",{\"supplier\":[\"name\"]}]")
check '[ "$code" = 200 ]' "raw fields=[\"id\",…] query: $code"
xml='<?xml version="1.0"?><invoice-header><invoice-number>INV-7</invoice-number></invoice-header>'
out=$(curl "${opts[@]}" -H 'Content-Type: application/xml' --data-binary "$xml" "$base/api/invoices")
check '[ "$out" = "$xml" ]' "XML POST echoed"
python3 -c 'import sys; sys.stdout.buffer.write(bytes(i % 251 for i in range(5*1024*1024)))' >"$tmp/big"
code=$(curl "${opts[@]}" -T - -H 'Transfer-Encoding: chunked' -H 'Content-Type: application/octet-stream' \
  -o "$tmp/echo" -w '%{http_code}' "$base/api/invoices/7/image_scan" <"$tmp/big")
check '[ "$code" = 200 ] && cmp -s "$tmp/big" "$tmp/echo"' "5 MB chunked PUT echoed byte-exact: $code"
head -c 65536 /dev/zero >"$tmp/small"
code=$(curl "${opts[@]}" -T "$tmp/small" -H 'Expect: 100-continue' --expect100-timeout 20 \
  -o "$tmp/echo" -w '%{http_code} %{time_total}' "$base/api/invoices/7")
check '[ "${code% *}" = 200 ] && cmp -s "$tmp/small" "$tmp/echo"' "PUT with Expect: 100-continue: $code"
out=$(curl "${opts[@]}" --compressed -D "$tmp/head" "$base/api/invoices/1")
check 'grep -qi "^content-encoding: gzip" "$tmp/head" && [[ "$out" == *INV-0001* ]]' "gzip GET decoded"
code=$(curl -sS "$mode" ${ca:+--cacert "$ca"} -H 'X-COUPA-API-KEY: not-a-key-of-ours' -D "$tmp/head" -o /dev/null -w '%{http_code}' "$base/api/invoices/1")
check '[ "$code" = 401 ] && grep -qi "^www-authenticate:.*X-COUPA-API-KEY" "$tmp/head"' "an unknown key gets 401 with WWW-Authenticate"
echo "version $(curl "${opts[@]}" -o /dev/null -w '%{http_version}' "$base/api/invoices/1")"
echo DONE
