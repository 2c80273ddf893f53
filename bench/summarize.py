#!/usr/bin/env python3
"""Summarize one or more results.tsv files from run.sh into markdown tables (medians over repeats)."""
import csv, sys, statistics as st
from collections import defaultdict, OrderedDict
rows = []
for p in sys.argv[1:]:
    with open(p) as f:
        rows += list(csv.DictReader(f, delimiter="\t"))
groups = OrderedDict()
for r in rows:
    groups.setdefault((r["pin"], r["case"]), OrderedDict()).setdefault(r["candidate"], []).append(r)
def med(xs): return st.median(xs) if xs else 0
for (pin, case), cands in groups.items():
    direct = med([float(r["rps"]) for r in cands.get("direct", [])])
    print(f"\n### pin={pin} case={case}\n")
    nginx = med([float(r["rps"]) for r in cands.get("nginx-w1", [])])
    print("| candidate | req/s median | req/s min–max | ratio to direct | ratio to nginx-w1 | p50 ms | p99 ms | p99.9 ms | proxy CPU µs/req | upstream CPU µs/req | peak RSS MB | non-2xx / sock errs | n |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c, rs in cands.items():
        rps = [float(r["rps"]) for r in rs]
        p50 = med([float(r["p50_us"]) for r in rs]) / 1000
        p99 = med([float(r["p99_us"]) for r in rs]) / 1000
        p999 = med([float(r.get("p999_us") or 0) for r in rs]) / 1000
        pc = med([float(r["proxy_cpu_us_per_req"]) for r in rs])
        uc = med([float(r["upstream_cpu_us_per_req"]) for r in rs])
        bad = sum(int(float(r["non2xx"])) for r in rs); se = sum(int(float(r["sock_errs"])) for r in rs)
        ratio = f"{med(rps)/direct:.2f}" if direct else "-"
        rn = f"{med(rps)/nginx:.2f}" if nginx else "-"
        rss = med([float(r.get("peak_rss_kb") or 0) for r in rs]) / 1024
        print(f"| {c} | {med(rps):,.0f} | {min(rps):,.0f}–{max(rps):,.0f} | {ratio} | {rn} | {p50:.2f} | {p99:.2f} | {p999:.2f} | {pc:.1f} | {uc:.1f} | {rss:.1f} | {bad} / {se} | {len(rs)} |")
