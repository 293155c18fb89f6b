#!/usr/bin/env python3
"""Prints the median of every benchmark from criterion's saved estimates, and SPEC's ratios.

Run after `cargo bench --bench admission`: python3 benches/medians.py [target/criterion]
"""
import json
import pathlib
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/criterion")
medians = {}
for estimates in sorted(root.glob("**/new/estimates.json")):
    name = str(estimates.parent.parent.relative_to(root))
    medians[name] = json.loads(estimates.read_text())["median"]["point_estimate"]

for name, ns in medians.items():
    print(f"{name:<48} {ns:10.3f} ns")


def ratio(label, a, b, target):
    if a in medians and b in medians:
        print(f"{label:<64} {medians[a] / medians[b]:8.2f}x  (target {target})")


print()
ratio("coalesced admit / bare Acquire load", "coalesced/throttle_admit", "coalesced/atomic_load_acquire", "<= 2x")
ratio("governor check / coalesced admit (1 thread)", "coalesced/governor_check", "coalesced/throttle_admit", ">= 10x")
ratio("mutex port / coalesced admit (1 thread)", "coalesced/mutex_port", "coalesced/throttle_admit", ">= 5x")
ratio("admit, 2 threads / 1 thread (contended harness)", "contended_2/throttle_admit", "contended_1/throttle_admit", "<= 1.5x")
ratio("governor check / admit, 2 threads", "contended_2/governor_check", "contended_2/throttle_admit", ">= 20x")
ratio("mutex port / admit, 2 threads", "contended_2/mutex_port", "contended_2/throttle_admit", ">= 20x")
ratio("Now-path admit / (clock read + CAS)", "now_path/throttle_admit", "now_path/clock_read_plus_cas", "<= 1.5x")
for threads in (4, 8, 16):
    ratio(f"admit, {threads} threads / 1 thread", f"contended_{threads}/throttle_admit", "contended_1/throttle_admit", "scales")
