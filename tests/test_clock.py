"""Stage timing: on the CPU the pipeline's clock is plain perf_counter and never touches
CUDA; on a CUDA device it synchronizes before every reading, so queued device work is
charged to the stage that queued it."""

from __future__ import annotations

import torch

from answer_trt.clock import StageClock


def test_the_cpu_clock_is_perf_counter_without_synchronization(monkeypatch):
    def no_sync(*_args):
        raise AssertionError("a CPU pipeline must not synchronize CUDA")

    monkeypatch.setattr(torch.cuda, "synchronize", no_sync)
    clock = StageClock(torch.device("cpu"))
    assert not clock.synchronizes
    first, second = clock(), clock()
    assert 0 <= second - first < 1.0


def test_the_cuda_clock_synchronizes_its_device_before_reading(monkeypatch):
    synced = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: synced.append(device))
    clock = StageClock(torch.device("cuda", 0))
    assert clock.synchronizes
    clock()
    clock()
    assert synced == [torch.device("cuda", 0)] * 2


def test_the_pipeline_times_its_stages_with_its_device_clock(ort_pipe):
    assert ort_pipe.clock == StageClock(torch.device("cpu"))
    timings = ort_pipe.generate("a bird", steps=2, seed=0).timings
    assert min(timings.text_s, timings.denoise_s, timings.decode_s) > 0
