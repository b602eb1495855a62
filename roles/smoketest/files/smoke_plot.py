#!/usr/bin/env python3
"""The smoke report as a picture: latency distribution per check, one PNG (issue 16.6).

    python roles/smoketest/files/smoke_plot.py reports/smoke-lab*.json --out reports/smoke-lab.png

Reads one or more smoke reports (smoke.py's JSON: `reports/smoke-<inventory>.json`, or the
integration's `reports/smoke-<inventory>-<stage>.json`, one per stage) and draws two panels:

* left: every check that measured a latency (health, generate, chat, stream, the concurrent load's
  wall time), one dot per report on a log scale; a failed check is a red cross;
* right: the concurrent load's per-request latencies, one row per report: box (quartiles), every
  request as a dot, p50 / p95, requests answered 200 and the aggregate output tokens/s.

Needs matplotlib, which is not in the controller's venv (`make smoke-plot` makes a small
`.venv-plot` with it). Without matplotlib it exits 3 with a message; the report is the JSON either
way. The data handling (`checks_table`, `load_rows`, `report_label`) is pure and unit-tested.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

# (label, report) per smoke report given
Reports = list[tuple[str, dict[str, Any]]]


def report_label(path: Path, report: dict[str, Any]) -> str:
    """The stage in the file name (smoke-<inventory>-<stage>.json), else the layout."""
    inventory = str(report.get("inventory") or "")
    stem = path.stem
    prefix = f"smoke-{inventory}-" if inventory else "smoke-"
    if inventory and stem.startswith(prefix) and len(stem) > len(prefix):
        return stem[len(prefix) :]
    return str(report.get("layout") or stem)


def checks_table(reports: Reports) -> dict[str, list[tuple[str, float, bool]]]:
    """check name -> [(report label, latency s, ok)] for every check that has a latency, in the
    order the checks first appear."""
    table: dict[str, list[tuple[str, float, bool]]] = {}
    for label, report in reports:
        for check in report.get("checks") or []:
            latency = check.get("latency_s")
            if latency is None:
                continue
            table.setdefault(str(check.get("name")), []).append(
                (label, float(latency), bool(check.get("ok")))
            )
    return table


def load_rows(reports: Reports) -> list[dict[str, Any]]:
    """One row per report with load samples: label, latencies of the answered requests, errors,
    p50/p95 and tokens/s as smoke.py summarised them."""
    rows = []
    for label, report in reports:
        samples = report.get("samples") or []
        if not samples:
            continue
        load = report.get("load") or {}
        ok = [s for s in samples if s.get("status") == 200 and s.get("latency_s") is not None]
        rows.append(
            {
                "label": label,
                "latencies": [float(s["latency_s"]) for s in ok],
                "failed": len(samples) - len(ok),
                "requests": len(samples),
                "p50": load.get("p50_latency_s"),
                "p95": load.get("p95_latency_s"),
                "tokens_per_s": load.get("output_tokens_per_s"),
            }
        )
    return rows


def draw(reports: Reports, out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = checks_table(reports)
    rows = load_rows(reports)
    labels = [label for label, _ in reports]
    colors = {label: plt.get_cmap("tab10")(i % 10) for i, label in enumerate(labels)}
    height = max(3.0, 0.45 * max(len(table), len(rows), 4) + 1.6)
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(13, height), gridspec_kw={"width_ratios": [1.1, 1]}
    )

    names = list(table)
    for y, name in enumerate(names):
        for label, latency, ok in table[name]:
            jitter = (labels.index(label) - (len(labels) - 1) / 2) * 0.12
            if ok:
                left.scatter(latency, y + jitter, color=colors[label], s=36, zorder=3)
            else:
                left.scatter(latency, y + jitter, color="red", marker="x", s=60, zorder=4)
            if len(labels) == 1:
                value = f"{latency * 1000:.0f} ms" if latency < 1 else f"{latency:.2f} s"
                left.annotate(
                    value, (latency, y), xytext=(6, 4), textcoords="offset points", fontsize=8
                )
    left.set_yticks(range(len(names)), names)
    left.invert_yaxis()
    left.set_xscale("log")
    left.set_xlabel("latency (s, log scale)")
    left.set_title("latency per check (one dot per report; red x: failed)")
    left.grid(axis="x", which="both", alpha=0.3)
    for label in labels:
        left.scatter([], [], color=colors[label], label=label)
    if len(labels) > 1:
        left.legend(
            fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=min(len(labels), 4)
        )

    if rows:
        data = [row["latencies"] or [float("nan")] for row in rows]
        right.boxplot(data, orientation="horizontal", widths=0.5, showfliers=False)
        for y, row in enumerate(rows, start=1):
            n = len(row["latencies"])
            offsets = [((i % 7) - 3) * 0.04 for i in range(n)]
            right.scatter(
                row["latencies"],
                [y + o for o in offsets],
                color=colors[row["label"]],
                s=14,
                zorder=3,
            )
            note = f"{n}/{row['requests']} ok"
            if row["p50"] is not None:
                note += f", p50 {row['p50']:.2f} s, p95 {row['p95']:.2f} s"
            if row["tokens_per_s"] is not None:
                note += f", {row['tokens_per_s']:.0f} tok/s"
            right.annotate(
                note, (0.01, y + 0.45), xycoords=("axes fraction", "data"), fontsize=8, color="0.25"
            )
        right.set_yticks(range(1, len(rows) + 1), [row["label"] for row in rows])
        right.invert_yaxis()
        longest = max((max(row["latencies"]) for row in rows if row["latencies"]), default=1.0)
        right.set_xlim(0, longest * 1.15)
        right.set_xlabel("latency (s)")
        right.set_title("concurrent load: every request's latency")
        right.grid(axis="x", alpha=0.3)
    else:
        right.axis("off")
        right.text(0.5, 0.5, "no load samples in the report(s)", ha="center", va="center")

    fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("reports", nargs="+", type=Path, help="smoke report JSON file(s)")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--title", default="", help="figure title (default: from the reports)")
    args = parser.parse_args()
    reports = []
    for path in args.reports:
        report = json.loads(path.read_text())
        reports.append((report_label(path, report), report))
    # in the order they were taken (the integration's stages), not the file names'
    reports.sort(key=lambda item: str(item[1].get("started") or ""))
    passed = sum(1 for _, r in reports if r.get("passed"))
    inventories = sorted({str(r.get("inventory") or "?") for _, r in reports})
    title = args.title or (
        f"smoke test on {', '.join(inventories)}: {passed}/{len(reports)} report(s) passed"
        f" ({reports[-1][1].get('started', '')[:16].replace('T', ' ')} UTC)"
    )
    try:
        draw(reports, args.out, title)
    except ImportError as exc:
        print(
            f"smoke_plot: {exc}: matplotlib is needed (make smoke-plot makes .venv-plot)",
            file=sys.stderr,
        )
        return 3
    print(f"smoke_plot: wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
