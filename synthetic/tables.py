"""Markdown tables from compliance JSON reports (benchmarks/README.md is written from these).

    python -m answer_trt.synthetic.tables benchmarks/results/compliance-suite-w7.5.json [more.json ...]

One table per guidance scale: a row per method, a column per prompt family with the
"correct" rate and its paired difference to CFG (95% interval), then the share of all
prompts correct pooled over the families, with its paired difference to CFG, and the time
per image relative to CFG. The pooled interval combines the families' bootstrap intervals
as independent strata (normal approximation: standard error = interval width / 3.92).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any


def _cell_text(method: dict[str, Any], metric: str, is_cfg: bool) -> str:
    rate = method["rates"][metric]
    if is_cfg:
        return f"{rate['value']:.3f}"
    delta = method["vs_cfg"][metric]
    return f"{rate['value']:.3f} ({delta['value']:+.3f} [{delta['low']:+.3f}, {delta['high']:+.3f}])"


def pooled_difference(methods: list[dict[str, Any]], cells: list[dict[str, Any]],
                      metric: str) -> tuple[float, float, float]:
    """(pooled rate, pooled difference to CFG, its standard error) over the families."""
    weights = [c["prompts"] for c in cells]
    total = sum(weights)
    rate = sum(m["rates"][metric]["value"] * n for m, n in zip(methods, weights)) / total
    delta = sum(m["vs_cfg"][metric]["value"] * n for m, n in zip(methods, weights)) / total
    se = sum(((m["vs_cfg"][metric]["high"] - m["vs_cfg"][metric]["low"]) / 3.92 * n / total) ** 2
             for m, n in zip(methods, weights)) ** 0.5
    return rate, delta, se


def markdown(reports: list[dict[str, Any]], metric: str = "correct") -> str:
    by_scale: dict[float, list[dict[str, Any]]] = defaultdict(list)
    for report in reports:
        for cell in report["cells"]:
            by_scale[cell["guidance_scale"]].append(cell)
    out = []
    for w, cells in sorted(by_scale.items()):
        families = [c["family"] for c in cells]
        labels = [m["label"] for m in cells[0]["methods"]]
        out.append(f"w = {w:g}, metric `{metric}`: rate (paired difference to CFG [95% interval]), "
                   f"{cells[0]['prompts']} prompts per family")
        out.append("")
        out.append("| method | " + " | ".join(families) + " | pooled | time vs CFG |")
        out.append("|---" * (len(families) + 3) + "|")
        for row, label in enumerate(labels):
            methods = [next(m for m in c["methods"] if m["label"] == label) for c in cells]
            cfgs = [c["methods"][0] for c in cells]
            pooled = pooled_difference(methods, cells, metric)
            seconds = sum(m["seconds_per_image"] for m in methods) / sum(m["seconds_per_image"] for m in cfgs)
            texts = [_cell_text(m, metric, row == 0) for m in methods]
            pooled_text = f"{pooled[0]:.3f}" if row == 0 else (
                f"{pooled[0]:.3f} ({pooled[1]:+.3f} [{pooled[1] - 1.96 * pooled[2]:+.3f}, "
                f"{pooled[1] + 1.96 * pooled[2]:+.3f}])")
            out.append(f"| {label} | " + " | ".join(texts) + f" | {pooled_text} | {seconds:.2f}x |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", type=Path, nargs="+")
    parser.add_argument("--metric", default="correct", help="correct (default), all, count, colour, shape, side")
    args = parser.parse_args(argv)
    try:
        reports = [json.loads(path.read_text()) for path in args.reports]
    except (OSError, ValueError) as exc:
        print(f"tables: error: {exc}", file=sys.stderr)
        return 2
    print(markdown(reports, args.metric))
    return 0


if __name__ == "__main__":
    sys.exit(main())
