"""Pure bookkeeping for engines that bind device tensors by name (TensorRT): which input
shapes and tensor addresses changed since the last call, whether this TensorRT is one we
support, and whether a serialized plan matches this machine. No TensorRT import:
unit-tested on any machine."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from answer_trt.errors import UserInputError

Shape = tuple[int, ...]

# The TensorRT versions we build and run with: 10.12 or newer, 11.x. Builds are strongly
# typed (the only mode of 11.x; on 10.x weak typing is deprecated since 10.12), and the
# runtime calls are those present in both 10.12+ and 11.x (see export/tensorrt_build.py and
# answer_trt/backends/tensorrt.py).
MIN_TENSORRT = (10, 12)
# The pip requirement per CUDA major version: TensorRT's wheels are built for one CUDA major,
# named in the package (NVIDIA, TensorRT 11 "Prerequisites": tensorrt-cu12 for CUDA 12,
# tensorrt-cu13 for CUDA 13). pyproject's extras `tensorrt-cu12` / `tensorrt-cu13` say the same
# (tests/test_tensorrt_api.py compares them). tensorrt-cu13 starts at 10.13.2 on PyPI, the first
# TensorRT built for CUDA 13; a fresh install gets the newest 11.x either way.
TENSORRT_REQUIREMENTS = {12: "tensorrt-cu12>=10.12,<12", 13: "tensorrt-cu13>=10.13.2,<12"}


@dataclass
class BindingState:
    """Remembers what the execution context was last told, so that ``set_input_shape``
    and ``set_tensor_address`` are called only for what changed."""

    shapes: dict[str, Shape] = field(default_factory=dict)
    addresses: dict[str, int] = field(default_factory=dict)

    def shape_updates(self, shapes: Mapping[str, Shape]) -> dict[str, Shape]:
        changed = {name: shape for name, shape in shapes.items() if self.shapes.get(name) != shape}
        self.shapes.update(changed)
        return changed

    def address_updates(self, addresses: Mapping[str, int]) -> dict[str, int]:
        changed = {name: ptr for name, ptr in addresses.items() if self.addresses.get(name) != ptr}
        self.addresses.update(changed)
        return changed

    def forget(self) -> None:
        """After the context was re-created or its memory moved: set everything again."""
        self.shapes.clear()
        self.addresses.clear()


def tensorrt_major_minor(version: str) -> tuple[int, int] | None:
    """``"10.13.0.35"`` -> ``(10, 13)``; None where the string does not start so."""
    parts = version.split(".")
    if len(parts) < 2 or not (parts[0].isdigit() and parts[1].isdigit()):
        return None
    return int(parts[0]), int(parts[1])


def tensorrt_package_for_cuda(cuda_version: str | None) -> str | None:
    """The TensorRT package built for this CUDA: ``"12.8"`` -> ``"tensorrt-cu12"``, ``"13.0"``
    -> ``"tensorrt-cu13"``. None where there is no CUDA (``torch.version.cuda`` is None for a CPU
    or ROCm build of torch), the string is unreadable, or no supported TensorRT is built for that
    CUDA major (11.x and older)."""
    major = _cuda_major(cuda_version)
    return None if major is None else f"tensorrt-cu{major}"


def _cuda_major(cuda_version: str | None) -> int | None:
    """``"13.0"`` -> 13 where ``TENSORRT_REQUIREMENTS`` has that major, else None."""
    major = (cuda_version or "").split(".")[0]
    return int(major) if major.isdigit() and int(major) in TENSORRT_REQUIREMENTS else None


def tensorrt_install_hint(cuda_version: str | None) -> str:
    """How to install a supported TensorRT, as a clause to end an error message with:
    the one pip command where ``cuda_version`` (``torch.version.cuda``) names a CUDA we have
    a package for, otherwise both commands and how to choose between them."""
    major = _cuda_major(cuda_version)
    if major is not None:
        return f'run `pip install "{TENSORRT_REQUIREMENTS[major]}"` (torch here is built for CUDA {cuda_version})'
    choices = " or ".join(f'`pip install "{req}"` for CUDA {cuda}' for cuda, req in TENSORRT_REQUIREMENTS.items())
    return (f"run {choices}, choosing by the CUDA major version torch is built for "
            "(`python -c \"import torch; print(torch.version.cuda)\"`) or, without a CUDA build of torch, "
            "the \"CUDA Version\" that `nvidia-smi` prints")


def check_tensorrt_version(version: str, cuda_version: str | None = None) -> None:
    """Refuse a TensorRT older than ``MIN_TENSORRT`` (or an unreadable version) in one line
    that says what to install (``tensorrt_install_hint(cuda_version)``)."""
    found = tensorrt_major_minor(version)
    if found is None or found < MIN_TENSORRT:
        raise UserInputError(
            f"TensorRT {version} is not supported: answer-trt needs TensorRT {MIN_TENSORRT[0]}.{MIN_TENSORRT[1]} "
            f"or newer (strongly typed builds); {tensorrt_install_hint(cuda_version)}, or use the image in docker/"
        )


def check_plan_compatible(
    built_version: str | None,
    built_capability: str | None,
    running_version: str,
    running_capability: str,
    rebuild_command: str,
    cuda_version: str | None = None,
) -> None:
    """A plan runs only with the TensorRT version and GPU compute capability it was
    built for; refuse anything else before deserializing, naming the rebuild command.
    A TensorRT older than ``MIN_TENSORRT`` is refused first (naming the package for
    ``cuda_version``, torch's CUDA): no plan is rebuilt for it."""
    check_tensorrt_version(running_version, cuda_version)
    if built_version != running_version:
        raise UserInputError(
            f"these engines were built with TensorRT {built_version}, this machine has {running_version}: "
            f"rebuild with `{rebuild_command}`"
        )
    if built_capability != running_capability:
        raise UserInputError(
            f"these engines were built for GPU compute capability {built_capability}, this GPU is "
            f"{running_capability}: rebuild with `{rebuild_command}`"
        )
