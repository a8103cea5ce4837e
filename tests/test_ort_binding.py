"""ONNX Runtime IO binding (the CUDA provider's path), exercised on the CPU provider: the
same outputs as the host-numpy path, output shapes learned once per input-shape set and
then bound into torch buffers; a new shape set is learned again."""

from __future__ import annotations

import torch

from answer_trt.backends.ort import OnnxRuntimeEngine
from answer_trt.export.sample_inputs import sample_inputs
from answer_trt.iospec import UNET, VAE_DECODER
from answer_trt.manifest import read_manifest


def engines(folder, component):
    entry = read_manifest(folder).components[component]
    args = (folder / entry.file, entry.spec, entry.profile, ["CPUExecutionProvider"])
    return OnnxRuntimeEngine(*args), OnnxRuntimeEngine(*args, io_binding=True), read_manifest(folder)


def test_binding_equals_the_numpy_path_and_learns_shapes_once(engines_dir):
    for component in (UNET, VAE_DECODER):
        plain, bound, manifest = engines(engines_dir, component)
        assert plain.binding is None and bound.binding is not None
        dims = manifest.info.dims
        for batch in (1, 2, 2):
            feeds = sample_inputs(bound.spec, dims.bind(batch, manifest.height.opt, manifest.width.opt))
            want, got = plain.run(feeds), bound.run(feeds)
            assert set(got) == set(want)
            for name in want:
                assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape
                torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-5)
        assert len(bound.binding._output_shapes) == 2  # batch 1 and batch 2, each learned once
