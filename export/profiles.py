"""Optimization-profile shapes per input, derived from the IO spec (pure logic; the
TensorRT build feeds them to ``IOptimizationProfile.set_shape``)."""

from __future__ import annotations

from answer_trt.iospec import ComponentSpec, Profile

Shape = tuple[int, ...]


def profile_shapes(spec: ComponentSpec, profile: Profile) -> dict[str, tuple[Shape, Shape, Shape]]:
    """``{input name: (min shape, opt shape, max shape)}`` for every input of ``spec``."""
    low = {symbol: bounds[0] for symbol, bounds in profile.items()}
    opt = {symbol: bounds[1] for symbol, bounds in profile.items()}
    high = {symbol: bounds[2] for symbol, bounds in profile.items()}
    return {t.name: (t.bind(low), t.bind(opt), t.bind(high)) for t in spec.inputs}
