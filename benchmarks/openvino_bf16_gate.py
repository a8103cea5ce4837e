"""Issue 35's bf16 quality gate as a table: the compliance runs of fp32 and bf16 OpenVINO
engines (benchmarks/results/compliance-openvino-*.json), each prompt paired with itself,
per family and pooled per model and method (``compliance.paired_runs``: 95% bootstrap
intervals over prompts). Prints markdown rows.

    python benchmarks/openvino_bf16_gate.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# (model, fp32 run, bf16 run): the same prompts, seeds and methods in each pair.
RUNS = (("tiny", "compliance-openvino-fp32.json", "compliance-openvino-bf16.json"),
        ("tiny", "compliance-openvino-fp32-rest.json", "compliance-openvino-bf16-rest.json"),
        ("tiny-biased", "compliance-openvino-fp32-biased.json", "compliance-openvino-bf16-biased.json"))


def main() -> int:
    sys.path.insert(0, str(ROOT))
    from answer_trt.synthetic.compliance import paired_runs

    pooled: dict[tuple[str, str], tuple[list[float], list[float]]] = {}

    def row(model: str, family: str, label: str, fp32: list[float], bf16: list[float]) -> str:
        diff = paired_runs(fp32, bf16)
        changed = int(np.sum(np.asarray(fp32) != np.asarray(bf16)))
        return (f"| {model} | {family} | {label} | {np.mean(fp32):.3f} | {np.mean(bf16):.3f} | "
                f"{diff.value:+.3f} [{diff.low:+.3f}, {diff.high:+.3f}] | {changed} of {len(fp32)} |")

    for model, fp32_name, bf16_name in RUNS:
        fp32_run, bf16_run = (json.loads((RESULTS / name).read_text()) for name in (fp32_name, bf16_name))
        for fp32_cell, bf16_cell in zip(fp32_run["cells"], bf16_run["cells"], strict=True):
            if fp32_cell["family"] != bf16_cell["family"]:
                raise SystemExit(f"{fp32_name} and {bf16_name} are not the same families")
            for a, b in zip(fp32_cell["methods"], bf16_cell["methods"], strict=True):
                label = "CFG" if a["label"] == "cfg" else "default ANSWER"
                print(row(model, fp32_cell["family"], label, a["correct_by_prompt"], b["correct_by_prompt"]))
                both = pooled.setdefault((model, label), ([], []))
                both[0].extend(a["correct_by_prompt"])
                both[1].extend(b["correct_by_prompt"])
    for (model, label), (fp32, bf16) in pooled.items():
        print(row(model, f"pooled ({len(fp32)} prompts)", label, fp32, bf16))
    return 0


if __name__ == "__main__":
    sys.exit(main())
