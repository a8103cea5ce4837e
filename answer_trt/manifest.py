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
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, NoReturn, TypeVar

from answer_trt.build_config import BuildConfig
from answer_trt.errors import UserInputError
from answer_trt.files import sha256_file, write_text_atomic
from answer_trt.iospec import (
    COMPONENTS,
    ComponentSpec,
    Dim,
    ModelDims,
    Profile,
    SizeRange,
    TensorSpec,
    component_specs,
)
from answer_trt.models.info import ModelInfo
from answer_trt.rules import BUILD_BACKENDS, PRECISIONS

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
_DIGEST = re.compile(r"[0-9a-f]{64}")
_SYMBOL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

T = TypeVar("T")


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
class AccuracyEntry:
    """One component's post-build accuracy check (``answer-trt build --check``)."""

    precision: str  # the arithmetic precision its tolerance is for: fp32, fp16 or bf16
    atol: float
    rtol: float
    max_abs_error: float  # against the reference, over every output element
    max_rel_error: float


@dataclass(frozen=True)
class AccuracyCheck:
    """The post-build accuracy check a folder passed: by what tool, against what reference."""

    tool: str  # "polygraphy 0.53.6"
    reference: str  # "torch float32 (cpu)"
    components: dict[str, AccuracyEntry]


@dataclass(frozen=True)
class GraphOptimizationEntry:
    """One component's build-time graph optimization (``answer-trt build --optimize``)."""

    kept: bool  # the optimized graph replaced the exported one
    note: str  # why it was kept or not
    fusions: dict[str, int]  # fused operator -> count (only those that fired)
    max_abs_error: float | None = None  # against the unoptimized graph; None where it did not run
    max_rel_error: float | None = None
    atol: float | None = None
    rtol: float | None = None
    exported_ms: float | None = None  # fastest of a few calls at the check size, each graph
    optimized_ms: float | None = None


@dataclass(frozen=True)
class GraphOptimization:
    """The build-time graph optimization a folder's graphs went through: by what tool."""

    tool: str  # "onnxruntime.transformers.optimizer 1.32.0"
    components: dict[str, GraphOptimizationEntry]


@dataclass(frozen=True)
class SessionChoice:
    """ONNX Runtime session settings the build chose by measuring the UNet (CPU provider)."""

    intra_op_threads: int  # 0: ONNX Runtime's own choice (one per physical core)
    unet_call_ms: dict[str, float]  # candidate thread count -> fastest measured UNet call
    cpus: int | None = None  # os.cpu_count() of the machine that measured; None: not recorded

    def threads_here(self, cpus: int | None) -> int:
        """The thread count to run with on a machine with ``cpus`` CPUs: the measured one
        only on a machine like the one that measured it, ONNX Runtime's default elsewhere
        (an engines folder built on a busy laptop must not pin a server to one thread)."""
        return self.intra_op_threads if self.cpus is not None and self.cpus == cpus else 0


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

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["format"] = MANIFEST_FORMAT
        for optional in ("accuracy", "graph_optimization", "session"):
            if data[optional] is None:  # left out: a folder built without it reads as before
                del data[optional]
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
        fields = _object(data, "manifest", _REQUIRED_FIELDS, _OPTIONAL_FIELDS)
        info = _model_info(fields["info"], "info")
        components = _components(fields["components"], "components")
        _check_specs(components, info.dims)
        return cls(
            key=_digest(fields["key"], "key"),
            backend=_choice(fields["backend"], "backend", BUILD_BACKENDS),
            precision=_choice(fields["precision"], "precision", PRECISIONS),
            model_name=_text(fields["model_name"], "model_name"),
            model_hash=_digest(fields["model_hash"], "model_hash"),
            max_batch=_int(fields["max_batch"], "max_batch", low=1),
            height=_size_range(fields["height"], "height"),
            width=_size_range(fields["width"], "width"),
            info=info,
            components=components,
            files=_files(fields["files"], "files"),
            versions=_mapping(fields["versions"], "versions", _text),
            gpu_capability=_optional(fields.get("gpu_capability"), "gpu_capability", _text),
            accuracy=_optional(fields.get("accuracy"), "accuracy", _accuracy),
            graph_optimization=_optional(fields.get("graph_optimization"), "graph_optimization",
                                         _graph_optimization),
            session=_optional(fields.get("session"), "session", _session_choice),
        )

    def build_config(self, folder: Path) -> BuildConfig:
        """The build request that makes this folder again: every flag it was built with
        (model, backend, precision, max batch, height and width ranges), and --force."""
        return BuildConfig(model=self.model_name, out=folder, backend=self.backend, precision=self.precision,
                           max_batch=self.max_batch, height=self.height, width=self.width, force=True,
                           optimize=True if self.graph_optimization is not None else None)

    def build_command(self, folder: Path) -> str:
        """``answer-trt build ...`` replaying ``build_config``: what every rebuild hint says."""
        return self.build_config(folder).command()


