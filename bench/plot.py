#!/usr/bin/env python3
"""Draws a `shardstream bench --json` report as a bar chart: `shardstream bench --plot OUT.png`.

One horizontal bar per row, GB/s of the median run (longer is faster), whiskers from the slowest
to the fastest run, "(!)" on a row more than 10% past its own ceiling; ceilings as dashed vertical
lines across the chart (one colour each, a sweep's winning settings in the legend); failed rows drawn as a
red "failed" label with no bar, rows that did not run as grey "not installed" / "not applicable"
labels. Colours: shardstream strategies blue, peers orange. The axis ends at 3x the highest
ceiling: a lazy row far past it (zero-copy) is drawn cut, with its figure written on it.

Usage: bench/plot.py REPORT.json OUT.png
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"shardstream": "#1f77b4", "peer": "#ff7f0e"}
CEILING_STYLES = [("#2ca02c", "--"), ("#9467bd", ":"), ("#8c564b", "-."), ("#e377c2", "--")]


def main(report_path, out_path):
    with open(report_path) as f:
        report = json.load(f)
    gb = report["checkpoint"]["bytes"] / 1e9
    rows = [r for r in report["rows"] if r["kind"] != "ceiling"]
    ceilings = [r for r in report["rows"] if r["kind"] == "ceiling"]
    # The legend (one line per ceiling) goes under the axes, never over a row.
    legend_in = 0.2 * len(ceilings) + 0.3 if ceilings else 0
    height_in = 0.42 * len(rows) + 2.2 + legend_in
    fig, ax = plt.subplots(figsize=(9, height_in), dpi=100)
    ceiling_gbps = [gb / c["median_s"] for c in ceilings if c["status"] == "ok"]
    fastest = [gb / r["min_s"] for r in rows if r["status"] == "ok"]
    # A lazy row (zero-copy: views, one byte read per page) can run 30x past every ceiling; the
    # axis stops at 3x the highest ceiling so the rest stay readable, and such bars are cut.
    top = max(fastest + ceiling_gbps + [1e-9])
    if ceiling_gbps:
        top = min(top, 3 * max(ceiling_gbps))
    y = list(range(len(rows)))[::-1]  # first row on top
    for yi, row in zip(y, rows):
        if row["status"] != "ok":
            color = "#d62728" if row["status"] == "failed" else "#7f7f7f"
            ax.text(0.01 * top, yi, row["status"], va="center", color=color, fontweight="bold")
            continue
        median, slow, fast = (gb / row["median_s"], gb / row["max_s"], gb / row["min_s"])
        color = COLORS.get(row["kind"], "#2ca02c")
        if median > top:
            ax.barh(yi, top, color=color, height=0.6, hatch="//", edgecolor="white")
            ax.text(0.98 * top, yi, f"{median:.1f} GB/s, off the scale", va="center",
                    ha="right", fontsize=8, bbox={"facecolor": "white", "edgecolor": "none"})
            continue
        ax.barh(yi, median, color=color, height=0.6)
        ax.errorbar(median, yi, xerr=[[median - slow], [min(fast, top) - median]], fmt="none",
                    ecolor="black", capsize=3, linewidth=1)
        # A row more than 10% past its own ceiling: that ceiling is wrong, and the chart says so.
        mark = " (!) above its ceiling" if row.get("ceiling_exceeded") else ""
        ax.text(min(fast, top) + 0.01 * top, yi, f"{median:.2f}{mark}", va="center", fontsize=8,
                color="#d62728" if mark else "black")
    for i, row in enumerate(c for c in ceilings if c["status"] == "ok"):
        gbps = gb / row["median_s"]
        color, style = CEILING_STYLES[i % len(CEILING_STYLES)]
        sweep = len(set(row.get("fio", []))) > 1  # not the same settings tried again
        winner = f" [{row['winner']}]" if row.get("winner") and sweep else ""
        ax.axvline(gbps, color=color, linestyle=style, linewidth=1.5, zorder=3,
                   label=f"{row['name']}{winner}: {gbps:.2f} GB/s")
    ax.set_yticks(y)
    ax.set_yticklabels([r["name"] for r in rows], fontsize=9)
    ax.set_xlabel("GB/s (median of runs; whiskers: slowest to fastest run)")
    ax.set_xlim(0, top * 1.12)
    settings = report["settings"]
    machine = report["machine"]
    ax.set_title(f"{report['checkpoint']['path']} ({gb:.2f} GB), "
                 f"{'cold' if settings['cold'] else 'warm'}, {settings['device']}, "
                 f"sink {settings['sink']}, {settings['repeat']} interleaved rounds\n"
                 f"{machine.get('cpu', '?')}, {machine.get('cpus', '?')} CPUs, "
                 f"{machine.get('kernel', '?').split(' ')[1] if ' ' in machine.get('kernel', '') else '?'}",
                 fontsize=9)
    if ceilings:
        fig.legend(loc="lower center", fontsize=8, frameon=False)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout(rect=(0, legend_in / height_in, 1, 1))
    fig.savefig(out_path)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__.split("\n\n")[-1])
    main(sys.argv[1], sys.argv[2])
