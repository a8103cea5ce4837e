"""Stage timing that charges device work to the stage that queued it.

CUDA kernels (TensorRT plans, torch on the GPU, graph replays) run asynchronously: a
host clock read right after a stage returns would count its unfinished work in the
next stage (denoising time as decode time). ``StageClock`` synchronizes the device
before reading the clock when the pipeline runs on CUDA; on the CPU it is plain
``perf_counter``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class StageClock:
    """``clock()`` -> seconds (``perf_counter``), after all queued work on ``device`` is done."""

    device: torch.device

    @property
    def synchronizes(self) -> bool:
        return self.device.type == "cuda"

    def __call__(self) -> float:
        if self.synchronizes:
            torch.cuda.synchronize(self.device)  # every stream: TensorRT's included
        return time.perf_counter()