_REQUIRED_FIELDS = {"format", "key", "backend", "precision", "model_name", "model_hash", "max_batch", "height",
                    "width", "info", "components", "files", "versions"}
_OPTIONAL_FIELDS = {"gpu_capability", "accuracy", "graph_optimization", "session"}
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


def _object(value: Any, where: str, required: Iterable[str], optional: Iterable[str] = ()) -> dict[str, Any]:
    if not isinstance(value, dict):
        _fail(where, f"must be a JSON object, not {_type_name(value)}")
    required = set(required)
    missing = sorted(required - set(value))
    if missing:
        _fail(where, f"lacks {', '.join(missing)}")
    unknown = sorted(set(value) - required - set(optional))
    if unknown:
        _fail(where, f"has unknown field(s) {', '.join(_shown(k) for k in unknown[:3])}")
    return value


def _mapping(value: Any, where: str, item: Callable[[Any, str], T]) -> dict[str, T]:
    if not isinstance(value, dict):
        _fail(where, f"must be a JSON object, not {_type_name(value)}")
    return {_text(key, f"{where} key"): item(v, f"{where}.{key}") for key, v in value.items()}


def _optional(value: Any, where: str, item: Callable[[Any, str], T]) -> T | None:
    return None if value is None else item(value, where)


def _int(value: Any, where: str, low: int = 0, high: int = MAX_INT) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(where, f"must be an integer, not {_type_name(value)} {_shown(value)}")
    if not low <= value <= high:
        _fail(where, f"is {value}, outside {low}..{high}")
    return value


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        _fail(where, f"must be true or false, not {_type_name(value)}")
    return value


