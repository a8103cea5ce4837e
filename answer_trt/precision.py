"""Which floating dtype each component runs in: the one precision rule of the exported
graphs (ONNX Runtime, TensorRT) and of the eager torch backend on a GPU.

TensorRT builds strongly typed networks (required from TensorRT 11, opted into on 10.x):
the graph's tensor types are the precision, and no builder flag changes them. So an fp16
or bf16 build must export fp16 / bf16 graphs; an fp32 graph always builds fp32 layers.

- fp16: the UNet and the VAE (decoder and encoder) in float16. The text encoder stays float32 (it runs
  once per prompt, and its fp16 graph mixes types in LayerNormalization), and so does a
  VAE whose config asks for it (``force_upcast``, SDXL: its fp16 activations overflow).
- bf16 (TensorRT only): the same components in bfloat16, exported from modules cast to
  ``torch.bfloat16``. bfloat16 has float32's exponent range, so the upcast VAE could run in
  it; it stays float32 anyway, to keep the rule one rule for both half types.
- fp32: everything float32.

The torch backend on CUDA runs the ``fp16`` rule (``torch_dtype`` maps the names); on the
CPU it runs ``fp32``.

Pure (no TensorRT): unit-tested on any machine.
"""

from __future__ import annotations

import torch

from answer_trt.iospec import CONTROLNETS, UNET, VAE_DECODER, VAE_ENCODER

# Components that an fp16 or bf16 build exports in that half type (ControlNets as the UNet).
REDUCED_PRECISION_COMPONENTS = (UNET, VAE_DECODER, VAE_ENCODER, *CONTROLNETS)
VAE_COMPONENTS = (VAE_DECODER, VAE_ENCODER)  # the VAE's halves: force_upcast keeps both float32
HALF_DTYPES = {"fp16": "float16", "bf16": "bfloat16"}


def component_dtype(component: str, precision: str, force_upcast: bool) -> str:
    """The floating dtype (a spec dtype name) ``component`` runs in at ``precision``: its
    exported graph's, and the torch backend's. Raises ``ValueError`` for an unknown precision."""
    if precision not in (*HALF_DTYPES, "fp32"):
        raise ValueError(f"unknown precision {precision!r}: expected fp32, fp16 or bf16")
    if precision == "fp32" or component not in REDUCED_PRECISION_COMPONENTS:
        return "float32"
    if component in VAE_COMPONENTS and force_upcast:
        return "float32"
    return HALF_DTYPES[precision]


TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def torch_dtype(component: str, precision: str, force_upcast: bool) -> torch.dtype:
    """``component_dtype`` as a torch dtype (the eager torch backend's module dtype)."""
    return TORCH_DTYPES[component_dtype(component, precision, force_upcast)]
