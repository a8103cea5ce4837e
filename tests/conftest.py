"""Shared fixtures: a private cache, the tiny model and its ONNX Runtime engines,
all built once per session through the real build and loading path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the network


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cache")
    previous = os.environ.get("ANSWER_TRT_CACHE")
    os.environ["ANSWER_TRT_CACHE"] = str(root)
    yield root
    if previous is None:
        os.environ.pop("ANSWER_TRT_CACHE", None)
    else:
        os.environ["ANSWER_TRT_CACHE"] = previous


@pytest.fixture
def problem():
    """Seeded noise and a two-image text condition for the toy denoiser."""
    import torch

    from answer_trt.conditioning import TextCondition
    from answer_trt.sampler import Conditioning

    gen = torch.Generator().manual_seed(1)
    noise = torch.randn(2, 4, 6, 6, generator=gen)
    cond = Conditioning(TextCondition(torch.randn(2, 5, 8, generator=gen)),
                        TextCondition(torch.randn(2, 5, 8, generator=gen)))
    return noise, cond


@pytest.fixture(scope="session")
def tiny_model_dir(private_cache: Path) -> Path:
    from answer_trt.models.source import ensure_tiny_model

    return ensure_tiny_model()


@pytest.fixture(scope="session")
def engines_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from answer_trt.build_config import BuildConfig
    from answer_trt.export.build import build

    out = tmp_path_factory.mktemp("engines") / "tiny-random"
    build(BuildConfig(model="tiny-random", out=out, max_batch=2), log=lambda _m: None)
    return out


@pytest.fixture(scope="session")
def ort_pipe(engines_dir: Path):
    import answer_trt

    return answer_trt.load(engines_dir)


@pytest.fixture(scope="session")
def torch_pipe(tiny_model_dir: Path):
    import answer_trt

    return answer_trt.load("tiny-random", backend="torch")


@pytest.fixture
def guided_at_every_step(monkeypatch):
    """ANSWER's default guidance interval (``config.ANSWER_GUIDANCE_MIN_SIGMA``) set to 0, for tests
    whose identities and call counts are those of guidance at every step; the interval has its
    own tests, which give ``guidance_min_sigma`` explicitly, and tests/test_guidance_defaults.py
    holds the default's resolution."""
    from answer_trt import config

    monkeypatch.setattr(config, "ANSWER_GUIDANCE_MIN_SIGMA", 0.0)
