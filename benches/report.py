#!/usr/bin/env python3
"""Turns a benchmark run into the README's numbers and pictures.

    cargo bench --bench admission          # criterion writes target/criterion
    python3 benches/report.py              # prints every median and the target ratios,
                                           # writes benches/cost-per-thread.svg
    cargo run --release --example demo -- --timeline target/timeline.csv
    python3 benches/report.py --timeline target/timeline.csv   # writes benches/timeline.svg

Plain Python 3, no packages: the pictures are hand-written SVG, small enough to keep in git.
"""
import argparse
import json
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent


def medians(root):
    found = {}
    for estimates in sorted(root.glob("**/new/estimates.json")):
        name = str(estimates.parent.parent.relative_to(root))
        found[name] = json.loads(estimates.read_text())["median"]["point_estimate"]
    return found


def print_medians(found):
    for name, ns in found.items():
        print(f"{name:<52} {ns:10.3f} ns")
    print()

    def ratio(label, a, b, target):
        if a in found and b in found:
            print(f"{label:<66} {found[a] / found[b]:8.2f}x  (target {target})")

    ratio("coalesced admit / bare Acquire load", "coalesced/throttle_admit", "coalesced/atomic_load_acquire", "<= 2x")
    ratio("governor check / coalesced admit (1 thread)", "coalesced/governor_check", "coalesced/throttle_admit", ">= 10x")
    ratio("mutex port / coalesced admit (1 thread)", "coalesced/mutex_port", "coalesced/throttle_admit", ">= 5x")
    ratio("Neutron try-lock / coalesced admit (1 thread)", "coalesced/neutron_trylock", "coalesced/throttle_admit", "measured")
    ratio("admit, 2 threads / 1 thread", "contended_2/throttle_admit", "contended_1/throttle_admit", "<= 1.5x")
    ratio("governor check / admit, 2 threads", "contended_2/governor_check", "contended_2/throttle_admit", ">= 20x")
    ratio("mutex port / admit, 2 threads", "contended_2/mutex_port", "contended_2/throttle_admit", ">= 20x")
    ratio("Neutron try-lock / admit, 2 threads", "contended_2/neutron_trylock", "contended_2/throttle_admit", "measured")
    ratio("Now-path admit / (clock read + CAS)", "now_path/throttle_admit", "now_path/clock_read_plus_cas", "<= 1.5x")
    for threads in (1, 2):
        group = f"contended_{threads}"
        if f"{group}/throttle_admit_counting" in found:
            extra = found[f"{group}/throttle_admit_counting"] - found[f"{group}/throttle_admit"]
            print(f"{'counting, extra ns per call, ' + str(threads) + ' thread(s)':<66} {extra:8.2f} ns  (target <= 2 ns at 2 threads)")
        for lease in ("leased", "leased_coarse"):
            key = f"{group}/throttle_admit_{lease}"
            if key in found:
                extra = found[key] - found[f"{group}/throttle_admit"]
                print(f"{lease + ' admit, extra ns per call, ' + str(threads) + ' thread(s)':<66} {extra:8.2f} ns  (measured)")
    for threads in (1, 2):
        ratio(f"governor / leading-only suppressed (default clock), {threads} thread(s)", f"leading_only_{threads}/governor_check", f"leading_only_{threads}/throttle_default_clock", "measured")
        ratio(f"Go Sometimes / leading-only suppressed (coarse clock), {threads} thread(s)", f"leading_only_{threads}/go_sometimes", f"leading_only_{threads}/throttle_coarse_clock", "measured")
    for threads in (4, 8, 16):
        ratio(f"admit, {threads} threads / 1 thread", f"contended_{threads}/throttle_admit", "contended_1/throttle_admit", "scales")


