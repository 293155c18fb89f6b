#!/usr/bin/env python3
"""Prints the median of every keyed benchmark from criterion's saved estimates, and the ratios
to governor's keyed limiter.

Run after `cargo bench --bench keyed`: python3 benches/keyed_medians.py [target/criterion]
"""
import json
import pathlib
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/criterion")
medians = {}
for estimates in sorted(root.glob("keyed_*/**/new/estimates.json")):
    name = json.loads((estimates.parent / "benchmark.json").read_text())["full_id"]
    medians[name] = json.loads(estimates.read_text())["median"]["point_estimate"]

columns = ["atomic_throttle", "governor", "atomic_throttle_foldhash", "governor_foldhash"]
print(f"{'benchmark (median ns per call)':<26}" + "".join(f"{c:>26}" for c in columns)
      + f"{'governor / ours':>17}{'(foldhash)':>12}{'gov / ours_fold':>17}")
groups = ["keyed_hot"] + [f"keyed_{kind}/{keys}" for kind in ("hit", "miss")
                          for keys in (1000, 100000, 1000000)]
for group in groups:
    for threads in ("1t", "2t"):
        row = [medians.get(f"{group}/{column}/{threads}") for column in columns]
        if None in row:
            continue
        ours, theirs, ours_fold, theirs_fold = row
        print(f"{group + ' ' + threads:<26}" + "".join(f"{v:26.1f}" for v in row)
              + f"{theirs / ours:16.1f}x{theirs_fold / ours_fold:11.1f}x{theirs / ours_fold:16.1f}x")
