"""Pictures of GPU sittings: batch-1 ITL and many-client throughput per row, one PNG per sitting.

    python bench/plot.py tests/gpu/results/2026-11-30-2xh200-cuda-graphs --out docs/img/graphs.png

Reads every `*load.jsonl` of the folders given (bench/loadgen.py lines; a row is the tag without its
`-c<clients>-part<k>` suffix; parts of one row are summed), or a `bench/runner.py report` JSON
(`bench/results/<date>-<gpu>.json`: raw engines' ms/token at bs=1 and tok/s per batch size, served
rows per client count; open-loop rows are left out), and draws two bar charts side by side:
mean ITL at 1 client (lower is better) and output tok/s at the most clients measured (higher is
better). Needs matplotlib (not in the controller's lock: `pip install matplotlib` in any venv).
"""

from __future__ import annotations

import argparse
import collections
import json
import re
from pathlib import Path

TAG = re.compile(r"^(?P<row>.+)-c(?P<clients>\d+)-part\d+$")


def rows(folders: list[Path]) -> dict[str, dict[int, dict[str, float]]]:
    """row -> clients -> {itl (max over parts), tok_s (sum over parts), ok, requests}."""
    out: dict[str, dict[int, dict[str, float]]] = collections.defaultdict(dict)
    for folder in folders:
        for path in sorted(folder.glob("*load.jsonl")):
            prefix = (
                ""
                if path.name == "load.jsonl"
                else path.name.removesuffix("load.jsonl").rstrip("-") + ":"
            )
            for line in path.read_text().splitlines():
                r = json.loads(line)
                m = TAG.match(r["tag"])
                if not m:
                    continue
                row = (
                    prefix if m["row"] in prefix else f"{prefix}:{m['row']}" if prefix else m["row"]
                )
                cell = out[row].setdefault(
                    int(m["clients"]), {"itl": 0.0, "tok_s": 0.0, "ok": 0, "requests": 0}
                )
                cell["itl"] = max(cell["itl"], float(r["itl_ms_mean"]))
                cell["tok_s"] += float(r["output_tok_per_s"])
                cell["ok"] += int(r["ok"])
                cell["requests"] += int(r["requests"])
    return out


def merged_rows(path: Path) -> dict[str, dict[int, dict[str, float]]]:
    """The same shape from a runner report: raw engines by batch size, served rows by clients."""
    out: dict[str, dict[int, dict[str, float]]] = collections.defaultdict(dict)
    for r in json.loads(path.read_text())["rows"]:
        if r.get("stage") == "generate":
            n, itl = int(r["bs"]), float(r["ms_per_token"])
        elif r.get("stage") == "loadgen" and not r.get("rate"):
            n, itl = int(r["concurrency"]), float(r["itl_ms_mean"])
        else:
            continue
        tok_s = float(r.get("tok_per_s") or r.get("output_tok_per_s") or 0.0)
        ok, requests = r.get("ok", 1), r.get("requests", 1)
        out[r["tag"]][n] = {"itl": itl, "tok_s": tok_s, "ok": ok, "requests": requests}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--title", default="")
    a = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = rows([f for f in a.folders if f.is_dir()])
    for f in a.folders:
        if f.is_file():
            data.update(merged_rows(f))
    names = sorted(data)
    itl = [data[n].get(1, {}).get("itl", 0.0) for n in names]
    most = [max(data[n]) for n in names]
    tok = [data[n][c]["tok_s"] for n, c in zip(names, most, strict=True)]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 0.55 * len(names) + 1.8))
    panels = (
        (left, itl, "ITL mean at 1 client, ms (lower is better)"),
        (right, tok, "output tok/s at the most clients (higher is better)"),
    )
    for ax, values, label in panels:
        bars = ax.barh(names, values, color="#4c72b0")
        ax.bar_label(
            bars, labels=[f"{v:.2f}" if v < 100 else f"{v:.0f}" for v in values], padding=3
        )
        ax.set_title(label, fontsize=10)
        ax.invert_yaxis()
        ax.margins(x=0.2)
    right.set_yticks(
        range(len(names)), [f"{n} ({c} clients)" for n, c in zip(names, most, strict=True)]
    )
    fig.suptitle(a.title or ", ".join(f.name for f in a.folders), fontsize=11)
    fig.tight_layout()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.out, dpi=110)
    print(a.out)


if __name__ == "__main__":
    main()
