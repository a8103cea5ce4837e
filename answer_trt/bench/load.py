"""`answer-trt load`: throughput and latency of `answer-trt serve` under concurrent clients.

Each concurrency level sends ``requests`` requests from that many client threads (bounded
in count and in time) and reports images/s, latency p50/p95/p99 and the mean UNet rows per
call over the level (from ``/v1/stats`` before and after). ``--compare`` starts the server
itself twice on one engines folder, cross-request batching on and then off (one request at a
time), and reports the two side by side with the issue's target: at concurrency 8, at least
1.3x the throughput of one-request-at-a-time at no worse than 2x its median latency.
"""

from __future__ import annotations

import argparse
import math
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from answer_trt.bench.stats import percentile
from answer_trt.errors import UserInputError
from answer_trt.rules import check_int

if TYPE_CHECKING:  # the client (urllib) loads when a load test runs, not with the CLI's parser
    from answer_trt.serving.client import AnswerTrtClient

REPORT_FORMAT = "answer-trt-serve-load/1"
# The tiny model's vocabulary, so its pictures mean something; cycled over the requests.
PROMPTS = ("a red circle", "a blue square and a green triangle", "a yellow triangle",
           "a green circle and a red square", "a blue triangle", "a yellow square and a blue circle")
TARGET_CONCURRENCY = 8
TARGET_THROUGHPUT_RATIO = 1.3
TARGET_P50_RATIO = 2.0
MAX_ERRORS_SHOWN = 3

Log = Callable[[str], None]


@dataclass(frozen=True)
class LoadConfig:
    """``requests`` per concurrency level; a level stops submitting after ``max_level_s``."""

    concurrencies: tuple[int, ...] = (1, 4, 8, 16)
    requests: int = 32
    method: str = "answer"
    steps: int = 30
    warmup: int = 2
    timeout_s: float = 300.0
    max_level_s: float = 600.0

    def __post_init__(self) -> None:
        if not self.concurrencies:
            raise UserInputError("--concurrency needs at least one level, e.g. 1,4,8,16")
        for c in self.concurrencies:
            check_int("--concurrency", c)
        check_int("--requests", self.requests)
        check_int("--steps", self.steps)
        check_int("--warmup", self.warmup, low=0)
        for name, value in (("--timeout", self.timeout_s), ("--max-level-seconds", self.max_level_s)):
            if not (math.isfinite(value) and value > 0):
                raise UserInputError(f"{name} must be a positive number of seconds, got {value}")

    def request(self, index: int) -> dict[str, Any]:
        return {"prompt": PROMPTS[index % len(PROMPTS)], "method": self.method, "steps": self.steps, "seed": index,
                "timeout_s": self.timeout_s}


@dataclass(frozen=True)
class LevelResult:
    concurrency: int
    sent: int
    ok: int
    failed: int
    wall_s: float
    images_per_s: float
    latency_s: dict[str, float]  # p50, p95, p99, mean, max
    unet_calls: int
    unet_rows: int
    rows_per_call: float
    errors: tuple[str, ...] = field(default=())


def latency_summary(samples: Sequence[float]) -> dict[str, float]:
    if not samples:
        return {k: math.nan for k in ("p50", "p95", "p99", "mean", "max")}
    return {"p50": percentile(samples, 50), "p95": percentile(samples, 95), "p99": percentile(samples, 99),
            "mean": sum(samples) / len(samples), "max": max(samples)}


def run_level(client: AnswerTrtClient, concurrency: int, config: LoadConfig, first_seed: int = 0) -> LevelResult:
    """``config.requests`` requests from ``concurrency`` threads; none starts after ``max_level_s``."""
    from answer_trt.serving.client import ServerError

    lock = threading.Lock()
    next_index = [0]
    latencies: list[float] = []
    errors: list[str] = []
    started = time.perf_counter()
    stop_at = started + config.max_level_s

    def worker() -> None:
        while True:
            with lock:
                index = next_index[0]
                if index >= config.requests or time.perf_counter() > stop_at:
                    return
                next_index[0] += 1
            sent = time.perf_counter()
            try:
                client.generate(**config.request(first_seed + index))
            except ServerError as exc:
                with lock:
                    errors.append(str(exc))
                continue
            with lock:
                latencies.append(time.perf_counter() - sent)

    before = client.stats()
    with ThreadPoolExecutor(concurrency, thread_name_prefix="load") as pool:
        for _ in range(concurrency):
            pool.submit(worker)
    wall = time.perf_counter() - started
    after = client.stats()
    calls, rows = after["calls"] - before["calls"], after["rows"] - before["rows"]
    return LevelResult(
        concurrency=concurrency, sent=next_index[0], ok=len(latencies), failed=len(errors), wall_s=wall,
        images_per_s=len(latencies) / wall if wall > 0 else math.nan, latency_s=latency_summary(latencies),
        unet_calls=calls, unet_rows=rows, rows_per_call=rows / calls if calls else math.nan,
        errors=tuple(dict.fromkeys(errors))[:MAX_ERRORS_SHOWN],
    )


