"""manifest.json: what an engines folder holds, built from what, for what.

The build writes it last (atomically); loading reads it first and checks every
listed file against its sha256, so a folder never passes for something it is not.

A manifest is untrusted input: ``read_manifest`` validates its JSON types, ranges and
nesting depth, keeps every path it names relative and inside the folder (symbolic
links resolved), and requires every file that loading reads (component graphs or
plans, their external data, the tokenizer files and the scheduler config) to be in
the checksum list. Anything else is a ``UserInputError`` that says to rebuild.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Annotated, Any, NoReturn

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainValidator, Strict, ValidationError, create_model
from pydantic.dataclasses import dataclass as pydantic_dataclass

from answer_trt.build_config import MAX_CONTROLNET_SCALE, MAX_LORA_SCALE, BuildConfig, ControlNetSpec, LoraSpec
from answer_trt.errors import UserInputError
from answer_trt.files import sha256_file, write_text_atomic
from answer_trt.iospec import (
    COMPONENT_SETS,
    COMPONENTS,
    CONTROLNETS,
    DEFAULT_PROMPT_CHUNKS,
    REQUIRED_COMPONENTS,
    TEXT_LENGTH,
    UNET,
    ComponentSpec,
    Dim,
    ModelDims,
    Profile,
    SizeRange,
    TensorSpec,
    component_specs,
)
from answer_trt.models.info import ModelInfo
from answer_trt.rules import BUILD_BACKENDS, DEVICES, PRECISIONS, VARIANT_NAME

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 2
TENSOR_DTYPES = ("float32", "float16", "bfloat16", "int64", "int32")
# Copied from the model beside the engines by the build, read by the loader.
TOKENIZER_FOLDERS = ("tokenizer", "tokenizer_2")
# What a CLIP tokenizer folder holds, as transformers 4.57 and 5.x save it: the slow
# tokenizer's vocabulary and merges, the fast tokenizer's one `tokenizers` file (all that
# transformers 5 writes besides tokenizer_config.json), or both.
SLOW_TOKENIZER_FILES = ("vocab.json", "merges.txt")
TOKENIZER_JSON = "tokenizer.json"
# Written by the build beside them: the tokenizer as one `tokenizers` file (models/fast_tokenizer.py).
FAST_TOKENIZER_FILE = "answer-trt-tokenizer.json"
# Who reads a tokenizer folder (``tokenizer_files``): answer-trt's own file through the
# `tokenizers` library, or transformers' CLIPTokenizer (slow files) / CLIPTokenizerFast (tokenizer.json).
TOKENIZER_READERS = ("answer-trt", "slow", "fast")
SCHEDULER_CONFIG = "scheduler/scheduler_config.json"

# Bounds on untrusted input. A real manifest is a few kB and nests 7 levels deep
# (manifest > components > unet > spec > inputs > tensor > shape).
MAX_MANIFEST_BYTES = 4 << 20
MAX_DEPTH = 8
MAX_INT = 2**31 - 1
MAX_TEXT = 1024
MAX_LORAS = 64  # adapters one folder may fuse
_DIGEST = re.compile(r"[0-9a-f]{64}")
_SYMBOL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def external_data_name(file: str) -> str:
    """The external-data file ONNX Runtime reads beside a graph (``unet.onnx.data``);
    the export stage names the files it writes by this rule."""
    return file + ".data"


@dataclass(frozen=True)
class ComponentEntry:
    file: str
    spec: ComponentSpec
    profile: Profile


@dataclass(frozen=True)
class Manifest:
    key: str
    backend: str
    precision: str
    model_name: str
    model_hash: str
    max_batch: int
    height: SizeRange
    width: SizeRange
    info: ModelInfo
    components: dict[str, ComponentEntry]
    files: dict[str, str]  # relative path -> sha256
    versions: dict[str, str]
    gpu_capability: str | None = None  # TensorRT plans: the compute capability they were built on
    accuracy: AccuracyCheck | None = None  # built with --check: what it measured (a failed check publishes nothing)
    graph_optimization: GraphOptimization | None = None  # built with --optimize: per component, what it did
    session: SessionChoice | None = None  # onnxruntime on the CPU: the measured session settings
    variant: str | None = None  # the model's weights variant that was built (None: its plain weights)
    loras: tuple[LoraEntry, ...] = ()  # the adapters fused into the weights, in order
    device: str | None = None  # inductor: the device its packages were compiled for (None: other backends)
    single_file: SingleFileEntry | None = None  # --model was a single-file checkpoint (None: a folder)
    vae: VaeEntry | None = None  # built with --vae (None: the model's own VAE)
    controlnets: tuple[ControlNetEntry, ...] = ()  # --controlnet: exported as controlnet_0.., in order

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["format"] = MANIFEST_FORMAT
        for optional in ("accuracy", "graph_optimization", "session", "variant", "device", "single_file", "vae"):
            if data[optional] is None:  # left out: a folder built without it reads as before
                del data[optional]
        if not self.loras:
            del data["loras"]
        else:
            data["loras"] = [asdict(entry) for entry in self.loras]
        if not self.controlnets:
            del data["controlnets"]
        else:
            data["controlnets"] = [asdict(entry) for entry in self.controlnets]
        data["components"] = {
            name: {"file": e.file, "spec": e.spec.to_json(), "profile": {k: list(v) for k, v in e.profile.items()}}
            for name, e in self.components.items()
        }
        return data

    @classmethod
    def from_json(cls, data: Any) -> Manifest:
        """Validate parsed JSON and build the manifest; raises ``ManifestError`` naming
        the first field that is wrong."""
        check_depth(data)
        if isinstance(data, dict) and data.get("format") != MANIFEST_FORMAT:
            _fail("format", f"is {_shown(data.get('format'))}, this answer-trt reads format {MANIFEST_FORMAT}")
        return _manifest(data)

    @property
    def runs_on_cuda(self) -> bool:
        """Whether the folder's engines run on a CUDA GPU (TensorRT plans, inductor CUDA packages)."""
        return self.backend == "tensorrt" or self.device == "cuda"

    def build_config(self, folder: Path) -> BuildConfig:
        """The build request that makes this folder again: every flag it was built with
        (model, weights variant, LoRAs, backend, precision, max batch, height and width ranges), and --force."""
        return BuildConfig(model=self.model_name, out=folder, backend=self.backend, precision=self.precision,
                           max_batch=self.max_batch, height=self.height, width=self.width, force=True,
                           optimize=True if self.graph_optimization is not None else None, variant=self.variant,
                           loras=tuple(LoraSpec(Path(entry.path), entry.scale) for entry in self.loras),
                           device=self.device or "cpu", components=self.component_set,
                           controlnets=tuple(ControlNetSpec(Path(e.path), e.scale) for e in self.controlnets),
                           model_config=self.single_file.config if self.single_file is not None else None,
                           max_prompt_chunks=self.max_prompt_chunks, vae=self.vae.path if self.vae else None)

    @property
    def component_set(self) -> str:
        """The ``--components`` choice the folder was built with (``iospec.COMPONENT_SETS``)."""
        built = set(self.components) - set(CONTROLNETS)
        txt2img_only = set(COMPONENT_SETS["txt2img"]) <= built and not set(COMPONENT_SETS["all"]) <= built
        return "txt2img" if txt2img_only else "all"

    @property
    def max_prompt_chunks(self) -> int:
        """The chunks of ``text_max_length`` tokens the UNet's text axis was built for (its
        profile's ``text_length``; 1 where the axis is fixed; the default without a UNet entry)."""
        unet = self.components.get(UNET)
        if unet is None:
            return DEFAULT_PROMPT_CHUNKS
        bounds = unet.profile.get(TEXT_LENGTH)
        return max(bounds[2] // self.info.dims.text_max_length, 1) if bounds else 1

    def build_command(self, folder: Path) -> str:
        """``answer-trt build ...`` replaying ``build_config``: what every rebuild hint says."""
        return self.build_config(folder).command()


# Enough to tell a manifest of ours (even a damaged one) from someone else's manifest.json.
OWNERSHIP_FIELDS = ("format", "key", "components", "files")


class ManifestError(ValueError):
    """One thing wrong in a manifest: ``where`` (a dotted field path) and ``what``."""


def _fail(where: str, what: str) -> NoReturn:
    raise ManifestError(f"{where} {what}")


def _shown(value: Any) -> str:
    """A short, one-line rendering of an untrusted value for an error message."""
    text = repr(value) if not isinstance(value, (dict, list)) else f"a JSON {type(value).__name__}"
    return text if len(text) <= 60 else text[:57] + "..."


def _type_name(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def check_depth(data: Any, limit: int = MAX_DEPTH) -> None:
    """Refuse JSON nested deeper than any manifest is (without recursing)."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        item, depth = stack.pop()
        if not isinstance(item, (dict, list)):
            continue
        if depth > limit:
            _fail("manifest", f"nests deeper than {limit} levels")
        stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))


def _path_problem(text: str) -> str | None:
    """Why ``text`` is not a path as the build writes them (relative, '/'-separated, no
    '.', '..' or empty parts, no drive or root), or None."""
    if text.startswith("/") or PureWindowsPath(text).anchor:
        return f"is an absolute path ({text!r}); only paths inside the folder are allowed"
    if "\\" in text:
        return f"contains a backslash ({text!r}); paths are written with '/'"
    if any(part in ("", ".", "..") for part in text.split("/")):
        return f"is not a plain relative path ({text!r}): '..', '.' and empty parts are not allowed"
    return None


def relative_path(value: Any, where: str) -> str:
    """``value`` as a path inside the folder (``_path_problem``), or ``ManifestError``."""
    if not isinstance(value, str):
        _fail(where, f"must be a string, not {_type_name(value)} {_shown(value)}")
    problem = _one_line_problem(value) or _path_problem(value)
    if problem:
        _fail(where, problem)
    return value


# -- The JSON schema, in pydantic (strict: JSON's own types, nothing coerced). Checks that
# -- span fields (orders, the spec against the model's dims) follow in ``_manifest``.

def _one_line_problem(text: str) -> str | None:
    if not text or len(text) > MAX_TEXT or _CONTROL.search(text):
        return f"is not a one-line string of 1 to {MAX_TEXT} characters: {_shown(text)}"
    return None


def _checked(problem: Callable[[Any], str | None]) -> AfterValidator:
    """A validator that raises ``problem(value)`` (the rest of a one-line error) if any."""
    def check(value: Any) -> Any:
        text = problem(value)
        if text:
            raise ValueError(text)
        return value
    return AfterValidator(check)


def _one_of(choices: tuple[str, ...]) -> AfterValidator:
    return _checked(lambda v: None if v in choices else f"is {v!r}, not one of {', '.join(choices)}")


def _dim(value: Any) -> Dim:
    if isinstance(value, str) and _SYMBOL.fullmatch(value):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_INT:
        return value
    raise ValueError(f"must be an integer >= 1 or a symbol name, not {_type_name(value)} {_shown(value)}")


Text = Annotated[str, Strict(), _checked(_one_line_problem)]
Digest = Annotated[Text, _checked(lambda v: None if _DIGEST.fullmatch(v) else
                                   f"is not a sha256 hex digest: {_shown(v)}")]
RelativePath = Annotated[Text, _checked(_path_problem)]
Count = Annotated[int, Strict(), Field(ge=1, le=MAX_INT)]
Size = Annotated[int, Strict(), Field(ge=0, le=MAX_INT)]
Number = Annotated[float, Strict(), _checked(lambda v: None if math.isfinite(v) and v >= 0 else
                                             f"is {v!r}, not a finite number >= 0")]
ComponentName = Annotated[str, Strict(), _one_of(COMPONENTS)]
Precision = Annotated[str, Strict(), _one_of(PRECISIONS)]
Flag = Annotated[bool, Strict()]
Triple = Annotated[list[Count], _checked(lambda v: None if len(v) == 3 else "must be [min, opt, max]")]
Variant = Annotated[Text, _checked(lambda v: None if VARIANT_NAME.fullmatch(v) else
                                    f"is not a weights variant name: {_shown(v)}")]
LoraScale = Annotated[float, Strict(), _checked(lambda v: None if math.isfinite(v) and abs(v) <= MAX_LORA_SCALE else
                                                f"is {v!r}, not a number in {-MAX_LORA_SCALE:g} .. "
                                                f"{MAX_LORA_SCALE:g}")]

_RECORD = ConfigDict(extra="forbid")


@pydantic_dataclass(frozen=True, config=_RECORD)
class AccuracyEntry:
    """One component's post-build accuracy check (``answer-trt build --check``)."""

    precision: Precision  # the arithmetic precision its tolerance is for: fp32, fp16 or bf16
    atol: Number
    rtol: Number
    max_abs_error: Number  # against the reference, over every output element
    max_rel_error: Number


@pydantic_dataclass(frozen=True, config=_RECORD)
class AccuracyCheck:
    """The post-build accuracy check a folder passed: by what tool, against what reference."""

    tool: Text  # "polygraphy 0.53.6"
    reference: Text  # "torch float32 (cpu)"
    components: dict[ComponentName, AccuracyEntry]


@pydantic_dataclass(frozen=True, config=_RECORD)
class GraphOptimizationEntry:
    """One component's build-time graph optimization (``answer-trt build --optimize``)."""

    kept: Flag  # the optimized graph replaced the exported one
    note: Text  # why it was kept or not
    fusions: dict[Text, Count]  # fused operator -> count (only those that fired)
    max_abs_error: Number | None = None  # against the unoptimized graph; None where it did not run
    max_rel_error: Number | None = None
    atol: Number | None = None
    rtol: Number | None = None
    exported_ms: Number | None = None  # fastest of a few calls at the check size, each graph
    optimized_ms: Number | None = None


@pydantic_dataclass(frozen=True, config=_RECORD)
class GraphOptimization:
    """The build-time graph optimization a folder's graphs went through: by what tool."""

    tool: Text  # "onnxruntime.transformers.optimizer 1.32.0"
    components: dict[ComponentName, GraphOptimizationEntry]


@pydantic_dataclass(frozen=True, config=_RECORD)
class SessionChoice:
    """ONNX Runtime session settings (or OpenVINO's threads and shape policy) the build chose by
    measuring the UNet on the CPU."""

    # 0: ONNX Runtime's own choice (one per physical core)
    intra_op_threads: Annotated[int, Strict(), Field(ge=0, le=1024)]
    unet_call_ms: dict[Text, Number]  # candidate thread count -> fastest measured UNet call
    # os.cpu_count() of the machine that measured; None: not recorded
    cpus: Annotated[int, Strict(), Field(ge=1, le=1 << 20)] | None = None
    # openvino: compile one static-shape model per call shape (measured faster than dynamic shapes
    # at build, ``unet_call_ms["static"]``); None: not measured (onnxruntime)
    static_shapes: Annotated[bool, Strict()] | None = None

    def threads_here(self, cpus: int | None) -> int:
        """The thread count to run with on a machine with ``cpus`` CPUs: the measured one
        only on a machine like the one that measured it, ONNX Runtime's default elsewhere
        (an engines folder built on a busy laptop must not pin a server to one thread)."""
        return self.intra_op_threads if self.cpus is not None and self.cpus == cpus else 0


@pydantic_dataclass(frozen=True, config=_RECORD)
class LoraEntry:
    """A LoRA adapter fused into the weights before export (``answer-trt build --lora``)."""

    path: Text  # the file as the build found it (resolved): what a rebuild hint passes again
    sha256: Digest
    scale: LoraScale

    @property
    def name(self) -> str:
        return PurePosixPath(self.path.replace("\\", "/")).name


@pydantic_dataclass(frozen=True, config=_RECORD)
class ControlNetEntry:
    """A ControlNet exported beside the UNet (``answer-trt build --controlnet``,
    ``models/controlnet.py``): its folder, content sha256 and conditioning scale."""

    path: Text
    sha256: Digest
    scale: Annotated[float, Strict(), Field(ge=0.0, le=MAX_CONTROLNET_SCALE, allow_inf_nan=False)]

    @property
    def name(self) -> str:
        return PurePosixPath(self.path.replace("\\", "/")).name

    @property
    def tag(self) -> str:
        """``name:sha256-prefix:scale`` (``models.controlnet.ControlNetFolder.tag``)."""
        return f"{self.name}:{self.sha256[:12]}:{self.scale!r}"


@pydantic_dataclass(frozen=True, config=_RECORD)
class SingleFileEntry:
    """The single-file checkpoint a folder was built from (``--model FILE.safetensors``):
    the file's sha256, its family as users name it (``SD 1.x``, ``SD 2.x``, ``SDXL``) and the
    ``--config`` whose configs and tokenizer it was converted with (``models/single_file.py``)."""

    sha256: Digest
    family: Text
    config: Text


@pydantic_dataclass(frozen=True, config=_RECORD)
class VaeEntry:
    """The VAE a folder was built with in place of the model's own (``--vae``, ``models/vae_file.py``):
    its path as the build found it (resolved), sha256 and layout (``folder``, ``ldm``, ``diffusers``)."""

    path: Text
    sha256: Digest
    layout: Text

    @property
    def name(self) -> str:
        return PurePosixPath(self.path.replace("\\", "/")).name


class _Document(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _SizeRangeDoc(_Document):
    low: Count
    opt: Count
    high: Count


class _DimsDoc(_Document):
    text_max_length: Count
    text_hidden_size: Count
    latent_channels: Count
    vae_scale_factor: Count
    default_latent_size: Count
    pooled_size: Size  # 0 where the model has none (SD 1.x / 2.x)
    time_ids_size: Size
    unet_overall_up_factor: Count = 1  # absent from manifests written before it was recorded
    text_layers: Size = 0  # likewise
    inpaint_unet: bool = False  # likewise (a 9-channel inpainting UNet)
    controlnets: Annotated[int, Strict(), Field(ge=0, le=len(CONTROLNETS))] = 0  # built with --controlnet
    control_residuals: list[Annotated[list[Count], Field(min_length=2, max_length=2)]] = []
    first_text_hidden_size: Size = 0  # likewise


class _InfoDoc(_Document):
    dims: _DimsDoc
    prediction_type: Text
    zero_empty_negative: bool
    vae_force_upcast: bool


class _TensorDoc(_Document):
    name: Text
    shape: Annotated[list[Annotated[Any, PlainValidator(_dim)]], Field(max_length=8)]
    dtype: Annotated[str, _one_of(TENSOR_DTYPES)]


class _SpecDoc(_Document):
    name: Text
    inputs: Annotated[list[_TensorDoc], Field(min_length=1, max_length=64)]
    outputs: Annotated[list[_TensorDoc], Field(min_length=1, max_length=64)]


class _ComponentDoc(_Document):
    file: RelativePath
    spec: _SpecDoc
    profile: dict[Text, Triple]


# Every folder has the text-to-image components; the others (the VAE encoder) only where built.
_COMPONENT_FIELDS: dict[str, Any] = {
    name: (_ComponentDoc, ...) if name in REQUIRED_COMPONENTS else (_ComponentDoc | None, None) for name in COMPONENTS}
_ComponentsDoc: Any = create_model("_ComponentsDoc", __base__=_Document, **_COMPONENT_FIELDS)


class _ManifestDoc(_Document):
    format: int
    key: Digest
    backend: Annotated[str, _one_of(BUILD_BACKENDS)]
    precision: Precision
    model_name: Text
    model_hash: Digest
    max_batch: Count
    height: _SizeRangeDoc
    width: _SizeRangeDoc
    info: _InfoDoc
    components: _ComponentsDoc
    files: dict[RelativePath, Digest]
    versions: dict[Text, Text]
    gpu_capability: Text | None = None
    # Records the build makes as well as reads: their dataclasses are validated in lax mode
    # (a JSON object becomes the dataclass); their fields' own types are strict.
    accuracy: AccuracyCheck | None = None
    graph_optimization: GraphOptimization | None = None
    session: SessionChoice | None = None
    variant: Variant | None = None
    loras: Annotated[list[LoraEntry], Field(max_length=MAX_LORAS)] = []
    device: Annotated[str, Strict(), _one_of(DEVICES)] | None = None
    single_file: SingleFileEntry | None = None
    vae: VaeEntry | None = None
    controlnets: Annotated[list[ControlNetEntry], Field(max_length=len(CONTROLNETS))] = []


def _where(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "manifest"


def _error_text(error: Any) -> str:
    """One pydantic error as this module's one-line ``where what``."""
    loc, kind, value = tuple(error["loc"]), error["type"], error.get("input")
    ctx = error.get("ctx") or {}
    if kind == "missing":
        return f"{_where(loc[:-1])} lacks {loc[-1]}"
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        return f"{_where(loc[:-1])} has unknown field(s) {_shown(loc[-1])}"
    if len(loc) >= 2 and loc[-1] == "[key]":  # a mapping's key (loc: ..., key, "[key]")
        problem, parent = str(ctx.get("error", error["msg"])), _where(loc[:-2])
        if "not one of" in problem:
            return f"{parent} has unknown field(s) {_shown(loc[-2])}: it {problem}"
        return f"{parent} entry {problem}"
    where = _where(loc)
    if kind == "value_error":
        return f"{where} {ctx.get('error', error['msg'])}"
    if kind in ("greater_than_equal", "less_than_equal"):
        bound = f"at least {ctx['ge']}" if "ge" in ctx else f"at most {ctx['le']}"
        return f"{where} is {value}, outside the allowed range ({bound})"
    expected = {"int": "an integer", "string": "a string", "bool": "true or false", "float": "a number",
                "list": "a list", "dict": "a JSON object", "model": "a JSON object", "dataclass": "a JSON object"}
    for prefix, wanted in expected.items():
        if kind.startswith(prefix) and kind != "int_parsing":
            shown = "" if isinstance(value, (dict, list)) else f" {_shown(value)}"
            return f"{where} must be {wanted}, not {_type_name(value)}{shown}"
    if kind == "too_short":
        return f"{where} has {ctx.get('actual_length')} items, fewer than {ctx.get('min_length')}"
    if kind == "too_long":
        return f"{where} has {ctx.get('actual_length')} items, more than {ctx.get('max_length')}"
    return f"{where} {error['msg']}"


def _manifest(data: Any) -> Manifest:
    """Validate parsed JSON (``_ManifestDoc``, then what spans fields) into a ``Manifest``."""
    try:
        doc = _ManifestDoc.model_validate(data)
    except ValidationError as exc:
        raise ManifestError(_error_text(exc.errors(include_url=False)[0])) from None
    dims = doc.info.dims.model_dump()
    dims["control_residuals"] = tuple(tuple(pair) for pair in dims["control_residuals"])
    info = ModelInfo(dims=ModelDims(**dims), prediction_type=doc.info.prediction_type,
                     zero_empty_negative=doc.info.zero_empty_negative, vae_force_upcast=doc.info.vae_force_upcast)
    components = {name: _component(getattr(doc.components, name), name) for name in COMPONENTS
                  if getattr(doc.components, name) is not None}
    _check_specs(components, info.dims)
    if doc.backend == "inductor" and doc.device is None:
        _fail("manifest", "lacks device (an inductor build records the device its packages were compiled for)")
    return Manifest(
        key=doc.key, backend=doc.backend, precision=doc.precision, model_name=doc.model_name,
        model_hash=doc.model_hash, max_batch=doc.max_batch, height=_size_range(doc.height, "height"),
        width=_size_range(doc.width, "width"), info=info, components=components, files=dict(doc.files),
        versions=dict(doc.versions), gpu_capability=doc.gpu_capability, accuracy=doc.accuracy,
        graph_optimization=doc.graph_optimization, session=doc.session, variant=doc.variant,
        loras=tuple(doc.loras), device=doc.device, single_file=doc.single_file, vae=doc.vae,
        controlnets=tuple(doc.controlnets),
    )


def _size_range(doc: _SizeRangeDoc, where: str) -> SizeRange:
    if not doc.low <= doc.opt <= doc.high:
        _fail(where, f"is low {doc.low}, opt {doc.opt}, high {doc.high}: they must be in increasing order")
    return SizeRange(doc.low, doc.opt, doc.high)


def _component(doc: _ComponentDoc, name: str) -> ComponentEntry:
    where = f"components.{name}"
    if doc.spec.name != name:
        _fail(f"{where}.spec.name", f"is {_shown(doc.spec.name)}, not the component's name {name!r}")
    inputs, outputs = (tuple(TensorSpec(t.name, tuple(t.shape), t.dtype) for t in side)
                       for side in (doc.spec.inputs, doc.spec.outputs))
    spec = ComponentSpec(name, inputs, outputs)
    if set(doc.profile) != set(spec.symbols):
        _fail(f"{where}.profile", f"must give exactly the spec's symbols {', '.join(spec.symbols)}")
    profile: Profile = {}
    for symbol, (low, opt, high) in doc.profile.items():
        if not low <= opt <= high:
            _fail(f"{where}.profile.{symbol}", f"is [{low}, {opt}, {high}]: min <= opt <= max is required")
        profile[symbol] = (low, opt, high)
    return ComponentEntry(doc.file, spec, profile)


def _check_specs(components: dict[str, ComponentEntry], dims: ModelDims) -> None:
    """Each component's spec is the one the IO spec derives from the model's dims, in
    float32 or (a half-precision build) float16 or bfloat16: what the runtime will feed it."""
    expected_specs = component_specs(dims)
    extra = [name for name in components if name not in expected_specs]
    if extra:
        _fail(f"components.{extra[0]}",
              f"is not a component of this build (info.dims.controlnets is {dims.controlnets})")
    for name, expected in expected_specs.items():
        allowed = (expected, expected.with_dtype("float16"), expected.with_dtype("bfloat16"))
        if name in components and components[name].spec not in allowed:
            _fail(f"components.{name}.spec", "does not match the model's dims in info (tensor names, shapes or "
                  "dtypes differ from what the runtime feeds)")


def owned_paths(data: Any) -> set[str] | None:
    """The relative paths a manifest of ours lists (files and component files, whichever
    entries are valid paths), or None where ``data`` is not recognizably ours."""
    if not isinstance(data, dict) or not all(field in data for field in OWNERSHIP_FIELDS):
        return None
    listed: list[Any] = list(data["files"]) if isinstance(data["files"], dict) else []
    if isinstance(data["components"], dict):
        listed += [e.get("file") for e in data["components"].values() if isinstance(e, dict)]
    owned = set()
    for rel in listed:
        try:
            owned.add(relative_path(rel, "file"))
        except ManifestError:
            continue
    return owned


def write_manifest(folder: Path, manifest: Manifest) -> None:
    """Write ``manifest``, after reading it back through the reader's own schema: a build never
    publishes a folder that loading would refuse (``UserInputError`` naming the field)."""
    data = manifest.to_json()
    try:
        Manifest.from_json(json.loads(json.dumps(data)))
    except ManifestError as exc:
        raise UserInputError(f"the build would record something its manifest cannot hold ({exc}): nothing was "
                             "published; shorten the model path or use fewer --lora adapters") from None
    write_text_atomic(folder / MANIFEST_NAME, json.dumps(data, indent=2, sort_keys=True) + "\n")


def check_manifest_text(value: str, flag: str) -> None:
    """Refuse, before a build, a value the manifest will record that its schema would refuse
    (one line, at most ``MAX_TEXT`` characters, no control characters)."""
    problem = _one_line_problem(value)
    if problem:
        raise UserInputError(f"{flag} {_shown(value)} {problem}: a build records it in {MANIFEST_NAME}; use a shorter "
                             "path without control characters (move or link the model)")


def _rebuild_hint(folder: Path) -> str:
    """For a manifest that cannot be read, so the flags it was built with are unknown."""
    return (f"rebuild with --force: `answer-trt build --model MODEL --out {shlex.quote(str(folder))} --force` "
            "and the --backend, --precision, --max-batch, --height and --width it was built with")


def _inside(folder: Path, rel: str) -> bool:
    """Whether ``folder/rel``, symbolic links resolved, lies inside ``folder``."""
    try:
        root, target = folder.resolve(), (folder / rel).resolve()
    except (OSError, RuntimeError):  # a link loop
        return False
    return target != root and target.is_relative_to(root)


def load_manifest_json(folder: Path) -> Any:
    """The parsed JSON of ``folder/manifest.json``, read only if it is a regular file of
    bounded size inside ``folder``; raises ``ManifestError`` otherwise."""
    path = folder / MANIFEST_NAME
    if not _inside(folder, MANIFEST_NAME) or not path.is_file():
        _fail(MANIFEST_NAME, "is a link to outside the folder or not a regular file")
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        _fail(MANIFEST_NAME, f"cannot be read ({exc.strerror})")
    if len(raw) > MAX_MANIFEST_BYTES:
        _fail(MANIFEST_NAME, f"is larger than {MAX_MANIFEST_BYTES >> 20} MiB")
    try:
        return json.loads(raw.decode("utf-8"))
    except RecursionError:
        _fail("manifest", f"nests deeper than {MAX_DEPTH} levels")
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        _fail(MANIFEST_NAME, f"is not valid JSON ({str(exc)[:80]})")


@dataclass(frozen=True)
class BuildResult:
    """What a build gave: the folder's manifest, and whether it was up to date already."""

    manifest: Manifest
    folder: Path
    skipped: bool


def read_manifest(folder: Path) -> Manifest:
    """Parse and validate ``folder/manifest.json`` (see the module docstring); a
    missing, unreadable or invalid one is a user error."""
    if not folder.is_dir():
        raise UserInputError(f"engines folder {folder} does not exist: build it with `answer-trt build --out {folder}`")
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise UserInputError(f"{folder} has no {MANIFEST_NAME}: build it with `answer-trt build --out {folder}`")
    try:
        manifest = Manifest.from_json(load_manifest_json(folder))
        check_folder(folder, manifest)
    except ManifestError as exc:
        raise UserInputError(f"{path} is not a manifest this answer-trt can read ({exc}): "
                             f"{_rebuild_hint(folder)}") from None
    return manifest


@dataclass(frozen=True)
class TokenizerFiles:
    """How the tokenizer in ``root/sub`` loads, and every file that load opens."""

    sub: str  # "tokenizer" or "tokenizer_2"
    reader: str  # one of TOKENIZER_READERS; "" where the folder holds nothing a tokenizer loads from
    files: tuple[str, ...]  # paths relative to ``root``, sorted

    def describe(self) -> str:
        """What is missing, for a one-line error about a folder without a loadable tokenizer."""
        return (f"holds no tokenizer files ({TOKENIZER_JSON}, or {' and '.join(SLOW_TOKENIZER_FILES)}, "
                f"or {FAST_TOKENIZER_FILE})")


def tokenizer_files(root: Path, sub: str) -> TokenizerFiles:
    """The one answer to "what does loading the tokenizer in ``root/sub`` open", for a
    model folder and for an engines folder alike, from what the folder holds:

    - ``FAST_TOKENIZER_FILE`` (an engines folder's, written by the build): that file alone,
      read by the `tokenizers` library (``models/fast_tokenizer.py``);
    - else ``vocab.json`` + ``merges.txt``: transformers' ``CLIPTokenizer`` (the slow one in
      4.x; in 5.x the same class reads ``tokenizer.json`` too where it is there);
    - else ``tokenizer.json``: transformers' ``CLIPTokenizerFast``.

    transformers opens what it finds beside those (``tokenizer_config.json``,
    ``special_tokens_map.json``, ``added_tokens.json``, ...), so for its readers every file
    in the folder counts as opened. The loaders open exactly this list
    (``models/source.py``) and the manifest must checksum every file of it
    (``check_folder``)."""
    folder = root / sub

    def has(name: str) -> bool:
        return (folder / name).is_file()

    if has(FAST_TOKENIZER_FILE):
        return TokenizerFiles(sub, "answer-trt", (f"{sub}/{FAST_TOKENIZER_FILE}",))
    if all(has(name) for name in SLOW_TOKENIZER_FILES):
        reader = "slow"
    elif has(TOKENIZER_JSON):
        reader = "fast"
    else:
        return TokenizerFiles(sub, "", ())
    files = sorted(
        (Path(dirpath) / name).relative_to(root).as_posix()
        for dirpath, _dirs, names in os.walk(folder)
        for name in names
    )
    return TokenizerFiles(sub, reader, tuple(files))


def tokenizer_folders(root: Path, count: int) -> list[str]:
    """The tokenizer folders of ``root`` that loading reads: the first ``count`` (one per text
    encoder) and any other that is there."""
    return [sub for i, sub in enumerate(TOKENIZER_FOLDERS) if i < count or (root / sub).is_dir()]


def loaded_files(folder: Path, manifest: Manifest) -> Iterator[tuple[str, str]]:
    """``(relative path, what reads it)`` for every file that loading ``folder`` reads."""
    for name, entry in manifest.components.items():
        yield entry.file, f"component {name}"
        data = external_data_name(entry.file)
        if (folder / data).exists() or (folder / data).is_symlink() or data in manifest.files:
            yield data, f"component {name}'s external data"
        if entry.file.endswith(".xml"):  # OpenVINO IR: its weights beside it
            yield entry.file[:-len(".xml")] + ".bin", f"component {name}'s weights"
        if entry.file.endswith(".onnx") and (folder / entry.file).is_file():
            yield from _graph_data_files(folder, entry.file, name, skip=data)
    yield SCHEDULER_CONFIG, "the scheduler"
    for sub in tokenizer_folders(folder, manifest.info.dims.text_encoders):
        layout = tokenizer_files(folder, sub)
        if not layout.reader:
            _fail(f"folder {sub!r}", layout.describe())
        for rel in layout.files:
            yield rel, "the tokenizer"


def _graph_data_files(folder: Path, graph: str, name: str, skip: str) -> Iterator[tuple[str, str]]:
    """The external-data files ``graph`` names (read from the graph itself, whatever their
    names), as ``loaded_files`` entries; a location that leaves the folder raises
    ``ManifestError``."""
    from answer_trt.onnx_files import external_data_locations

    try:
        locations = external_data_locations(folder / graph)
    except ValueError:  # not a graph: its checksum check (or ONNX Runtime's load) says so in one line
        return
    base = PurePosixPath(graph).parent
    for location in locations:
        rel = (base / location).as_posix() if location else ""
        if not location or PurePosixPath(location).is_absolute() or ".." in PurePosixPath(location).parts \
                or not _inside(folder, rel):
            _fail(f"component {name}", f"its graph reads external data from {location!r}, outside the engines "
                                       "folder: answer-trt loads only files inside it")
        if rel != skip:
            yield rel, f"component {name}'s external data (named in its graph)"


def check_folder(folder: Path, manifest: Manifest) -> None:
    """Every path the manifest names stays inside ``folder`` (links resolved), and every
    file loading reads is in the checksum list. Raises ``ManifestError``."""
    for rel in (*manifest.files, *(e.file for e in manifest.components.values())):
        if not _inside(folder, rel):
            _fail(f"entry {rel!r}", "leads outside the folder (through a symbolic link)")
    for sub in TOKENIZER_FOLDERS:
        if (folder / sub).is_symlink() and not _inside(folder, sub):
            _fail(f"folder {sub!r}", "is a link to outside the folder")
    for rel, reader in loaded_files(folder, manifest):
        if rel not in manifest.files:
            _fail("files", f"lacks {rel!r}, which {reader} loads: every loaded file must have a checksum")


def mismatched_files(folder: Path, manifest: Manifest) -> list[str]:
    """Files listed in the manifest that are missing or differ from their sha256. Each real
    file is hashed once, however many listed names (links) lead to it."""
    digests: dict[tuple[int, int], str] = {}

    def digest_of(path: Path) -> str | None:
        try:
            info = path.stat()
        except OSError:
            return None
        key = (info.st_dev, info.st_ino)
        if key not in digests:
            digests[key] = sha256_file(path)
        return digests[key]

    return [rel for rel, digest in manifest.files.items()
            if not (folder / rel).is_file() or digest_of(folder / rel) != digest]


def verify_files(folder: Path, manifest: Manifest) -> None:
    bad = mismatched_files(folder, manifest)
    if bad:
        raise UserInputError(
            f"{folder}: {', '.join(bad)} missing or not matching the checksum in {MANIFEST_NAME}: "
            f"rebuild with `{manifest.build_command(folder)}`"
        )
