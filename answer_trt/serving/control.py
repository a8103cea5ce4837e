"""ControlNet over HTTP: the served ControlNets, the control images of answer-trt's own
``POST /v1/generate`` (``control_image``), and the units of AUTOMATIC1111's ControlNet extension
(``alwayson_scripts: {"controlnet": {"args": [unit, ...]}}`` on ``/sdapi/v1/txt2img`` and
``/img2img``; ``GET /controlnet/model_list`` and ``/controlnet/module_list``).

A request holds one ``controlnet_conditioning_scale``, one guidance window and one
``guess_mode`` for every ControlNet of the folder, and every ControlNet runs on every control
request (``answer_trt.controlnet``). So the extension's units map to a request as follows
(``a1111_control``): the enabled units name every served ControlNet once (any order; each
gets its unit's image); their ``weight`` is one value for all (that value is the request's
scale), or each unit's weight is its ControlNet's built scale (the scale left at the built
ones); ``guidance_start``/``guidance_end`` and ``control_mode`` are the same in every unit.
``control_mode`` "Balanced" (0) draws as diffusers without guess mode, "ControlNet is more
important" (2) is diffusers' ``guess_mode`` (the extension's soft and CFG injection: control on
the prompt's rows only, per-block factors 0.825^(12 - i), which diffusers' logspace(-1, 0, 13)
matches to 0.6%), and "My prompt is more important" (1; the per-block factors on every row) is
refused. Preprocessors (``module`` other than "none") are refused: send the processed image.

Pure functions: no HTTP, no Ray. Refusals are ``UserInputError`` (one line, HTTP 400).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from answer_trt.build_config import MAX_CONTROLNET_SCALE
from answer_trt.controlnet import ControlImages, check_guidance_window, load_control_images
from answer_trt.errors import UserInputError
from answer_trt.serving.protocol import image_bytes

# The extension's control modes (its ControlMode enum: names and their indices).
BALANCED, MORE_PROMPT, MORE_CONTROL = "Balanced", "My prompt is more important", "ControlNet is more important"
CONTROL_MODES = (BALANCED, MORE_PROMPT, MORE_CONTROL)
# The script name A1111 matches (case-insensitively) in alwayson_scripts.
SCRIPT = "controlnet"
# A unit's fields read here, and those accepted and ignored: preprocessor settings (no
# preprocessor runs), memory and hires-fix options (neither exists here), the resize mode (a
# control image of another aspect ratio is refused; one of the output's is resized, Lanczos).
UNIT_FIELDS = ("enabled", "image", "input_image", "mask", "module", "model", "weight", "guidance_start",
               "guidance_end", "control_mode", "guessmode")
UNIT_IGNORED = ("resize_mode", "low_vram", "lowvram", "processor_res", "threshold_a", "threshold_b", "pixel_perfect",
                "hr_option", "save_detected_map", "is_ui", "input_mode", "use_preview_as_input")


@dataclass(frozen=True)
class ServedControlNets:
    """The ControlNets of the served folder, in ``--controlnet`` order: each one's folder
    ``name``, content ``sha256`` prefix and built ``scale`` (``BuiltWeights.controlnets``'
    ``name:sha256-prefix:scale`` tags)."""

    names: tuple[str, ...] = ()
    hashes: tuple[str, ...] = ()
    scales: tuple[float, ...] = ()

    @classmethod
    def from_tags(cls, tags: tuple[str, ...]) -> ServedControlNets:
        parts = [tag.rsplit(":", 2) for tag in tags]
        return cls(tuple(p[0] for p in parts), tuple(p[1] for p in parts), tuple(float(p[2]) for p in parts))

    def __len__(self) -> int:
        return len(self.names)

    def model_list(self) -> list[str]:
        """``GET /controlnet/model_list``: the extension's ``name [hash]`` titles."""
        return [f"{name} [{sha[:8]}]" for name, sha in zip(self.names, self.hashes)]

    def index(self, model: Any, where: str) -> int:
        """The ControlNet a unit's ``model`` names: its title, its name, or (one served) none."""
        if model in (None, "", "None", "none") and len(self) == 1:
            return 0
        for i, (title, name) in enumerate(zip(self.model_list(), self.names)):
            if model in (title, name):
                return i
        served = ", ".join(repr(t) for t in self.model_list()) or "none"
        raise UserInputError(f"{where} model {_shown(model)} is not served here: choose one of {served} (GET "
                             "/controlnet/model_list)")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def generate_control(value: Any, served: ServedControlNets, height: int, width: int) -> ControlImages:
    """``POST /v1/generate``'s ``control_image``: one base64 image for every served ControlNet, or a
    list of them, one each in ``--controlnet`` order, loaded at ``height`` x ``width``."""
    if not len(served):
        raise UserInputError("control_image: this server's engines were built without a ControlNet: drop it")
    values = value if isinstance(value, list) else [value]
    if not values:
        raise UserInputError("control_image must be a base64 image or a list of them, got an empty list")
    images = [image_bytes(v, "control_image" if len(values) == 1 else f"control_image[{i}]")
              for i, v in enumerate(values)]
    return load_control_images(images, len(served), height, width)


def _mode(value: Any, where: str) -> bool:
    """Whether a unit's ``control_mode`` is guess mode; the extension takes the name or its index."""
    mode = CONTROL_MODES[value] if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 3 \
        else BALANCED if value is None else value
    if mode == BALANCED:
        return False
    if mode == MORE_CONTROL:
        return True
    if mode == MORE_PROMPT:
        raise UserInputError(f"{where} control_mode {_shown(value)} is not supported (its per-block scaling on every "
                             f"row is not one of diffusers' modes): send {BALANCED!r} or {MORE_CONTROL!r} (diffusers' "
                             "guess_mode)")
    raise UserInputError(f"{where} control_mode {_shown(value)}: send one of {', '.join(map(repr, CONTROL_MODES))}")


