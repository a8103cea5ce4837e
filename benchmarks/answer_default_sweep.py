"""Issue 37's confirmation of ANSWER's default, as tables and a verdict: the compliance runs of
both trained models on fresh prompts (prompt seed 6000, every family, w = 3, 5, 7.5, 256
prompts; benchmarks/results/compliance-default-*.json) with CFG, CFG with the guidance
interval, today's default and the default with guidance off below sigma_t = S for S in
0.3, 0.5, 0.7. Every prompt is paired with itself across methods (``compliance.paired_runs``:
95% bootstrap intervals over prompts). Prints markdown.

    python -m answer_trt.synthetic.compliance --model tiny --backend openvino --prompts 256 --batch 32 \\
        --seed 6000 --families all --guidance-scales 3,5,7.5 --methods cfg,cfg-gmin=0.5,DEFAULT,DEFAULT-gmin=0.3,\\
        DEFAULT-gmin=0.5,DEFAULT-gmin=0.7 --json benchmarks/results/compliance-default-tiny.json
    (DEFAULT = answer-K=4-parallel-min-sigma=0.5-wn=1; the same with --model benchmarks/models/tiny-biased)
    python benchmarks/answer_default_sweep.py

The rule (issue 37): a threshold S may become the default when, against today's default, it is
worse in no (model, family, w) cell by more than that cell's interval (its paired interval's
upper end is not below 0) and better pooled; among those, the best pooled "correct" at no more
UNet rows per image than today's default.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# (model, its path, the runs of its cells): the second run adds CFG with the interval at 0.7 (the
# threshold the first one chose) on the same engines, prompts and seeds; its CFG must equal the first's.
RUNS = (("tiny", "tiny", ("compliance-default-tiny.json", "compliance-default-cfg07-tiny.json")),
        ("tiny-biased", "benchmarks/models/tiny-biased",
         ("compliance-default-tiny-biased.json", "compliance-default-cfg07-tiny-biased.json")))
TODAY = "answer K=4 parallel min-sigma=0.5 wn=1"
CFG = "cfg"
THRESHOLDS = (0.3, 0.5, 0.7)


def cfg_interval(threshold: float) -> str:
    return f"cfg gmin={threshold:g}"


def candidate(threshold: float) -> str:
    return f"{TODAY} gmin={threshold:g}"


@dataclass(frozen=True)
class Verdict:
    """A threshold against today's default: cells significantly worse, pooled difference."""

    threshold: float
    worse_cells: tuple[str, ...]  # "model family w=W" whose paired interval's upper end is below 0
    pooled: float  # pooled "correct" minus today's, over every prompt of every cell
    pooled_low: float
    pooled_high: float
    rows: int  # UNet rows per image
    passes: bool


Cells = Sequence[tuple[str, Mapping[str, Sequence[float]]]]


def decide(cells: Cells, rows: Mapping[str, int],
           thresholds: Sequence[float] = THRESHOLDS) -> tuple[list[Verdict], float | None]:
    """Issue 37's rule on ``cells`` (``(name, {method label: "correct" 0/1 per prompt})``, prompts
    paired across methods) and ``rows`` per method label: a verdict per threshold, and the
    threshold to make the default (None: keep today's)."""
    from answer_trt.synthetic.compliance import paired_runs

    verdicts = []
    for s in thresholds:
        worse, today_all, cand_all = [], [], []
        for name, by_method in cells:
            today, cand = by_method[TODAY], by_method[candidate(s)]
            if paired_runs(today, cand).high < 0:
                worse.append(name)
            today_all.extend(today)
            cand_all.extend(cand)
        pooled = paired_runs(today_all, cand_all)
        passes = not worse and pooled.value > 0 and rows[candidate(s)] <= rows[TODAY]
        verdicts.append(Verdict(s, tuple(worse), pooled.value, pooled.low, pooled.high, rows[candidate(s)], passes))
    passing = [v for v in verdicts if v.passes]
    best = max(passing, key=lambda v: (v.pooled, -v.rows)) if passing else None
    return verdicts, None if best is None else best.threshold


