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
RUNS = (("tiny", "tiny", "compliance-default-tiny.json"),
        ("tiny-biased", "benchmarks/models/tiny-biased", "compliance-default-tiny-biased.json"))
TODAY = "answer K=4 parallel min-sigma=0.5 wn=1"
CFG, CFG_INTERVAL = "cfg", "cfg gmin=0.5"
THRESHOLDS = (0.3, 0.5, 0.7)


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
    from answer_trt.config import GuidanceConfig
    from answer_trt.guiders import make_guider
    from answer_trt.models.source import resolve_model
    from answer_trt.schedulers import make_scheduler, make_step_rule

    config = json.loads((resolve_model(model).path / "scheduler" / "scheduler_config.json").read_text())
    rule = make_step_rule(make_scheduler(config), steps)
    sigmas = [rule.levels(i)[1] for i in range(len(rule.timesteps))]
    out = {}
    for label in labels:
        kwargs = {k: v for k, v in specs[label].items() if k != "negative"}
        if kwargs.get("negative_scale") is None:
            kwargs["negative_scale"] = 7.5
        guider = make_guider(GuidanceConfig(guidance_scale=7.5, **kwargs))  # type: ignore[arg-type]
        out[label] = sum(sum(call) for call in guider.calls(sigmas))
    return out


def _diff(base: Sequence[float], other: Sequence[float]) -> str:
    from answer_trt.synthetic.compliance import paired_runs

    d = paired_runs(base, other)
    text = f"{d.value:+.3f} [{d.low:+.3f}, {d.high:+.3f}]"
    return f"**{text}**" if d.low > 0 or d.high < 0 else text


def main() -> int:
    sys.path.insert(0, str(ROOT))
    cells: list[tuple[str, dict[str, list[float]]]] = []
    rows: dict[str, int] = {}
    seconds: dict[tuple[str, str], list[float]] = {}
    print("| model | family | w | CFG | CFG, S = 0.5 | default | default, S = 0.5 | S = 0.5 - default | "
          "default, S = 0.5 - CFG | CFG, S = 0.5 - CFG |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    pooled: dict[tuple[str, float | None], dict[str, list[float]]] = {}
    for model, path, name in RUNS:
        run = json.loads((RESULTS / name).read_text())
        for cell in run["cells"]:
            by_method = {m["label"]: m["correct_by_prompt"] for m in cell["methods"]}
            specs = {m["label"]: m["spec"] for m in cell["methods"]}
            for m in cell["methods"]:
                seconds.setdefault((model, m["label"]), []).append(m["seconds_per_image"])
            w = cell["guidance_scale"]
            cells.append((f"{model} {cell['family']} w={w:g}", by_method))
            for key in ((model, w), (model, None)):
                for label, verdicts in by_method.items():
                    pooled.setdefault(key, {}).setdefault(label, []).extend(verdicts)
            c = candidate(0.5)
            print(f"| {model} | {cell['family']} | {w:g} | " + " | ".join(
                f"{np.mean(by_method[label]):.3f}" for label in (CFG, CFG_INTERVAL, TODAY, c))
                + f" | {_diff(by_method[TODAY], by_method[c])} | {_diff(by_method[CFG], by_method[c])} | "
                f"{_diff(by_method[CFG], by_method[CFG_INTERVAL])} |")
        model_rows = rows_per_image(path, run["steps"], list(specs), specs)
        if rows and rows != model_rows:
            raise SystemExit(f"{name}: another step count or schedule than the first run's")
        rows = model_rows
    print()
    print("Pooled over the 7 families (1,792 prompts per w; 5,376 over all three):")
    print()
    print("| model | w | method | rows/image (vs CFG) | s/image (vs CFG) | correct | - today's default | - CFG |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    labels = [CFG, CFG_INTERVAL, TODAY, *(candidate(s) for s in THRESHOLDS)]
    for (model, w), by_method in pooled.items():
        for label in labels:
            time = np.mean(seconds[(model, label)]) / np.mean(seconds[(model, CFG)])
            today = "" if label == TODAY else _diff(by_method[TODAY], by_method[label])
            vs_cfg = "" if label == CFG else _diff(by_method[CFG], by_method[label])
            print(f"| {model} | {'all' if w is None else f'{w:g}'} | {label} | {rows[label]} "
                  f"({rows[label] / rows[CFG]:.2f}x) | {time:.2f}x | {np.mean(by_method[label]):.3f} | {today} | "
                  f"{vs_cfg} |")
    verdicts, chosen = decide(cells, rows)
    print()
    for v in verdicts:
        print(f"- S = {v.threshold:g}: {v.rows} rows; pooled - today's default {v.pooled:+.3f} [{v.pooled_low:+.3f}, "
              f"{v.pooled_high:+.3f}]; cells worse beyond their interval: {', '.join(v.worse_cells) or 'none'}"
              f" -> {'passes' if v.passes else 'fails'}")
    print(f"\nVerdict: {'keep today default' if chosen is None else f'guidance_min_sigma = {chosen:g} for ANSWER'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
