#!/usr/bin/env bash
# Is Cargo.toml's `rust-version` true for the committed lock file? Fails when any locked
# crate declares a newer minimum Rust than ours. (Our own code is held to it by clippy's
# `incompatible_msrv` lint, which reads the same field; only one toolchain can be
# installed on these machines, so no older compiler is run.)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo metadata --locked --format-version 1 | python3 -c '
import json, sys
meta = json.load(sys.stdin)
def version(v): return tuple((int(x) for x in ((v or "0").split(".") + ["0", "0"])[:3]))
ours = next(p for p in meta["packages"] if p["id"] in meta["workspace_members"])
declared = ours["rust_version"]
msrv = version(declared)
locked = {n["id"] for n in meta["resolve"]["nodes"]}
newer = sorted(
    (p["name"], p["version"], p["rust_version"])
    for p in meta["packages"]
    if p["id"] in locked and version(p.get("rust_version")) > msrv
)
for name, v, needs in newer:
    print(f"{name} {v} needs Rust {needs}, newer than rust-version {declared}")
if newer:
    sys.exit(1)
print(f"rust-version {declared} holds for all {len(locked)} locked crates")
'