def rows_per_image(model: str, steps: int, labels: Sequence[str], specs: Mapping[str, Mapping[str, object]]) -> dict[
        str, int]:
    """UNet rows per image of each method over ``steps`` of the model's own scheduler, counted
    from its guider (``Guider.calls``), as the serving batcher counts them."""
    from answer_trt.guiders import make_guider
    from answer_trt.models.source import resolve_model
    from answer_trt.schedulers import make_scheduler, make_step_rule
    from answer_trt.synthetic.compliance import MethodSpec

    config = json.loads((resolve_model(model).path / "scheduler" / "scheduler_config.json").read_text())
    rule = make_step_rule(make_scheduler(config), steps)
    sigmas = [rule.levels(i)[1] for i in range(len(rule.timesteps))]
    out = {}
    for label in labels:
        guider = make_guider(MethodSpec(**specs[label]).guidance(7.5))  # type: ignore[arg-type]
        out[label] = sum(sum(call) for call in guider.calls(sigmas))
    return out


def _diff(base: Sequence[float], other: Sequence[float]) -> str:
    from answer_trt.synthetic.compliance import paired_runs

    d = paired_runs(base, other)
    text = f"{d.value:+.3f} [{d.low:+.3f}, {d.high:+.3f}]"
    return f"**{text}**" if d.low > 0 or d.high < 0 else text


