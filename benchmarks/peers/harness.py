"""Pure logic of the peer benchmark: the peers, the run settings and their checks, the
round schedule, statistics, ratios, image agreement and the markdown table. No
subprocesses, no model libraries (``tests/test_peer_bench.py`` tests this module)."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# Peer name -> (worker kind, guidance method). The answer-trt peers of one backend share one worker.
PEERS: dict[str, tuple[str, str]] = {
    "answer-trt CFG": ("answer-trt", "cfg"),
    "answer-trt ANSWER": ("answer-trt", "answer"),
    "optimum ORT CFG": ("optimum", "cfg"),
    "diffusers eager CFG": ("diffusers", "cfg"),
    # OpenVINO (issue 35): answer-trt's --backend openvino engines, optimum-intel's OVStableDiffusionPipeline.
    "answer-trt OV CFG": ("answer-trt-openvino", "cfg"),
    "answer-trt OV ANSWER": ("answer-trt-openvino", "answer"),
    "optimum-intel OV CFG": ("optimum-intel", "cfg"),
    # optimum-intel at OpenVINO's own default precision on a CPU with native bf16 (answer-trt's default there too).
    "optimum-intel OV bf16 CFG": ("optimum-intel-bf16", "cfg"),
}
REFERENCE = "diffusers eager CFG"
OURS_CFG, OURS_ANSWER, OPTIMUM = "answer-trt CFG", "answer-trt ANSWER", "optimum ORT CFG"
OURS_OV_CFG, OURS_OV_ANSWER, OPTIMUM_INTEL = "answer-trt OV CFG", "answer-trt OV ANSWER", "optimum-intel OV CFG"
OPTIMUM_INTEL_BF16 = "optimum-intel OV bf16 CFG"
OPENVINO_KINDS = ("answer-trt-openvino", "optimum-intel", "optimum-intel-bf16")
# --peers all: the ONNX Runtime set (optimum-intel needs its own environment: setup.sh --openvino).
DEFAULT_PEERS = (OURS_CFG, OURS_ANSWER, OPTIMUM, REFERENCE)
# --peers short names.
SHORT_NAMES = {"cfg": OURS_CFG, "answer": OURS_ANSWER, "optimum": OPTIMUM, "diffusers": REFERENCE,
               "ov-cfg": OURS_OV_CFG, "ov-answer": OURS_OV_ANSWER, "optimum-intel": OPTIMUM_INTEL,
               "optimum-intel-bf16": OPTIMUM_INTEL_BF16}
# A CFG peer whose images differ from diffusers' by more than this many 8-bit levels is flagged.
AGREEMENT_LEVELS = 4

# Per model: image side, steps, and the default rounds / images per round / warm-up images.
MODEL_DEFAULTS: dict[str, dict[str, int]] = {
    "tiny": dict(size=32, steps=30, rounds=3, images=8, warmup=2),
    "sd15-random": dict(size=256, steps=4, rounds=3, images=2, warmup=1),
}
PROMPTS = (
    "a red circle and a blue square",
    "a green triangle",
    "a yellow square and a red triangle",
    "a blue circle",
)
TARGETS = (
    # (name, numerator peer, denominator peer, minimum ratio of denominator time / numerator time, models)
    ("answer-trt CFG >= 1.2x faster than optimum per image", OURS_CFG, OPTIMUM, 1.2, ("tiny", "sd15-random")),
    ("answer-trt ANSWER no slower than optimum CFG", OURS_ANSWER, OPTIMUM, 1.0, ("tiny",)),
    ("answer-trt OV CFG >= 1.1x faster than optimum-intel per image", OURS_OV_CFG, OPTIMUM_INTEL, 1.1,
     ("tiny", "sd15-random")),
    ("answer-trt OV CFG >= 1.1x faster than optimum-intel in bf16 per image", OURS_OV_CFG, OPTIMUM_INTEL_BF16, 1.1,
     ("tiny", "sd15-random")),
    ("answer-trt OV ANSWER no slower than optimum ORT CFG", OURS_OV_ANSWER, OPTIMUM, 1.0, ("tiny", "sd15-random")),
    ("answer-trt OV CFG >= 1.5x faster than optimum ORT per image", OURS_OV_CFG, OPTIMUM, 1.5, ("tiny", "sd15-random")),
)


class SettingsError(ValueError):
    """A run setting that is out of range: its message is one line that says what to change."""


@dataclass(frozen=True)
class Settings:
    """What one benchmark run is asked for."""

    model: str
    size: int
    steps: int
    rounds: int
    images: int
    warmup: int
    guidance_scale: float = 7.5
    threads: int = 2
    seed: int = 0
    peers: tuple[str, ...] = DEFAULT_PEERS
    optimum_spinning: bool = True  # False: ORT spin-waiting off in optimum's sessions, as answer-trt does
    build_args: tuple[str, ...] = ()  # extra `answer-trt build` arguments
    # Steps of each warm-up image (None: ``steps``): fewer compile and allocate what the timed
    # images use (every call shape comes in the first steps) at a fraction of a full-size image's time.
    warmup_steps: int | None = None

    def variant(self) -> str:
        """A suffix naming what differs from the default run ("" for the default):
        names the engines folder, the JSON file and the README block."""
        parts = [a.lstrip("-").replace("=", "-").replace("/", "-") for a in self.build_args]
        if not self.optimum_spinning:
            parts.append("optimum-no-spinning")
        if any(PEERS.get(p, ("", ""))[0] in OPENVINO_KINDS for p in self.peers):
            parts.append("openvino")  # its own README block: the ONNX Runtime set's stays as it was
        return "".join(f"-{p}" for p in parts if p)

    def __post_init__(self) -> None:
        if self.model not in MODEL_DEFAULTS:
            raise SettingsError(f"unknown model {self.model!r}: choose one of {', '.join(MODEL_DEFAULTS)}")
        if self.warmup_steps is not None and (not isinstance(self.warmup_steps, int) or self.warmup_steps < 2):
            raise SettingsError(f"--warmup-steps must be an integer >= 2 (ANSWER's call shapes), got "
                                f"{self.warmup_steps!r}")
        for name, low in (("steps", 1), ("rounds", 1), ("images", 1), ("warmup", 0), ("threads", 1), ("seed", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < low:
                raise SettingsError(f"--{name} must be an integer >= {low}, got {value!r}")
        if self.size < 8 or self.size % 8:
            raise SettingsError(f"--size must be a positive multiple of 8, got {self.size}")
        if not self.guidance_scale > 1.0:
            raise SettingsError(f"--guidance-scale must be above 1 (CFG), got {self.guidance_scale}")
        unknown = [p for p in self.peers if p not in PEERS]
        if unknown or not self.peers:
            raise SettingsError(f"unknown peer(s) {unknown}: choose from {', '.join(PEERS)}")
        if len(set(self.peers)) != len(self.peers):
            raise SettingsError(f"peers listed twice: {', '.join(self.peers)}")

    def jobs(self) -> list[tuple[str, int]]:
        """Per round, the (prompt, seed) of each image: image i gets prompt i mod 4 and
        seed ``seed + i``; every peer and every round draws the same images."""
        return [(PROMPTS[i % len(PROMPTS)], self.seed + i) for i in range(self.images)]


def schedule(peers: Sequence[str], rounds: int) -> list[tuple[int, str]]:
    """Alternating rounds: (round, peer) as A B C D, A B C D, ... so that drift on a
    shared machine hits every peer alike."""
    return [(r, p) for r in range(rounds) for p in peers]


def parse_peers(text: str) -> tuple[str, ...]:
    """``--peers`` as short names (``cfg,answer,optimum,diffusers``, and the OpenVINO peers
    ``ov-cfg,ov-answer,optimum-intel,optimum-intel-bf16``), ``all`` (the ONNX Runtime set,
    ``DEFAULT_PEERS``) or ``openvino`` (``all`` and the four OpenVINO peers)."""
    short = SHORT_NAMES
    if text.strip() == "all":
        return DEFAULT_PEERS
    if text.strip() == "openvino":
        return (*DEFAULT_PEERS, OURS_OV_CFG, OURS_OV_ANSWER, OPTIMUM_INTEL, OPTIMUM_INTEL_BF16)
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in short]
    if bad or not names:
        raise SettingsError(f"--peers: unknown {', '.join(bad) or '(empty)'}: use all, openvino or a list of "
                            f"{', '.join(short)}")
    return tuple(short[n] for n in names)


@dataclass(frozen=True)
class Spread:
    """Median and range of a list of seconds."""

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not values:
            raise ValueError("no timings to summarize")
        return cls(statistics.median(values), min(values), max(values), len(values))

    def as_dict(self) -> dict[str, float | int]:
        return {"median": self.median, "min": self.low, "max": self.high, "n": self.n}


@dataclass
class PeerResult:
    """One peer's seconds per image, per round, and its image agreement with diffusers."""

    name: str
    rounds: list[list[float]] = field(default_factory=list)
    max_abs_diff: int | None = None
    mean_abs_diff: float | None = None

    def per_image(self) -> Spread:
        """Over every timed image of every round."""
        return Spread.of([s for r in self.rounds for s in r])

    def round_medians(self) -> list[float]:
        return [statistics.median(r) for r in self.rounds]


