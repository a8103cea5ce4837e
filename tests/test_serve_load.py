"""The load benchmark's statistics and request loop (answer_trt.bench.load) against a stand-in
client, and the serve/load command lines' one-line refusals; no server, no Ray started."""

from __future__ import annotations

import math
import threading
import time

import pytest

from answer_trt import cli
from answer_trt.bench.load import (
    LevelResult,
    LoadConfig,
    comparison,
    format_table,
    latency_summary,
    parse_concurrencies,
    run_level,
    target_verdict,
)
from answer_trt.bench.stats import percentile
from answer_trt.errors import UserInputError
from answer_trt.serving.client import ServerError


def test_percentiles_are_nearest_rank():
    samples = [float(x) for x in range(100, 0, -1)]  # 100 .. 1, unsorted on purpose
    assert (percentile(samples, 50), percentile(samples, 95), percentile(samples, 99)) == (50, 95, 99)
    assert percentile(samples, 100) == 100 and percentile(samples, 0.5) == 1
    assert [percentile([4.0, 1.0, 3.0, 2.0], q) for q in (25, 50, 75, 99)] == [1, 2, 3, 4]
    assert percentile([7.0], 99) == 7
    for bad in (0, 101, -5):
        with pytest.raises(ValueError):
            percentile(samples, bad)
    with pytest.raises(ValueError):
        percentile([], 50)


def test_latency_summary():
    summary = latency_summary([0.3, 0.1, 0.2])
    assert summary == {"p50": 0.2, "p95": 0.3, "p99": 0.3, "mean": pytest.approx(0.2), "max": 0.3}
    assert all(math.isnan(v) for v in latency_summary([]).values())


class StandInClient:
    """Answers after ``delay_s``; every ``fail_every``-th request is a 503. Each image costs
    ``steps`` calls of ``rows`` rows, as the server's /v1/stats would count them."""

    def __init__(self, delay_s: float = 0.01, fail_every: int = 0, rows: int = 6) -> None:
        self.delay_s, self.fail_every, self.rows = delay_s, fail_every, rows
        self.lock = threading.Lock()
        self.seen: list[dict[str, object]] = []
        self.calls = 0
        self.in_flight = self.most_in_flight = 0

    def generate(self, prompt: str, **fields: object) -> bytes:
        with self.lock:
            self.seen.append({"prompt": prompt, **fields})
            number = len(self.seen)
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        time.sleep(self.delay_s)
        with self.lock:
            self.in_flight -= 1
            if self.fail_every and number % self.fail_every == 0:
                raise ServerError(503, "the queue is full (1 requests waiting): retry in 1 s", 1.0)
            self.calls += int(fields["steps"])  # type: ignore[call-overload]
        return b"png"

    def stats(self) -> dict[str, int]:
        with self.lock:
            return {"calls": self.calls, "rows": self.calls * self.rows}


def test_a_level_sends_exactly_its_requests_from_its_threads_and_counts_rows_per_call():
    client = StandInClient(fail_every=5)
    config = LoadConfig(concurrencies=(4,), requests=20, steps=3)
    result = run_level(client, 4, config, first_seed=100)  # type: ignore[arg-type]
    assert (result.sent, result.ok, result.failed) == (20, 16, 4)
    assert client.most_in_flight <= 4
    assert sorted(r["seed"] for r in client.seen) == list(range(100, 120))
    assert result.unet_calls == 16 * 3 and result.rows_per_call == 6
    assert result.errors == ("HTTP 503: the queue is full (1 requests waiting): retry in 1 s",)
    assert result.latency_s["p50"] >= 0.01 and result.images_per_s > 0


def test_a_level_stops_sending_after_its_time_limit():
    client = StandInClient(delay_s=0.2)
    config = LoadConfig(requests=1000, max_level_s=0.3)
    started = time.perf_counter()
    result = run_level(client, 2, config)  # type: ignore[arg-type]
    assert time.perf_counter() - started < 5
    assert 2 <= result.sent <= 8 and result.ok == result.sent


def level(concurrency: int, images_per_s: float, p50: float) -> LevelResult:
    return LevelResult(concurrency, 8, 8, 0, 1.0, images_per_s, latency_summary([p50]), 10, 60, 6.0)