def load_cells() -> tuple[list[tuple[str, str, float, dict[str, list[float]]]], dict[str, int],
                        dict[tuple[str, str], list[float]]]:
    """Every (model, family, w) cell with "correct" per prompt per method (the runs of a model
    merged; a second run's CFG must be the first's to the prompt), UNet rows per image per
    method, and per model and method the time per image against CFG's, one ratio per cell."""
    cells = []
    rows: dict[str, int] = {}
    times: dict[tuple[str, str], list[float]] = {}
    for model, path, names in RUNS:
        runs = [json.loads((RESULTS / name).read_text()) for name in names if (RESULTS / name).is_file()]
        specs: dict[str, dict[str, object]] = {}
        for parts in zip(*(run["cells"] for run in runs), strict=True):
            by_method: dict[str, list[float]] = {}
            for part in parts:
                if (part["family"], part["guidance_scale"]) != (parts[0]["family"], parts[0]["guidance_scale"]):
                    raise SystemExit(f"{model}: the runs' cells are not in the same order")
                cfg_seconds = next(m["seconds_per_image"] for m in part["methods"] if m["label"] == CFG)
                for m in part["methods"]:
                    if m["label"] in by_method and by_method[m["label"]] != m["correct_by_prompt"]:
                        raise SystemExit(f"{model} {part['family']}: {m['label']} differs between runs")
                    if m["label"] not in by_method:  # time against CFG in the same batches, per cell
                        times.setdefault((model, m["label"]), []).append(m["seconds_per_image"] / cfg_seconds)
                    by_method[m["label"]] = m["correct_by_prompt"]
                    specs[m["label"]] = m["spec"]
            cells.append((model, parts[0]["family"], parts[0]["guidance_scale"], by_method))
        steps = {run["steps"] for run in runs}
        model_rows = rows_per_image(path, steps.pop(), list(specs), specs)
        if steps or any(rows.get(label, n) != n for label, n in model_rows.items()):
            raise SystemExit(f"{model}: another step count or schedule than the other runs'")
        rows.update(model_rows)
    return cells, rows, times


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(ROOT))
    per_cell = "--per-cell" in (sys.argv[1:] if argv is None else argv)
    cells, rows, times = load_cells()
    verdicts, chosen = decide([(f"{m} {f} w={w:g}", by) for m, f, w, by in cells], rows)
    s = chosen if chosen is not None else 0.5
    new, cfg_s = candidate(s), cfg_interval(s)
    print(f"Verdict: {'keep today default' if chosen is None else f'guidance_min_sigma = {chosen:g} for ANSWER'}\n")
    for v in verdicts:
        print(f"- S = {v.threshold:g}: {v.rows} rows; pooled - today's default {v.pooled:+.3f} [{v.pooled_low:+.3f}, "
              f"{v.pooled_high:+.3f}]; cells worse beyond their interval: {', '.join(v.worse_cells) or 'none'}"
              f" -> {'passes' if v.passes else 'fails'}")
    groups: dict[tuple[str, str], dict[str, list[float]]] = {}
    for model, family, _w, by_method in cells:
        for label, verdict in by_method.items():
            groups.setdefault((model, family), {}).setdefault(label, []).extend(verdict)
    for model in dict.fromkeys(m for m, *_ in cells):  # each model's families, then all of them
        for family in [f for m, f in list(groups) if m == model]:
            for label, verdict in groups[(model, family)].items():
                groups.setdefault((model, "all families"), {}).setdefault(label, []).extend(verdict)
    groups = dict(sorted(groups.items(), key=lambda item: item[0][0]))
    names = {CFG: "CFG", cfg_s: f"CFG, S = {s:g}", TODAY: "today's default", new: f"new default (S = {s:g})"}
    columns = [label for label in names if label in cells[0][3]]
    header = f"| {' | '.join(names[c] for c in columns)} | new - today's | new - CFG |" + (
        f" CFG, S = {s:g} - CFG | new - CFG, S = {s:g} |" if cfg_s in columns else "")

    def row(by_method: dict[str, list[float]]) -> str:
        means = " | ".join(f"{np.mean(by_method[label]):.3f}" for label in columns)
        diffs = f"{_diff(by_method[TODAY], by_method[new])} | {_diff(by_method[CFG], by_method[new])}"
        if cfg_s in columns:
            diffs += f" | {_diff(by_method[CFG], by_method[cfg_s])} | {_diff(by_method[cfg_s], by_method[new])}"
        return f"{means} | {diffs} |"

    print("\nPer family, w = 3, 5 and 7.5 pooled (768 prompts; all families: 5,376), correct:\n")
    print("| model | family " + header)
    print("|---|---|" + "---:|" * (header.count("|") - 1))
    for (model, family), by_method in groups.items():
        print(f"| {model} | {family} | {row(by_method)}")
    if per_cell:
        print("\nPer cell (256 prompts), correct:\n")
        print("| model | family | w " + header)
        print("|---|---|---|" + "---:|" * (header.count("|") - 1))
        for model, family, w, by_method in cells:
            print(f"| {model} | {family} | {w:g} | {row(by_method)}")
    pooled: dict[tuple[str, float | None], dict[str, list[float]]] = {}
    for model, _family, w, by_method in cells:
        for key in ((model, w), (model, None)):
            for label, verdict in by_method.items():
                pooled.setdefault(key, {}).setdefault(label, []).extend(verdict)
    print("\nPooled over the 7 families (1,792 prompts per w; 5,376 over all three); time per image against CFG's:"
          " the median over the model's 21 cells of the ratio in each (methods alternate batch by batch):\n")
    print("| model | w | method | rows/image (vs CFG) | time/image vs CFG | correct | - today's default | - CFG |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    labels = [CFG, *(cfg_interval(t) for t in THRESHOLDS), TODAY, *(candidate(t) for t in THRESHOLDS)]
    for (model, w), by_method in sorted(pooled.items(), key=lambda item: (item[0][0], item[0][1] or 99)):
        for label in (label for label in labels if label in by_method):
            today = "" if label == TODAY else _diff(by_method[TODAY], by_method[label])
            vs_cfg = "" if label == CFG else _diff(by_method[CFG], by_method[label])
            print(f"| {model} | {'all' if w is None else f'{w:g}'} | {label} | {rows[label]} "
                  f"({rows[label] / rows[CFG]:.2f}x) | {np.median(times[(model, label)]):.2f}x | "
                  f"{np.mean(by_method[label]):.3f} | {today} | {vs_cfg} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
