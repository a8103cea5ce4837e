"""Each exported component on ONNX Runtime matches the torch reference (fp32, 1e-4),
for every built-in model family: SD 1.5, SD 2.1 (v-prediction) and SDXL."""

from __future__ import annotations

import pytest
import torch

from answer_trt.backends.ort import OnnxRuntimeEngine
from answer_trt.backends.torch_eager import TorchEngine
from answer_trt.backends.torch_modules import component_modules
from answer_trt.build_config import BuildConfig
from answer_trt.export.build import build
from answer_trt.export.sample_inputs import sample_inputs
from answer_trt.iospec import BATCH_MULTIPLIER, COMPONENT_SETS
from answer_trt.manifest import read_manifest
from answer_trt.models.source import load_model, resolve_model

FAMILIES = ["tiny-random", "tiny-sd21", "tiny-sdxl"]
COMPONENTS = COMPONENT_SETS["all"]  # a model's own (ControlNets: tests/test_controlnet.py)


@pytest.fixture(scope="module", params=FAMILIES)
def engine_pairs(request, engines_dir, tmp_path_factory):
    name = request.param
    folder = engines_dir if name == "tiny-random" else tmp_path_factory.mktemp(name) / "engines"
    if name != "tiny-random":
        build(BuildConfig(model=name, out=folder, max_batch=2), log=lambda _m: None)
    manifest = read_manifest(folder)
    modules = component_modules(load_model(resolve_model(name).path))
    pairs = {}
    for component in COMPONENTS:
        entry = manifest.components[component]
        pairs[component] = (
            OnnxRuntimeEngine(folder / entry.file, entry.spec, entry.profile, ["CPUExecutionProvider"]),
            TorchEngine(modules[component], entry.spec),
        )
    return manifest, pairs


def bind(manifest, batch):
    return manifest.info.dims.bind(batch, manifest.height.opt, manifest.width.opt)


@pytest.mark.parametrize("component", COMPONENTS)
@pytest.mark.parametrize("images", [1, 2], ids=["batch1", "fused-max-batch"])
def test_onnxruntime_matches_torch(engine_pairs, component, images):
    manifest, pairs = engine_pairs
    ort_engine, torch_engine = pairs[component]
    batch = images if images == 1 else BATCH_MULTIPLIER[component] * manifest.max_batch
    feeds = sample_inputs(ort_engine.spec, bind(manifest, batch))
    for name in ("input_ids", "input_ids_2"):  # ids inside the vocabulary
        if name in feeds:
            feeds[name] = feeds[name] % 500
    got = ort_engine.run(feeds)
    want = torch_engine.run(feeds)
    assert set(got) == set(want) == set(ort_engine.spec.output_names)
    for name in ort_engine.spec.output_names:
        assert got[name].shape == want[name].shape
        assert want[name].abs().max() > 0
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-4)


def test_fused_unet_batch_equals_separate_calls(engine_pairs):
    """The engine's batch axis is truly independent per row: one call on 3 rows equals 3 calls."""
    manifest, pairs = engine_pairs
    ort_engine, _ = pairs["unet"]
    feeds = sample_inputs(ort_engine.spec, bind(manifest, 3))
    fused = ort_engine.run(feeds)["noise_pred"]
    rows = [ort_engine.run({k: v[i : i + 1] for k, v in feeds.items()})["noise_pred"] for i in range(3)]
    torch.testing.assert_close(fused, torch.cat(rows), rtol=1e-5, atol=1e-5)