def ratio(numerator: PeerResult, denominator: PeerResult) -> float:
    """How many times faster ``numerator`` is than ``denominator`` per image (median
    seconds of the denominator / of the numerator): above 1 means faster."""
    return denominator.per_image().median / numerator.per_image().median


def round_ratios(numerator: PeerResult, denominator: PeerResult) -> list[float]:
    """The same ratio round by round (the spread of the ratio within one run)."""
    return [d / n for n, d in zip(numerator.round_medians(), denominator.round_medians())]


def agreement_note(result: PeerResult) -> str:
    """The agreement cell: levels of 8 bits against diffusers, flagged when too far."""
    if result.name == REFERENCE:
        return "reference"
    if result.max_abs_diff is None:
        return "n/a"
    if PEERS[result.name][1] != "cfg":
        return f"{result.max_abs_diff} (other method)"
    flag = "" if result.max_abs_diff <= AGREEMENT_LEVELS else " DISAGREES"
    return f"{result.max_abs_diff}{flag}"


def target_rows(results: Mapping[str, PeerResult], model: str) -> list[dict[str, Any]]:
    """Each target of the issue that applies to ``model`` and whose peers ran: the ratio
    (median, and range over rounds) and whether it was met."""
    rows = []
    for name, num, den, minimum, models in TARGETS:
        if model not in models or num not in results or den not in results:
            continue
        value = ratio(results[num], results[den])
        per_round = round_ratios(results[num], results[den])
        rows.append({"target": name, "ratio": value, "round_ratios": per_round, "minimum": minimum,
                     "met": value >= minimum})
    return rows


