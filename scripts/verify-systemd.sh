#!/usr/bin/env bash
# `systemd-analyze verify` on deploy/keybridge.service, with any warning fatal (verify
# itself only warns about unknown or misspelt directives). The unit names the installed
# binary; verify needs it to exist, so a copy of the unit points at BIN (default: the
# debug build that `cargo test` made).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(realpath "${1:-target/debug/keybridge}")
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
sed "s#/usr/local/bin/keybridge#$bin#g" deploy/keybridge.service > "$dir/keybridge.service"
if ! out=$(systemd-analyze verify "$dir/keybridge.service" 2>&1) || [ -n "$out" ]; then
  echo "$out"
  echo "deploy/keybridge.service: systemd-analyze verify is not clean" >&2
  exit 1
fi
echo "deploy/keybridge.service: verified ($(systemd-analyze --version | head -1))"
systemd-analyze security --offline=yes "$dir/keybridge.service" 2>/dev/null | tail -1 || true
