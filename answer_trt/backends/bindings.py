"""Pure bookkeeping for engines that bind device tensors by name (TensorRT): which input
shapes and tensor addresses changed since the last call, and whether a serialized
plan matches this machine. No TensorRT import: unit-tested on any machine."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from answer_trt.errors import UserInputError

Shape = tuple[int, ...]


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


def check_plan_compatible(
    built_version: str | None,
    built_capability: str | None,
    running_version: str,
    running_capability: str,
    rebuild_command: str,
) -> None:
    """A plan runs only with the TensorRT version and GPU compute capability it was
    built for; refuse anything else before deserializing, naming the rebuild command."""
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
