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
# answer_trt/backends/tensorrt.py). pyproject's `tensorrt` extra names the same range.
MIN_TENSORRT = (10, 12)
TENSORRT_REQUIREMENT = "tensorrt-cu12>=10.12,<12"


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


def check_tensorrt_version(version: str) -> None:
    """Refuse a TensorRT older than ``MIN_TENSORRT`` (or an unreadable version) in one line."""
    found = tensorrt_major_minor(version)
    if found is None or found < MIN_TENSORRT:
        raise UserInputError(
            f"TensorRT {version} is not supported: answer-trt needs TensorRT {MIN_TENSORRT[0]}.{MIN_TENSORRT[1]} "
            f'or newer (strongly typed builds); run `pip install "{TENSORRT_REQUIREMENT}"` or use the image in docker/'
        )


def check_plan_compatible(
    built_version: str | None,
    built_capability: str | None,
    running_version: str,
    running_capability: str,
    rebuild_command: str,
) -> None:
    """A plan runs only with the TensorRT version and GPU compute capability it was
    built for; refuse anything else before deserializing, naming the rebuild command.
    A TensorRT older than ``MIN_TENSORRT`` is refused first: no plan is rebuilt for it."""
    check_tensorrt_version(running_version)
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
