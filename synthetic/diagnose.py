"""Where does ANSWER's guidance go, step by step? Per-step sizes from the sampler's probe.

    python -m answer_trt.synthetic.diagnose --prompts 32 --out benchmarks/results/diagnosis.png

For CFG and ANSWER (K in {1, 2, 4, 8}, parallel and inner mode, and the chosen variants) on
N seeded two-object prompts of the shapes model, every step records (RMS per image, then
the mean over images; docs/ANSWER.md's notation):

- ``negative``: ``||e_neg - e0(x)||``, how far ANSWER's negative is from CFG's (0 for CFG;
  ``wn ||e0 - ep||`` for ANSWER at a re-anchor step, where e_neg = e_dns(x));
- ``guidance``: ``||e - ep||``, the guidance term in noise space (CFG: ``(w - 1) ||e0 - ep||``;
  ANSWER: ``(g - 1) ||e_neg - ep||``; equal at re-anchor steps);
- ``push``: ``||x0(x, e) - x0(x, ep)||``, the clean-image change the guidance makes
  (CFG: ``(w - 1) sigma_t / alpha_t ||e0 - ep||``; ANSWER: ``(g - 1) ||x0(x, ep) - xneg0||``);
- ``drift``: ``||z - x||`` in parallel mode (0 at re-anchor steps).

e0(x) is not among ANSWER's branches, so the probe computes it with one extra UNet call
(diagnostics only). Writes a PNG (matplotlib) and the series as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from answer_trt.errors import UserInputError
from answer_trt.synthetic.compliance import MethodSpec, batch_inputs
from answer_trt.synthetic.dataset import family_example

SERIES = ("negative", "guidance", "push", "drift")
METHODS = (
    MethodSpec("cfg"),
    *(MethodSpec("answer", k) for k in (1, 2, 4, 8)),
    *(MethodSpec("answer", k, mode="inner") for k in (2, 4, 8)),
    MethodSpec("answer", 4, chain_min_sigma=0.5),
    MethodSpec("answer", 4, drift_tau=0.3),
)


@dataclass(frozen=True)
class Trace:
    label: str
    sigmas: list[float]
    negative: list[float]
    guidance: list[float]
    push: list[float]
    drift: list[float]


def rms(t: Any) -> float:
    """Root mean square per image, averaged over the batch."""
    return float(t.flatten(1).pow(2).mean(1).sqrt().mean())


def trace(pipe: Any, spec: MethodSpec, captions: Sequence[str], steps: int, w: float) -> Trace:
    """Run ``spec`` on ``captions`` (seed i for prompt i) and record the per-step series."""
    from answer_trt import guidance as G
    from answer_trt.sampler import sample
    from answer_trt.schedulers import make_scheduler

    cond, noise = batch_inputs(pipe, captions, [None] * len(captions), range(len(captions)))
    c_0 = cond.negative
    out = Trace(spec.label, [], [], [], [], [])

    def probe(step: dict[str, Any]) -> None:
        x_in, alpha, sigma = step["x_in"], step["alpha"], step["sigma"]
        e0 = G.to_epsilon(pipe.denoiser(x_in, step["t"].expand(x_in.shape[0]), c_0), x_in, alpha, sigma,
                          pipe.prediction_type)
        e_neg = step.get("e_neg", e0)
        z_in = step.get("z_in", x_in)
        out.sigmas.append(float(sigma))
        out.negative.append(rms(e_neg - e0))
        out.guidance.append(rms(step["e"] - step["ep"]))
        out.push.append(rms((step["e"] - step["ep"]) * (sigma / alpha)))
        out.drift.append(rms(z_in - x_in))

    guidance = spec.guidance(w)
    sample(pipe.denoiser, noise, cond, make_scheduler(pipe.scheduler_config), steps, guidance,
           prediction_type=pipe.prediction_type, probe=probe)
    return out


def plot(traces: Sequence[Trace], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from answer_trt.files import atomic_path

    names = {"negative": "||e_neg - e0(x)||  (negative vs CFG's e0)",
             "guidance": "||e - ep||  (guidance term, noise space)",
             "push": "||x0(x, e) - x0(x, ep)||  (clean-space push)",
             "drift": "||z - x||  (parallel chain drift)"}
    fig, axes = plt.subplots(1, len(SERIES), figsize=(5 * len(SERIES), 4.8))
    for ax, series in zip(axes, SERIES):
        for t in traces:
            style = "--" if "inner" in t.label else ("-." if "min-sigma" in t.label or "tau" in t.label else "-")
            width = 2.4 if t.label == "cfg" else 1.4
            ax.plot(range(len(t.sigmas)), getattr(t, series), style, linewidth=width, label=t.label)
        ax.set_title(names[series], fontsize=10)
        ax.set_xlabel("step (sigma_t falls from ~1 to ~0)")
        ax.set_yscale("symlog", linthresh=1e-2)
        ax.grid(alpha=0.3)
    sigmas = traces[0].sigmas
    below = next((i for i, s in enumerate(sigmas) if s < 0.5), None)
    if below is not None:
        for ax in axes:
            ax.axvline(below, color="grey", linewidth=0.8)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=5, fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--seed", type=int, default=3000, help="prompt set seed")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--guidance-scale", type=float, default=7.5)
    parser.add_argument("--out", type=Path, required=True, help="PNG path; the series go beside it as .json")
    args = parser.parse_args(argv)
    try:
        if args.prompts < 1 or args.steps < 1:
            raise UserInputError("--prompts and --steps must be at least 1")
        if args.out.suffix.lower() != ".png" or not args.out.parent.is_dir():
            raise UserInputError(f"--out {args.out}: give a .png path in an existing folder")
        from answer_trt.files import write_text_atomic
        from answer_trt.loaders import build_cached, from_engines

        pipe = from_engines(build_cached(args.model, batch=args.prompts), verify=False)
        captions = [family_example("pair", args.seed, i).caption for i in range(args.prompts)]
        traces = [trace(pipe, spec, captions, args.steps, args.guidance_scale) for spec in METHODS]
        title = (f"{args.model}: {args.prompts} two-object prompts, w = {args.guidance_scale:g}, "
                 f"{args.steps} steps (grey line: first step with sigma_t < 0.5)")
        plot(traces, args.out, title)
        write_text_atomic(args.out.with_suffix(".json"), json.dumps(
            {"command": "python -m answer_trt.synthetic.diagnose " + " ".join(sys.argv[1:] if argv is None else argv),
             "traces": [asdict(t) for t in traces]}, indent=1) + "\n")
    except UserInputError as exc:
        print(f"diagnose: error: {exc}", file=sys.stderr)
        return 2
    print(f"diagnose: wrote {args.out} and {args.out.with_suffix('.json')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