@dataclass(frozen=True)
class _Unit:
    index: int  # the served ControlNet it drives
    image: bytes
    weight: float
    window: tuple[float, float]
    guess: bool


def _unit(unit: Any, i: int, served: ServedControlNets) -> _Unit | None:
    where = f"alwayson_scripts controlnet args[{i}]"
    if not isinstance(unit, dict):
        raise UserInputError(f"{where} must be a JSON object (the extension's unit: image, module, model, weight, ...)")
    if unit.get("enabled", True) is False:
        return None
    unknown = [k for k in unit if k not in UNIT_FIELDS + UNIT_IGNORED]
    if unknown:
        raise UserInputError(f"{where}: {', '.join(map(repr, unknown))} is not a unit field answer-trt takes: leave "
                             f"it out (it takes {', '.join(UNIT_FIELDS)})")
    module = unit.get("module")
    if module not in (None, "none", "None"):
        raise UserInputError(f"{where} module {_shown(module)}: preprocessors are not run here: send the processed "
                             'control image with module "none"')
    image = unit.get("image", unit.get("input_image"))
    if isinstance(image, dict):  # the extension's {"image": b64, "mask": b64}
        if image.get("mask") not in (None, ""):
            raise UserInputError(f"{where} image mask: ControlNet masks are not supported: send the image alone")
        image = image.get("image")
    if unit.get("mask") not in (None, ""):
        raise UserInputError(f"{where} mask: ControlNet masks (inpaint units) are not supported: leave it out")
    weight = unit.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight <= MAX_CONTROLNET_SCALE:
        raise UserInputError(f"{where} weight must be a number in 0 .. {MAX_CONTROLNET_SCALE:g}, got {_shown(weight)}")
    start, end = unit.get("guidance_start", 0.0), unit.get("guidance_end", 1.0)
    try:
        check_guidance_window(start, end)
    except UserInputError as exc:
        raise UserInputError(f"{where}: {str(exc).replace('control_guidance_', 'guidance_')}") from None
    guess = _mode(unit.get("control_mode"), where) or unit.get("guessmode") is True
    return _Unit(served.index(unit.get("model"), where), image_bytes(image, f"{where} image"), float(weight),
                 (float(start), float(end)), guess)


def a1111_control(scripts: Any, served: ServedControlNets, height: int,
                  width: int) -> tuple[dict[str, Any], ControlImages | None]:
    """The request fields (``controlnet_conditioning_scale``, the guidance window, ``guess_mode``,
    ``control_image_sha256``) and the control images of an A1111 body's ``alwayson_scripts``
    (the module docstring's rule), at the output's ``height`` x ``width``; ``({}, None)`` without
    enabled units. Any other script is refused, naming it."""
    if scripts is None:
        return {}, None
    if not isinstance(scripts, dict):
        raise UserInputError("alwayson_scripts must be a JSON object of scripts ({\"controlnet\": {\"args\": [...]}})")
    other = [name for name in scripts if name.lower() != SCRIPT]
    if other:
        raise UserInputError(f"alwayson_scripts {other[0]!r} is not supported by answer-trt (of the extensions only "
                             "ControlNet's units, as \"controlnet\"): leave it out")
    script = next(iter(scripts.values()), None)
    if script is None:
        return {}, None
    args = script.get("args", []) if isinstance(script, dict) else None
    if not isinstance(args, list):
        raise UserInputError('alwayson_scripts controlnet must be {"args": [unit, ...]} (the extension\'s units)')
    enabled = [unit for unit in args if not (isinstance(unit, dict) and unit.get("enabled", True) is False)]
    if enabled and not len(served):
        raise UserInputError("alwayson_scripts controlnet: this server's engines were built without a ControlNet: "
                             "leave the units out (or send them with enabled false)")
    units = [u for u in (_unit(unit, i, served) for i, unit in enumerate(args)) if u is not None]
    if not units:
        return {}, None
    named = sorted(u.index for u in units)
    if named != list(range(len(served))):
        raise UserInputError(f"alwayson_scripts controlnet: send one enabled unit per served ControlNet, each naming "
                             f"its model once ({', '.join(served.model_list())}); every one runs on a control request")
    units.sort(key=lambda u: u.index)
    for name, values in (("guidance_start/guidance_end", {u.window for u in units}),
                         ("control_mode", {u.guess for u in units})):
        if len(values) > 1:
            raise UserInputError(f"alwayson_scripts controlnet: the units' {name} differ: send the same in every unit "
                                 "(one request runs all ControlNets with one)")
    weights = tuple(u.weight for u in units)
    if len(set(weights)) == 1:
        scale: float | None = weights[0]
    elif weights == served.scales:
        scale = None  # each ControlNet at its built scale
    else:
        raise UserInputError(f"alwayson_scripts controlnet: the units' weights {list(weights)} differ: send one weight "
                             f"for all, or each ControlNet's built scale {list(served.scales)}")
    control = load_control_images([u.image for u in units], len(served), height, width)
    fields = {"controlnet_conditioning_scale": scale, "control_guidance_start": units[0].window[0],
              "control_guidance_end": units[0].window[1], "guess_mode": units[0].guess,
              "control_image_sha256": control.sha256}
    return fields, control