def _number(value: Any, where: str) -> float:
    """A finite, non-negative JSON number (an error or a tolerance)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(where, f"must be a number, not {_type_name(value)} {_shown(value)}")
    if not math.isfinite(value) or value < 0:
        _fail(where, f"is {value!r}, not a finite number >= 0")
    return float(value)


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        _fail(where, f"must be a string, not {_type_name(value)} {_shown(value)}")
    if not value or len(value) > MAX_TEXT or _CONTROL.search(value):
        _fail(where, f"is not a one-line string of 1 to {MAX_TEXT} characters: {_shown(value)}")
    return value


def _choice(value: Any, where: str, choices: tuple[str, ...]) -> str:
    text = _text(value, where)
    if text not in choices:
        _fail(where, f"is {text!r}, not one of {', '.join(choices)}")
    return text


def _digest(value: Any, where: str) -> str:
    text = _text(value, where)
    if not _DIGEST.fullmatch(text):
        _fail(where, f"is not a sha256 hex digest: {_shown(text)}")
    return text


def _list(value: Any, where: str, max_items: int = 64) -> list[Any]:
    if not isinstance(value, list):
        _fail(where, f"must be a list, not {_type_name(value)}")
    if len(value) > max_items:
        _fail(where, f"has {len(value)} items, more than {max_items}")
    return value


def relative_path(value: Any, where: str) -> str:
    """A path inside the folder, written as the build writes it: relative, '/'-separated,
    no '.', '..' or empty parts, no drive or root."""
    text = _text(value, where)
    if text.startswith("/") or PureWindowsPath(text).anchor:
        _fail(where, f"is an absolute path ({text!r}); only paths inside the folder are allowed")
    if "\\" in text:
        _fail(where, f"contains a backslash ({text!r}); paths are written with '/'")
    if any(part in ("", ".", "..") for part in text.split("/")):
        _fail(where, f"is not a plain relative path ({text!r}): '..', '.' and empty parts are not allowed")
    return text


def _size_range(value: Any, where: str) -> SizeRange:
    fields = _object(value, where, ("low", "opt", "high"))
    low, opt, high = (_int(fields[k], f"{where}.{k}", low=1) for k in ("low", "opt", "high"))
    if not low <= opt <= high:
        _fail(where, f"is low {low}, opt {opt}, high {high}: they must be in increasing order")
    return SizeRange(low, opt, high)


def _model_info(value: Any, where: str) -> ModelInfo:
    fields = _object(value, where, ("dims", "prediction_type", "zero_empty_negative", "vae_force_upcast"))
    dims = _object(fields["dims"], f"{where}.dims", _POSITIVE_DIMS + _OPTIONAL_DIMS[:2], _OPTIONAL_DIMS[2:])
    values = {k: _int(dims[k], f"{where}.dims.{k}", low=1 if k in _POSITIVE_DIMS + _OPTIONAL_POSITIVE_DIMS else 0)
              for k in dims}
    return ModelInfo(
        dims=ModelDims(**values),
        prediction_type=_text(fields["prediction_type"], f"{where}.prediction_type"),
        zero_empty_negative=_bool(fields["zero_empty_negative"], f"{where}.zero_empty_negative"),
        vae_force_upcast=_bool(fields["vae_force_upcast"], f"{where}.vae_force_upcast"),
    )


_POSITIVE_DIMS = ("text_max_length", "text_hidden_size", "latent_channels", "vae_scale_factor",
                  "default_latent_size")
# Zero where the model has none (SD 1.x / 2.x); the last is absent from manifests written
# before it was recorded (ModelDims' default, 1), and never 0.
_OPTIONAL_DIMS = ("pooled_size", "time_ids_size", "unet_overall_up_factor")
_OPTIONAL_POSITIVE_DIMS = ("unet_overall_up_factor",)


def _tensor(value: Any, where: str) -> TensorSpec:
    fields = _object(value, where, ("name", "shape", "dtype"))
    shape: list[Dim] = []
    for axis, dim in enumerate(_list(fields["shape"], f"{where}.shape", max_items=8)):
        if isinstance(dim, str):
            if not _SYMBOL.fullmatch(dim):
                _fail(f"{where}.shape[{axis}]", f"is not a symbol name: {_shown(dim)}")
            shape.append(dim)
        else:
            shape.append(_int(dim, f"{where}.shape[{axis}]", low=1))
    return TensorSpec(_text(fields["name"], f"{where}.name"), tuple(shape),
                      _choice(fields["dtype"], f"{where}.dtype", TENSOR_DTYPES))


def _spec(value: Any, where: str, name: str) -> ComponentSpec:
    fields = _object(value, where, ("name", "inputs", "outputs"))
    if fields["name"] != name:
        _fail(f"{where}.name", f"is {_shown(fields['name'])}, not the component's name {name!r}")
    inputs, outputs = (
        tuple(_tensor(t, f"{where}.{side}[{i}]") for i, t in enumerate(_list(fields[side], f"{where}.{side}")))
        for side in ("inputs", "outputs")
    )
    if not inputs or not outputs:
        _fail(where, "needs at least one input and one output")
    return ComponentSpec(name, inputs, outputs)


def _profile(value: Any, where: str, spec: ComponentSpec) -> Profile:
    if not isinstance(value, dict):
        _fail(where, f"must be a JSON object, not {_type_name(value)}")
    if set(value) != set(spec.symbols):
        _fail(where, f"must give exactly the spec's symbols {', '.join(spec.symbols)}")
    profile: Profile = {}
    for symbol, triple in value.items():
        items = _list(triple, f"{where}.{symbol}")
        if len(items) != 3:
            _fail(f"{where}.{symbol}", "must be [min, opt, max]")
        low, opt, high = (_int(v, f"{where}.{symbol}", low=1) for v in items)
        if not low <= opt <= high:
            _fail(f"{where}.{symbol}", f"is [{low}, {opt}, {high}]: min <= opt <= max is required")
        profile[symbol] = (low, opt, high)
    return profile


def _components(value: Any, where: str) -> dict[str, ComponentEntry]:
    entries = _object(value, where, COMPONENTS)
    components = {}
    for name in COMPONENTS:
        fields = _object(entries[name], f"{where}.{name}", ("file", "spec", "profile"))
        spec = _spec(fields["spec"], f"{where}.{name}.spec", name)
        components[name] = ComponentEntry(relative_path(fields["file"], f"{where}.{name}.file"), spec,
                                          _profile(fields["profile"], f"{where}.{name}.profile", spec))
    return components


_ACCURACY_ERRORS = ("atol", "rtol", "max_abs_error", "max_rel_error")


def _accuracy(value: Any, where: str) -> AccuracyCheck:
    fields = _object(value, where, ("tool", "reference", "components"))
    checked = _object(fields["components"], f"{where}.components", (), COMPONENTS)
    components = {}
    for name, item in checked.items():
        entry = _object(item, f"{where}.components.{name}", ("precision", *_ACCURACY_ERRORS))
        numbers = {k: _number(entry[k], f"{where}.components.{name}.{k}") for k in _ACCURACY_ERRORS}
        components[name] = AccuracyEntry(
            precision=_choice(entry["precision"], f"{where}.components.{name}.precision", PRECISIONS), **numbers)
    return AccuracyCheck(_text(fields["tool"], f"{where}.tool"), _text(fields["reference"], f"{where}.reference"),
                         components)


_OPTIMIZATION_NUMBERS = ("max_abs_error", "max_rel_error", "atol", "rtol", "exported_ms", "optimized_ms")


def _graph_optimization(value: Any, where: str) -> GraphOptimization:
    fields = _object(value, where, ("tool", "components"))
    optimized = _object(fields["components"], f"{where}.components", (), COMPONENTS)
    components = {}
    for name, item in optimized.items():
        at = f"{where}.components.{name}"
        entry = _object(item, at, ("kept", "note", "fusions"), _OPTIMIZATION_NUMBERS)
        numbers = {k: _optional(entry.get(k), f"{at}.{k}", _number) for k in _OPTIMIZATION_NUMBERS}
        components[name] = GraphOptimizationEntry(
            kept=_bool(entry["kept"], f"{at}.kept"), note=_text(entry["note"], f"{at}.note"),
            fusions=_mapping(entry["fusions"], f"{at}.fusions", lambda v, w: _int(v, w, low=1)), **numbers)
    return GraphOptimization(_text(fields["tool"], f"{where}.tool"), components)


def _session_choice(value: Any, where: str) -> SessionChoice:
    fields = _object(value, where, ("intra_op_threads", "unet_call_ms"), ("cpus",))
    return SessionChoice(_int(fields["intra_op_threads"], f"{where}.intra_op_threads", high=1024),
                         _mapping(fields["unet_call_ms"], f"{where}.unet_call_ms", _number),
                         _optional(fields.get("cpus"), f"{where}.cpus", lambda v, w: _int(v, w, low=1, high=1 << 20)))


def _check_specs(components: dict[str, ComponentEntry], dims: ModelDims) -> None:
    """Each component's spec is the one the IO spec derives from the model's dims, in
    float32 or (a half-precision build) float16 or bfloat16: what the runtime will feed it."""
    for name, expected in component_specs(dims).items():
        if components[name].spec not in (expected, expected.with_dtype("float16"), expected.with_dtype("bfloat16")):
            _fail(f"components.{name}.spec", "does not match the model's dims in info (tensor names, shapes or "
                  "dtypes differ from what the runtime feeds)")


def _files(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict):
        _fail(where, f"must be a JSON object, not {_type_name(value)}")
    return {relative_path(rel, f"{where} entry"): _digest(digest, f"{where}.{rel}") for rel, digest in value.items()}


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
    write_text_atomic(folder / MANIFEST_NAME, json.dumps(manifest.to_json(), indent=2, sort_keys=True) + "\n")


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
