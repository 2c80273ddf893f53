#!/usr/bin/env bash
# Runs each cargo-fuzz target for a bounded time on the stable toolchain (no sanitizer:
# `-s none`), starting from the seeds in fuzz/seeds/. Not part of CI (too slow there).
#
#   scripts/fuzz.sh            # every target, 60 s each
#   scripts/fuzz.sh 300 config_loader
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`) and a C++ compiler (libFuzzer).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs="${1:-60}"; shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(config_loader request_headers path_template)
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  echo "== fuzz $t for ${secs}s"
  cargo fuzz run --sanitizer none "$t" "corpus/$t" "seeds/$t" -- \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
done