def run_load(client: AnswerTrtClient, config: LoadConfig, log: Log) -> list[LevelResult]:
    for i in range(config.warmup):
        client.generate(**config.request(10**6 + i))
    results = []
    for level, concurrency in enumerate(config.concurrencies):
        result = run_level(client, concurrency, config, first_seed=level * config.requests)
        log(f"concurrency {concurrency}: {result.ok}/{result.sent} ok, {result.images_per_s:.2f} img/s, "
            f"p50 {result.latency_s['p50']:.3f} s, {result.rows_per_call:.2f} rows/call")
        results.append(result)
    return results


def comparison(on: Sequence[LevelResult], off: Sequence[LevelResult]) -> list[dict[str, Any]]:
    """Per concurrency: batching's throughput and p50 latency relative to one-at-a-time."""
    rows = []
    for a, b in zip(on, off):
        rows.append({"concurrency": a.concurrency, "throughput_ratio": a.images_per_s / b.images_per_s,
                     "p50_ratio": a.latency_s["p50"] / b.latency_s["p50"]})
    return rows


def target_verdict(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    row = next((r for r in rows if r["concurrency"] == TARGET_CONCURRENCY), None)
    verdict: dict[str, Any] = {"concurrency": TARGET_CONCURRENCY, "min_throughput_ratio": TARGET_THROUGHPUT_RATIO,
                               "max_p50_ratio": TARGET_P50_RATIO, "met": None}
    if row is not None:
        verdict["met"] = bool(row["throughput_ratio"] >= TARGET_THROUGHPUT_RATIO
                              and row["p50_ratio"] <= TARGET_P50_RATIO)
    return verdict


def format_table(runs: Mapping[str, Sequence[LevelResult]], rows: Sequence[dict[str, Any]] = ()) -> str:
    """A markdown table: one line per (server, concurrency); ratios where both ran."""
    ratio = {r["concurrency"]: r for r in rows}
    lines = ["| server | concurrency | ok/sent | img/s | p50 s | p95 s | p99 s | rows/UNet call | vs one-at-a-time |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for label, results in runs.items():
        for r in results:
            lat = r.latency_s
            vs = ""
            if label == "batching" and r.concurrency in ratio:
                x = ratio[r.concurrency]
                vs = f"{x['throughput_ratio']:.2f}x img/s, {x['p50_ratio']:.2f}x p50"
            lines.append(f"| {label} | {r.concurrency} | {r.ok}/{r.sent} | {r.images_per_s:.2f} | {lat['p50']:.3f} | "
                         f"{lat['p95']:.3f} | {lat['p99']:.3f} | {r.rows_per_call:.2f} | {vs} |")
    return "\n".join(lines)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def compare(args: argparse.Namespace, config: LoadConfig, log: Log) -> dict[str, Any]:
    """Serve the engines with batching on, measure; then off, measure; one report."""
    from answer_trt.bench.suite import machine_info
    from answer_trt.serving import app
    from answer_trt.serving.cli_serve import import_ray, serve_config
    from answer_trt.serving.client import AnswerTrtClient
    from answer_trt.versions import library_versions

    import_ray()
    port = args.port or free_port()
    runs: dict[str, list[LevelResult]] = {}
    health: dict[str, Any] = {}
    try:
        for label, batching in (("batching", True), ("one-at-a-time", False)):
            serve = serve_config(args, host="127.0.0.1", port=port, batching=batching, app_name=f"load-{label}")
            log(f"starting the server ({label}) at {serve.url}")
            client = AnswerTrtClient(app.start(serve), timeout_s=config.timeout_s)
            health = client.health()
            runs[label] = run_load(client, config, log)
            app.remove(serve)
    finally:
        app.stop()
    rows = comparison(runs["batching"], runs["one-at-a-time"])
    return {
        "format": REPORT_FORMAT, "command": " ".join(["answer-trt", *sys.argv[1:]]), "config": asdict(config),
        "server": {"model": health.get("model"), "backend": health.get("backend"), "replicas": args.replicas,
                   "max_queue": args.max_queue, "max_rows": args.max_rows},
        "machine": machine_info(), "versions": {**library_versions(), "ray": _ray_version()},
        "runs": {label: [asdict(r) for r in results] for label, results in runs.items()},
        "comparison": rows, "target": target_verdict(rows),
    }


def _ray_version() -> str:
    import ray

    return str(ray.__version__)


def add_load_parser(sub: Any) -> argparse.ArgumentParser:
    from answer_trt.serving.cli_serve import add_batcher_arguments, add_source_arguments

    p: argparse.ArgumentParser = sub.add_parser(
        "load", help="load-test `answer-trt serve`: throughput and latency per client concurrency")
    p.add_argument("--serve", metavar="URL", help="a running server, e.g. http://127.0.0.1:8000")
    p.add_argument("--compare", action="store_true",
                   help="start the server here twice (batching on, then off) and compare them")
    p.add_argument("--concurrency", default="1,4,8,16", help="client threads per level, comma-separated "
                   "(default 1,4,8,16)")
    p.add_argument("--requests", type=int, default=32, help="requests per level (default 32)")
    p.add_argument("--method", default="answer", help="every request's method (default answer)")
    p.add_argument("--steps", type=int, default=30, help="every request's steps (default 30)")
    p.add_argument("--warmup", type=int, default=2, help="requests sent before measuring (default 2)")
    p.add_argument("--timeout", type=float, default=300.0, help="per-request deadline in seconds (default 300)")
    p.add_argument("--max-level-seconds", type=float, default=600.0,
                   help="stop sending a level's requests after this (default 600)")
    p.add_argument("--port", type=int, default=0, help="with --compare: port to serve on (default: a free one)")
    add_source_arguments(p)
    add_batcher_arguments(p)
    p.add_argument("--json", type=Path, help="write the report here as JSON")
    p.add_argument("--markdown", type=Path, help="write the table here")
    p.set_defaults(handler=load_command)
    return p


def parse_concurrencies(text: str) -> tuple[int, ...]:
    from answer_trt.rules import parse_int

    return tuple(parse_int(part.strip(), "--concurrency") for part in text.split(",") if part.strip())


def load_command(args: argparse.Namespace) -> int:
    import json

    from answer_trt.files import check_writable_file, write_text_atomic
    from answer_trt.serving.client import AnswerTrtClient

    if (args.serve is None) == (not args.compare):
        raise UserInputError("give either --serve URL (a running server) or --compare (start one here)")
    config = LoadConfig(concurrencies=parse_concurrencies(args.concurrency), requests=args.requests,
                        method=args.method, steps=args.steps, warmup=args.warmup, timeout_s=args.timeout,
                        max_level_s=args.max_level_seconds)
    for flag, path in (("--json", args.json), ("--markdown", args.markdown)):
        if path is not None:
            check_writable_file(flag, path)
    log: Log = lambda msg: print(f"answer-trt: {msg}", file=sys.stderr)  # noqa: E731
    if args.compare:
        report = compare(args, config, log)
        runs = {label: [LevelResult(**r) for r in results] for label, results in report["runs"].items()}
        table = format_table(runs, report["comparison"])
    else:
        from urllib.parse import urlsplit

        from answer_trt.serving.client import ServerError

        url = urlsplit(args.serve)
        if url.scheme not in ("http", "https") or not url.netloc:
            raise UserInputError(f"--serve {args.serve!r} is not a server address: give one such as "
                                 "http://127.0.0.1:8000")
        client = AnswerTrtClient(args.serve, timeout_s=config.timeout_s)
        try:
            results = run_load(client, config, log)
        except ServerError as exc:
            raise UserInputError(f"--serve {args.serve}: {exc.message}; start `answer-trt serve` there, or check "
                                 "the address") from None
        report = {"format": REPORT_FORMAT, "command": " ".join(["answer-trt", *sys.argv[1:]]),
                  "config": asdict(config), "server": {"url": args.serve, **client.health()},
                  "runs": {"server": [asdict(r) for r in results]}}
        table = format_table({"server": results})
    print(table)
    if args.json is not None:
        write_text_atomic(args.json, json.dumps(report, indent=2) + "\n")
    if args.markdown is not None:
        write_text_atomic(args.markdown, table + "\n")
    return 0