def svg_cost_per_thread(found, out):
    contenders = [
        ("throttle_admit", "atomic-throttle admit", "#1b7837"),
        ("throttle_admit_publishing", "admit_publishing", "#5aae61"),
        ("throttle_admit_counting", "admit, counting", "#a6dba0"),
        ("atomic_load_acquire", "bare Acquire load", "#999999"),
        ("governor_check", "governor check()", "#2166ac"),
        ("neutron_trylock", "Neutron try-lock port", "#b2182b"),
        ("mutex_port", "mutex port", "#d6604d"),
    ]
    threads = sorted({int(name.split("/")[0].split("_")[1]) for name in found if name.startswith("contended_")})
    if not threads:
        print("no contended_N results: run the admission bench first", file=sys.stderr)
        return
    series = []
    for key, label, colour in contenders:
        points = [(t, found.get(f"contended_{t}/{key}")) for t in threads]
        points = [(t, ns) for t, ns in points if ns]
        if points:
            series.append((label, colour, points))
    import math
    lo = min(ns for _, _, pts in series for _, ns in pts)
    hi = max(ns for _, _, pts in series for _, ns in pts)
    lo_log, hi_log = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    width, height, left, right, top, bottom = 720, 420, 70, 230, 30, 50
    plot_w, plot_h = width - left - right, height - top - bottom

    def x(t):
        if len(threads) == 1:
            return left + plot_w / 2
        return left + plot_w * threads.index(t) / (len(threads) - 1)

    def y(ns):
        return top + plot_h * (hi_log - math.log10(ns)) / (hi_log - lo_log)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="18" font-size="14">Cost per call on a saturated throttle (median, log scale) against threads</text>',
    ]
    for power in range(lo_log, hi_log + 1):
        yy = y(10 ** power)
        parts.append(f'<line x1="{left}" y1="{yy:.1f}" x2="{left + plot_w}" y2="{yy:.1f}" stroke="#e0e0e0"/>')
        parts.append(f'<text x="{left - 8}" y="{yy + 4:.1f}" text-anchor="end">{10 ** power:g} ns</text>')
    for t in threads:
        parts.append(f'<text x="{x(t):.1f}" y="{top + plot_h + 20}" text-anchor="middle">{t}</text>')
    parts.append(f'<text x="{left + plot_w / 2}" y="{height - 10}" text-anchor="middle">threads</text>')
    for index, (label, colour, points) in enumerate(series):
        path = " ".join(f"{'M' if i == 0 else 'L'}{x(t):.1f},{y(ns):.1f}" for i, (t, ns) in enumerate(points))
        parts.append(f'<path d="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for t, ns in points:
            parts.append(f'<circle cx="{x(t):.1f}" cy="{y(ns):.1f}" r="3" fill="{colour}"><title>{label}, {t} threads: {ns:.2f} ns</title></circle>')
        ly = top + 10 + 20 * index
        parts.append(f'<line x1="{width - right + 15}" y1="{ly}" x2="{width - right + 35}" y2="{ly}" stroke="{colour}" stroke-width="2"/>')
        parts.append(f'<text x="{width - right + 40}" y="{ly + 4}">{label}</text>')
    parts.append("</svg>")
    out.write_text("\n".join(parts) + "\n")
    print(f"wrote {out}")


def svg_timeline(csv_path, out):
    """One demo run's events: calls (by answer), leading runs and deferred runs on a time axis."""
    rows = []
    for line in pathlib.Path(csv_path).read_text().splitlines()[1:]:
        nanos, kind = line.split(",")[:2]
        rows.append((int(nanos), kind))
    if not rows:
        print(f"{csv_path} has no events", file=sys.stderr)
        return
    start = min(n for n, _ in rows)
    end = max(n for n, _ in rows)
    lanes = [
        ("coalesced", "calls answered Coalesced", "#bdbdbd"),
        ("deferred_call", "calls answered Deferred", "#2166ac"),
        ("leading", "leading runs", "#1b7837"),
        ("deferred_run", "deferred runs", "#b2182b"),
    ]
    width, left, right, lane_h, top = 900, 190, 20, 36, 40
    height = top + lane_h * len(lanes) + 50
    span = max(end - start, 1)

    def x(n):
        return left + (width - left - right) * (n - start) / span

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="20" font-size="14">One demo run: calls and the runs that cover them ({span / 1e6:.1f} ms)</text>',
    ]
    for index, (kind, label, colour) in enumerate(lanes):
        yy = top + lane_h * index + lane_h / 2
        parts.append(f'<text x="{left - 10}" y="{yy + 4}" text-anchor="end">{label}</text>')
        parts.append(f'<line x1="{left}" y1="{yy}" x2="{width - right}" y2="{yy}" stroke="#eeeeee"/>')
        seen = set()
        for n, k in rows:
            if k != kind:
                continue
            px = int(x(n))
            if px in seen:  # one mark per pixel keeps the file small
                continue
            seen.add(px)
            tall = 12 if kind in ("leading", "deferred_run") else 6
            parts.append(f'<line x1="{px}" y1="{yy - tall}" x2="{px}" y2="{yy + tall}" stroke="{colour}" stroke-width="{2 if tall == 12 else 1}"/>')
    axis_y = top + lane_h * len(lanes) + 15
    for i in range(6):
        n = start + span * i / 5
        parts.append(f'<text x="{x(n):.1f}" y="{axis_y}" text-anchor="middle">{(n - start) / 1e6:.1f} ms</text>')
    parts.append("</svg>")
    out.write_text("\n".join(parts) + "\n")
    print(f"wrote {out}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--criterion", default="target/criterion", help="criterion's output folder")
    parser.add_argument("--timeline", help="a CSV written by the demo's --timeline")
    args = parser.parse_args()
    if args.timeline:
        svg_timeline(args.timeline, HERE / "timeline.svg")
        return
    found = medians(pathlib.Path(args.criterion))
    if not found:
        sys.exit(f"no results under {args.criterion}: run `cargo bench --bench admission` first")
    print_medians(found)
    svg_cost_per_thread(found, HERE / "cost-per-thread.svg")


if __name__ == "__main__":
    main()