def markdown_table(results: Mapping[str, PeerResult], settings: Settings) -> str:
    """The per-peer table: per image and per step (median [min, max] over all timed
    images), the ratio to optimum's CFG and the agreement with diffusers."""
    header = (f"{settings.model}, {settings.size}x{settings.size}, {settings.steps} DDIM steps, w = "
              f"{settings.guidance_scale:g}, {settings.rounds} rounds x {settings.images} images after "
              f"{settings.warmup} warm-up"
              f"{'' if settings.warmup_steps is None else f' of {settings.warmup_steps} steps'}, {settings.threads} "
              f"threads"
              f"{'' if settings.optimum_spinning else ', optimum with ORT spin-waiting off'}"
              f"{', answer-trt build ' + ' '.join(settings.build_args) if settings.build_args else ''}\n\n")
    intel = results.get(OPTIMUM_INTEL)  # a second baseline column where optimum-intel ran
    lines = [
        "| peer | per image: median [min, max] | per step (median) | optimum CFG time / this | "
        + ("optimum-intel CFG time / this | " if intel else "") + "max abs diff vs diffusers (8-bit levels) |",
        "|---|---|---|---|---|" + ("---|" if intel else ""),
    ]
    base = results.get(OPTIMUM)
    for name in settings.peers:
        if name not in results:
            continue
        res = results[name]
        spread = res.per_image()
        speed = f"{ratio(res, base):.2f}x" if base is not None else "n/a"
        speed_intel = f"{ratio(res, intel):.2f}x | " if intel is not None else ""
        lines.append(
            f"| {name} | {spread.median:.3f} s [{spread.low:.3f}, {spread.high:.3f}] | "
            f"{1000 * spread.median / settings.steps:.1f} ms | {speed} | {speed_intel}{agreement_note(res)} |"
        )
    targets = [
        f"- {row['target']}: {row['ratio']:.2f}x (rounds {', '.join(f'{r:.2f}' for r in row['round_ratios'])}; "
        f"needs {row['minimum']:.1f}x): {'met' if row['met'] else 'NOT met'}"
        for row in target_rows(results, settings.model)
    ]
    return header + "\n".join(lines) + ("\n\n" + "\n".join(targets) if targets else "") + "\n"


def summary_json(results: Mapping[str, PeerResult], settings: Settings) -> dict[str, Any]:
    """Every figure of the table, per round, as JSON-ready data."""
    peers: dict[str, Any] = {}
    for name, res in results.items():
        spread = res.per_image()
        peers[name] = {
            "seconds_per_image_by_round": res.rounds,
            "round_medians": res.round_medians(),
            "per_image": spread.as_dict(),
            "per_step_median_s": spread.median / settings.steps,
            "max_abs_diff_vs_diffusers": res.max_abs_diff,
            "mean_abs_diff_vs_diffusers": res.mean_abs_diff,
            "agreement": agreement_note(res),
        }
    ratios: dict[str, Any] = {}
    for base, label in ((OPTIMUM, "optimum"), (OPTIMUM_INTEL, "optimum-intel")):
        if base in results:
            for name in results:
                ratios[f"{label} CFG time / {name} time"] = ratio(results[name], results[base])
    return {"peers": peers, "ratios": ratios, "targets": target_rows(results, settings.model)}
