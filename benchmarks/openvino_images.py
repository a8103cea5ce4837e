"""Whole images from several engines folders in one process, images alternating, with the UNet
calls timed inside the sampler (the machine's cores are shared: only ratios within one run mean
anything).

    python -m benchmarks.openvino_images ort=/tmp/e/onnxruntime ov=/tmp/e/openvino \
        ov-2threads=/tmp/e/openvino@0 --method cfg --rounds 8

Each ``LABEL=FOLDER`` is loaded as ``answer-trt generate`` loads it (the thread count its
build measured); ``LABEL=FOLDER@N`` recompiles an OpenVINO folder's models with ``N``
inference threads instead (``0``: OpenVINO's own choice), to compare thread counts on one
folder. Prints, per label, the median image time (30 steps, batch 1, one prompt and seed),
its ratio to the first label's, and the median UNet call inside the sampler.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

PROMPT = "a cat and a dog"


def parse_folder(text: str) -> tuple[str, str, int | None]:
    """``LABEL=FOLDER[@THREADS]`` -> (label, folder, threads or None); a ``ValueError`` naming
    the expected form otherwise."""
    label, sep, rest = text.partition("=")
    if not sep or not label or not rest:
        raise ValueError(f"{text!r}: expected LABEL=FOLDER or LABEL=FOLDER@THREADS")
    folder, at, threads = rest.rpartition("@") if "@" in rest else (rest, "", "")
    if at and not threads.isdigit():
        raise ValueError(f"{text!r}: the thread count after @ must be a whole number")
    return label, folder, int(threads) if at else None


def with_threads(pipe: Any, threads: int) -> None:
    """Recompile ``pipe``'s OpenVINO engines with ``threads`` inference threads."""
    from answer_trt.backends.openvino import OpenVinoEngine

    for engine in pipe.engines.values():
        if isinstance(engine, OpenVinoEngine):
            engine.threads = threads
            engine._compiled.clear()
            if not engine.static:
                engine._compile(None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("folders", nargs="+", help="LABEL=FOLDER or LABEL=FOLDER@THREADS (OpenVINO)")
    parser.add_argument("--method", default="cfg")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args(argv)
    try:
        folders = [parse_folder(text) for text in args.folders]
    except ValueError as exc:
        parser.error(str(exc))

    import answer_trt

    pipes, calls = {}, {}
    for label, folder, threads in folders:
        pipes[label] = pipe = answer_trt.load(folder)
        if threads is not None:
            with_threads(pipe, threads)
        calls[label] = times = []
        engine = pipe.engines["unet"]
        run = engine.run

        def timed(feeds: Any, run: Any = run, times: list[float] = times) -> Any:
            started = time.perf_counter()
            out = run(feeds)
            times.append((time.perf_counter() - started) * 1e3)
            return out

        engine.run = timed

    def image(label: str) -> float:
        started = time.perf_counter()
        pipes[label].generate(PROMPT, method=args.method, steps=args.steps, seed=1)
        return (time.perf_counter() - started) * 1e3

    for label in pipes:
        image(label)  # warm-up (static-shape models compile on their first call)
    images: dict[str, list[float]] = {label: [] for label in pipes}
    in_loop: dict[str, list[float]] = {label: [] for label in pipes}
    labels = list(pipes)
    for round_ in range(args.rounds):
        for label in labels if round_ % 2 == 0 else labels[::-1]:
            calls[label].clear()
            images[label].append(image(label))
            in_loop[label].append(statistics.median(calls[label]))
    first = statistics.median(images[labels[0]])
    for label in labels:
        ms = statistics.median(images[label])
        print(f"{label:14s} image {ms:8.1f} ms  {first / ms:5.2f}x vs {labels[0]}  "
              f"UNet call in the sampler {statistics.median(in_loop[label]):7.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