def test_comparison_and_the_issues_target():
    on = [level(1, 5.0, 0.2), level(8, 13.0, 0.6)]
    off = [level(1, 5.0, 0.2), level(8, 10.0, 0.4)]
    rows = comparison(on, off)
    assert rows[1] == {"concurrency": 8, "throughput_ratio": pytest.approx(1.3), "p50_ratio": pytest.approx(1.5)}
    assert target_verdict(rows)["met"] is True
    assert target_verdict(comparison([level(8, 12.0, 0.6)], [level(8, 10.0, 0.4)]))["met"] is False
    assert target_verdict(comparison([level(8, 20.0, 0.9)], [level(8, 10.0, 0.4)]))["met"] is False
    assert target_verdict(rows[:1])["met"] is None
    table = format_table({"batching": on, "one-at-a-time": off}, rows)
    assert table.splitlines()[0].startswith("| server | concurrency |")
    assert "| batching | 8 | 8/8 | 13.00 | 0.600 |" in table and "1.30x img/s, 1.50x p50" in table


def test_load_configuration_is_checked():
    assert parse_concurrencies("1, 4,8,16") == (1, 4, 8, 16)
    with pytest.raises(UserInputError, match="--concurrency 'x' is not an integer"):
        parse_concurrencies("1,x")
    with pytest.raises(UserInputError, match="--concurrency must be an integer >= 1, got 0"):
        LoadConfig(concurrencies=(4, 0))
    with pytest.raises(UserInputError, match="--timeout must be a positive number of seconds"):
        LoadConfig(timeout_s=math.inf)


@pytest.mark.parametrize("argv, expected", [
    (["load"], "give either --serve URL (a running server) or --compare (start one here)"),
    (["load", "--serve", "http://127.0.0.1:9", "--compare"], "give either --serve URL"),
    (["load", "--serve", "http://127.0.0.1:9", "--requests", "0"], "--requests must be an integer >= 1, got 0"),
    (["serve", "--engines", "/nonexistent", "--replicas", "0"], "--replicas must be an integer >= 1, got 0"),
    (["serve", "--engines", "/nonexistent", "--port", "70000"], "--port must be an integer from 1 to 65535"),
    (["serve", "--engines", "/nonexistent", "--max-rows", "1"], "--max-rows must be an integer >= 2, got 1"),
])
def test_command_line_mistakes_end_in_one_line_with_code_2(argv, expected, capsys):
    pytest.importorskip("ray", reason="`answer-trt serve` checks for Ray first (the serve extra)")
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("answer-trt: error: ") and expected in err and err.count("\n") == 1


def test_a_server_that_is_not_there_is_one_clear_error():
    from answer_trt.bench.load import free_port
    from answer_trt.serving.client import AnswerTrtClient

    with pytest.raises(ServerError) as info:
        AnswerTrtClient(f"http://127.0.0.1:{free_port()}", timeout_s=5).health()
    assert info.value.status == 0 and "cannot reach http://127.0.0.1:" in str(info.value)


def test_serve_config_checks_cluster_and_gpu_flags():
    from pathlib import Path

    from answer_trt.serving.app import ServeConfig

    assert ServeConfig(Path("e"), replica_gpus=0.5, address="auto").address == "auto"
    with pytest.raises(UserInputError, match="--gpus-per-replica must be a number from 0 to 64"):
        ServeConfig(Path("e"), replica_gpus=-1.0)
    with pytest.raises(UserInputError, match="--address must name a Ray cluster"):
        ServeConfig(Path("e"), address=" ")


def test_serve_takes_the_weights_flags_and_refuses_engines_built_from_other_weights(tiny_model_dir, tmp_path):
    from answer_trt.cli import make_parser
    from answer_trt.loaders import build_cached
    from answer_trt.serving.cli_serve import serve_config

    parser = make_parser()
    lora = tmp_path / "style.safetensors"
    args = parser.parse_args(["serve", "--model", "tiny-random", "--variant", "fp16", "--lora", f"{lora}:0.5"])
    assert args.variant == "fp16" and [(spec.path, spec.scale) for spec in args.lora] == [(lora, 0.5)]
    assert parser.parse_args(["load", "--compare", "--variant", "fp16"]).variant == "fp16"
    engines = build_cached("tiny-random")
    assert serve_config(parser.parse_args(["serve", "--engines", str(engines)])).engines == engines
    with pytest.raises(UserInputError, match="variant"):
        serve_config(parser.parse_args(["serve", "--engines", str(engines), "--variant", "fp16"]))
