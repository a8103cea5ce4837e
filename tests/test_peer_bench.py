"""The peer benchmark's pure logic (benchmarks/peers/harness.py and the driver's
argument handling): settings checks, the alternating schedule, medians, ratios, the
targets, image agreement flags and the table. No environments, no peers."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

PEERS_DIR = Path(__file__).resolve().parent.parent / "benchmarks" / "peers"


def _module(name: str) -> ModuleType:
    if str(PEERS_DIR) not in sys.path:
        sys.path.insert(0, str(PEERS_DIR))
    return importlib.import_module(name)


harness = _module("harness")


def settings(**changes: object) -> object:
    base: dict[str, object] = dict(model="tiny", size=32, steps=30, rounds=2, images=3, warmup=1)
    base.update(changes)
    return harness.Settings(**base)


def result(name: str, rounds: list[list[float]], diff: int | None = None) -> object:
    res = harness.PeerResult(name, rounds)
    res.max_abs_diff = diff
    return res


@pytest.mark.parametrize("changes, message", [
    (dict(model="sd14"), "unknown model"),
    (dict(steps=0), "--steps must be an integer >= 1"),
    (dict(rounds=0), "--rounds"),
    (dict(images=0), "--images"),
    (dict(warmup=-1), "--warmup must be an integer >= 0"),
    (dict(warmup_steps=1), "--warmup-steps must be an integer >= 2"),
    (dict(threads=0), "--threads"),
    (dict(size=30), "multiple of 8"),
    (dict(guidance_scale=1.0), "above 1"),
    (dict(peers=("answer-trt CFG", "answer-trt CFG")), "listed twice"),
    (dict(peers=("tensorrt",)), "unknown peer"),
])
def test_settings_refuse_bad_values_in_one_line(changes: dict[str, object], message: str) -> None:
    with pytest.raises(harness.SettingsError, match=message) as info:
        settings(**changes)
    assert "\n" not in str(info.value)


def test_parse_peers_short_names_and_all() -> None:
    assert harness.parse_peers("all") == ("answer-trt CFG", "answer-trt ANSWER", "optimum ORT CFG",
                                          "diffusers eager CFG")  # no optimum-intel: its own environment
    assert harness.parse_peers("openvino")[4:] == ("answer-trt OV CFG", "answer-trt OV ANSWER", "optimum-intel OV CFG",
                                                   "optimum-intel OV bf16 CFG")
    assert harness.parse_peers("optimum-intel-bf16") == ("optimum-intel OV bf16 CFG",)
    assert harness.parse_peers("ov-cfg,optimum-intel") == ("answer-trt OV CFG", "optimum-intel OV CFG")
    assert harness.parse_peers("cfg, optimum") == ("answer-trt CFG", "optimum ORT CFG")
    with pytest.raises(harness.SettingsError, match="unknown trt"):
        harness.parse_peers("cfg,trt")
    with pytest.raises(harness.SettingsError, match="empty"):
        harness.parse_peers(",")


def test_schedule_alternates_peers_within_each_round() -> None:
    assert harness.schedule(["A", "B", "C"], 2) == [(0, "A"), (0, "B"), (0, "C"), (1, "A"), (1, "B"), (1, "C")]


def test_jobs_are_the_same_images_for_every_peer_and_round() -> None:
    jobs = settings(images=5, seed=10).jobs()
    assert [seed for _, seed in jobs] == [10, 11, 12, 13, 14]
    assert jobs[4][0] == harness.PROMPTS[0] and jobs[1][0] == harness.PROMPTS[1]


def test_spread_median_and_range() -> None:
    spread = harness.Spread.of([3.0, 1.0, 2.0, 10.0])
    assert (spread.median, spread.low, spread.high, spread.n) == (2.5, 1.0, 10.0, 4)
    with pytest.raises(ValueError):
        harness.Spread.of([])


def test_ratio_is_denominator_over_numerator_median_and_per_round() -> None:
    ours = result("answer-trt CFG", [[1.0, 1.0, 3.0], [2.0, 2.0, 2.0]])   # median of all: 2.0
    theirs = result("optimum ORT CFG", [[3.0, 3.0, 3.0], [5.0, 5.0, 5.0]])  # median of all: 4.0
    assert harness.ratio(ours, theirs) == pytest.approx(2.0)
    assert harness.round_ratios(ours, theirs) == pytest.approx([3.0, 2.5])


def test_targets_met_and_not_met_and_model_specific() -> None:
    results = {
        "answer-trt CFG": result("answer-trt CFG", [[1.0]]),
        "answer-trt ANSWER": result("answer-trt ANSWER", [[1.1]]),
        "optimum ORT CFG": result("optimum ORT CFG", [[1.15]]),
    }
    rows = {row["target"]: row for row in harness.target_rows(results, "tiny")}
    cfg, answer = (rows[name] for name, *_ in harness.TARGETS[:2])  # the OpenVINO targets: their peers did not run
    assert cfg["ratio"] == pytest.approx(1.15) and cfg["met"] is False  # needs 1.2x
    assert answer["ratio"] == pytest.approx(1.15 / 1.1) and answer["met"] is True
    # The ANSWER target is the tiny model's only.
    assert [row["target"] for row in harness.target_rows(results, "sd15-random")] == [harness.TARGETS[0][0]]
    # A target whose peer did not run is left out, not failed.
    del results["optimum ORT CFG"]
    assert harness.target_rows(results, "tiny") == []


def test_agreement_flags_a_cfg_peer_beyond_the_tolerance_only() -> None:
    limit = harness.AGREEMENT_LEVELS
    assert harness.agreement_note(result("optimum ORT CFG", [[1.0]], limit)) == str(limit)
    assert "DISAGREES" in harness.agreement_note(result("optimum ORT CFG", [[1.0]], limit + 1))
    assert harness.agreement_note(result("answer-trt ANSWER", [[1.0]], 200)) == "200 (other method)"
    assert harness.agreement_note(result("diffusers eager CFG", [[1.0]], 0)) == "reference"


def test_table_and_json_carry_medians_ratios_and_targets() -> None:
    run = settings(peers=("answer-trt CFG", "optimum ORT CFG"))
    results = {
        "answer-trt CFG": result("answer-trt CFG", [[0.1, 0.3], [0.2, 0.2]], 1),
        "optimum ORT CFG": result("optimum ORT CFG", [[0.3, 0.3], [0.3, 0.3]], 2),
    }
    table = harness.markdown_table(results, run)
    row = next(line for line in table.splitlines() if line.startswith("| answer-trt CFG"))
    assert "0.200 s [0.100, 0.300]" in row and "6.7 ms" in row and "1.50x" in row
    assert "met" in table and "NOT met" not in table
    summary = harness.summary_json(results, run)
    json.dumps(summary)  # JSON-ready
    assert summary["peers"]["answer-trt CFG"]["round_medians"] == pytest.approx([0.2, 0.2])
    assert summary["ratios"]["optimum CFG time / answer-trt CFG time"] == pytest.approx(1.5)
    assert summary["targets"][0]["met"] is True


def test_driver_arguments_take_model_defaults_and_refuse_bad_ones() -> None:
    run = _module("run")
    tiny, _ = run.parse_args(["--model", "tiny"])
    assert (tiny.size, tiny.steps, tiny.rounds, tiny.images, tiny.warmup) == (32, 30, 3, 8, 2)
    sd15, _ = run.parse_args(["--model", "sd15-random", "--rounds", "5", "--peers", "cfg,optimum"])
    assert (sd15.size, sd15.steps, sd15.rounds) == (256, 4, 5) and len(sd15.peers) == 2
    with pytest.raises(harness.SettingsError):
        run.parse_args(["--model", "tiny", "--images", "0"])


def test_update_readme_replaces_only_its_own_block(tmp_path: Path) -> None:
    run = _module("run")
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- peers:tiny -->\nold\n<!-- /peers:tiny -->\nafter\n")
    run.update_readme(readme, "tiny", "| new |\n")
    assert readme.read_text() == "intro\n<!-- peers:tiny -->\n| new |\n<!-- /peers:tiny -->\nafter\n"
    with pytest.raises(RuntimeError, match="markers"):
        run.update_readme(readme, "sd15-random", "x\n")


def test_spin_waiting_variant_has_its_own_name_worker_and_header() -> None:
    run = _module("run")
    default, _ = run.parse_args(["--model", "tiny"])
    variant, _ = run.parse_args(["--model", "tiny", "--optimum-no-spinning"])
    assert run.run_name(default) == "tiny" and run.run_name(variant) == "tiny-optimum-no-spinning"
    assert run.worker_peer("optimum", default) == "optimum"
    assert run.worker_peer("optimum", variant) == "optimum-no-spinning"
    assert run.worker_peer("answer-trt", variant) == "answer-trt"
    results = {"optimum ORT CFG": result("optimum ORT CFG", [[1.0]])}
    assert "spin-waiting off" in harness.markdown_table(results, variant)
    assert "spin-waiting" not in harness.markdown_table(results, default)


def test_worker_protocol_times_each_image_saves_them_and_reports_errors(tmp_path: Path) -> None:
    import io

    import numpy as np

    worker = _module("worker")
    calls = []

    def generate(prompt: str, seed: int, method: str, steps: int, scale: float, size: int) -> np.ndarray:
        if method != "cfg":
            raise ValueError("this peer runs only cfg")
        calls.append((prompt, seed, steps, scale, size))
        return np.full((size, size, 3), seed, dtype=np.uint8)

    request = {"cmd": "run", "method": "cfg", "jobs": [["a red circle", 3], ["a blue square", 4]], "steps": 5,
               "guidance_scale": 7.5, "size": 8, "save_dir": str(tmp_path / "images")}
    bad = dict(request, method="answer", save_dir=None)
    requests = io.StringIO("\n".join(json.dumps(r) for r in (request, bad, {"cmd": "quit"}, request)) + "\n")
    replies = io.StringIO()
    worker.serve(generate, requests, replies)
    first, second = (json.loads(line) for line in replies.getvalue().splitlines())  # nothing after quit
    assert calls == [("a red circle", 3, 5, 7.5, 8), ("a blue square", 4, 5, 7.5, 8)]
    assert len(first["seconds"]) == 2 and all(s >= 0 for s in first["seconds"])
    assert [int(np.load(p)[0, 0, 0]) for p in first["images"]] == [3, 4]
    assert second == {"error": "ValueError: this peer runs only cfg"}


def test_build_arguments_name_their_own_engines_json_and_readme_block() -> None:
    run = _module("run")
    optimized, _ = run.parse_args(["--model", "sd15-random", "--build-args=--optimize", "--optimum-no-spinning"])
    assert optimized.build_args == ("--optimize",)
    assert run.run_name(optimized) == "sd15-random-optimize-optimum-no-spinning"
    assert "answer-trt build --optimize" in harness.markdown_table({}, optimized)


def test_openvino_peers_get_their_workers_environments_and_a_second_baseline(tmp_path: Path) -> None:
    run = _module("run")
    ov, _ = run.parse_args(["--model", "tiny", "--peers", "openvino"])
    assert len(ov.peers) == 8 and run.run_name(ov) == "tiny-openvino"  # its own JSON and README block
    assert {harness.PEERS[p][0] for p in ov.peers} >= {"answer-trt-openvino", "optimum-intel", "optimum-intel-bf16"}
    assert run.python_for("optimum-intel", tmp_path) == tmp_path / "optimum-intel" / "bin" / "python"
    assert run.python_for("optimum-intel-bf16", tmp_path) == tmp_path / "optimum-intel" / "bin" / "python"
    assert run.python_for("answer-trt-openvino", tmp_path) == Path(sys.executable)
    with pytest.raises(RuntimeError, match="setup.sh --openvino"):
        run.export("optimum-intel", ["openvino"], tmp_path, tmp_path / "out", tmp_path, [])
    results = {
        "answer-trt OV CFG": result("answer-trt OV CFG", [[0.1, 0.1]], 1),
        "optimum ORT CFG": result("optimum ORT CFG", [[0.3, 0.3]], 2),
        "optimum-intel OV CFG": result("optimum-intel OV CFG", [[0.2, 0.2]], 1),
    }
    run_settings = settings(peers=tuple(results))
    table = harness.markdown_table(results, run_settings)
    assert "optimum-intel CFG time / this" in table.splitlines()[2]
    row = next(line for line in table.splitlines() if line.startswith("| answer-trt OV CFG"))
    assert "| 3.00x | 2.00x |" in row
    targets = {row["target"]: row for row in harness.target_rows(results, "tiny")}
    assert targets["answer-trt OV CFG >= 1.1x faster than optimum-intel per image"]["ratio"] == pytest.approx(2.0)
    summary = harness.summary_json(results, run_settings)
    assert summary["ratios"]["optimum-intel CFG time / answer-trt OV CFG time"] == pytest.approx(2.0)


def test_short_warm_ups_are_said_in_the_table() -> None:
    run = _module("run")
    short, _ = run.parse_args(["--model", "sd15-random", "--warmup-steps", "2"])
    assert short.warmup_steps == 2 and "1 warm-up of 2 steps" in harness.markdown_table({}, short)
    plain, _ = run.parse_args(["--model", "sd15-random"])
    assert plain.warmup_steps is None and "1 warm-up, " in harness.markdown_table({}, plain)
