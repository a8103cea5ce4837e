"""AOTInductor backend: the ``.pt2`` packages of ``answer-trt build --backend inductor``
behind the Engine interface.

A package is compiled code for one torch version and one device (CPU, or CUDA of one
compute capability): ``check_packages_compatible`` refuses any other before loading, with
the command that rebuilds the folder here. ``torch._inductor.aoti_load_package`` loads a
package without compiling. Inputs are cast to the spec's dtypes on the package's device;
shapes outside the built profile are refused before anything runs (``check_shapes``).

On CUDA the packages are loaded with ``run_single_threaded=True``, which PyTorch asks for
when calls are captured into CUDA graphs (the model container's locking is left out); the
engine's own lock keeps its calls one at a time instead.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from answer_trt.errors import UserInputError
from answer_trt.iospec import ComponentSpec, Profile, ShapeCheck
from answer_trt.precision import TORCH_DTYPES

DTYPES = {**TORCH_DTYPES, "int64": torch.int64, "int32": torch.int32}


def check_packages_compatible(built_torch: str | None, built_device: str, built_capability: str | None,
                              rebuild_command: str) -> None:
    """Refuse, in one line with ``rebuild_command``, packages compiled by another torch
    version (``built_torch``, the manifest's), for CUDA where torch sees no GPU, or for a GPU
    of another compute capability. Pure apart from asking torch what is here."""
    here = torch.__version__.split("+")[0]
    if built_torch is None or built_torch.split("+")[0] != here:
        raise UserInputError(f"these inductor packages were compiled by torch {built_torch or 'unknown'}, and this "
                             f"is torch {here}: compiled code runs only under the torch that made it; rebuild here "
                             f"with `{rebuild_command}`")
    if built_device == "cuda":
        if not torch.cuda.is_available():
            raise UserInputError("these inductor packages were compiled for a CUDA GPU, and torch sees none here: run "
                                 "them on a machine with one, or rebuild for the CPU with "
                                 f"`{rebuild_command.replace('--device cuda', '--device cpu')}`")
        major, minor = torch.cuda.get_device_capability()
        if built_capability is not None and built_capability != f"{major}.{minor}":
            raise UserInputError(f"these inductor packages were compiled for a GPU of compute capability "
                                 f"{built_capability}, and this one is {major}.{minor}: rebuild here with "
                                 f"`{rebuild_command}`")


class InductorEngine:
    """Runs one component's AOTInductor package; refuses shapes outside its built profile
    before running. ``rebuild_command`` is what its errors say to run."""

    def __init__(self, path: Path, spec: ComponentSpec, profile: Profile, device: str,
                 rebuild_command: str = "answer-trt build ... --force") -> None:
        from torch._inductor import aoti_load_package

        self.spec = spec
        self.profile = profile
        self.device = torch.device(device)
        self.rebuild_command = rebuild_command
        try:
            self.model: Any = aoti_load_package(str(path), run_single_threaded=self.device.type == "cuda")
        except Exception as exc:  # a corrupt or foreign package: the checksums passed, so the build was not ours
            raise UserInputError(f"{path} could not be loaded as an AOTInductor package ({type(exc).__name__}: "
                                 f"{str(exc).strip()[:200]}); rebuild with `{rebuild_command}`") from None
        self._dtypes = [DTYPES[t.dtype] for t in spec.inputs]
        self._check_shapes = ShapeCheck(spec, profile, rebuild_command)
        self._lock = threading.Lock()

    def run(self, feeds: Mapping[str, Tensor]) -> dict[str, Tensor]:
        self._check_shapes(feeds)
        args = [feeds[t.name].to(self.device, dtype, non_blocking=True).contiguous()
                for t, dtype in zip(self.spec.inputs, self._dtypes)]
        with self._lock, torch.inference_mode():
            outputs = self.model(*args)
        if isinstance(outputs, Tensor):
            outputs = [outputs]
        return dict(zip(self.spec.output_names, outputs))


def load_engines(folder: Path, components: Mapping[str, tuple[str, ComponentSpec, Profile]], device: str,
                 built_torch: str | None, built_capability: str | None,
                 rebuild_command: str) -> dict[str, InductorEngine]:
    """One ``InductorEngine`` per component (``name -> (file, spec, profile)``), after
    ``check_packages_compatible``."""
    check_packages_compatible(built_torch, device, built_capability, rebuild_command)
    return {name: InductorEngine(folder / file, spec, profile, device, rebuild_command)
            for name, (file, spec, profile) in components.items()}
