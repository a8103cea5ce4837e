"""Single-file checkpoints: one ``.safetensors`` file in the CompVis / AUTOMATIC1111 ("LDM")
layout, as model sites share Stable Diffusion models (``model.diffusion_model.*`` UNet,
``first_stage_model.*`` VAE, ``cond_stage_model.*`` text encoder; SDXL:
``conditioner.embedders.0/1.*``).

Such a file is turned into a diffusers model folder once, by diffusers' own single-file
machinery (``StableDiffusionPipeline.from_single_file`` / ``StableDiffusionXLPipeline
.from_single_file`` with ``config=``: its key conversion, not ours), and saved with
``save_pretrained`` into the cache, ``<cache>/models/single-file/<stem>-<file sha256>-<configs
and converter versions digest>/``. Everything after that (configs read for the IO spec,
``load_model``, LoRAs fused on top, the tokenizers copied beside the engines) reads that
folder like any other, so a single file needs no code path of its own. The folder is keyed by the file's content and the
configs', so a changed file (or other configs) converts again and an unchanged one is reused.

Configs: a single file holds weights only. The architecture configs, scheduler config and
tokenizer come, by default, from the package: the family's published configs ship inside it
(``models/family_configs.py``: ``answer-trt:sd1``, ``answer-trt:sd2``, ``answer-trt:sd2-base``,
``answer-trt:sdxl``), so a single file converts offline, with no model hub and no Hugging Face
cache. ``--config`` names other ones: a local diffusers folder, a hub id (fetched without
weights, or found in the Hugging Face cache), or one of the shipped names (e.g.
``answer-trt:sd2-base`` to say an SD 2.x file predicts epsilon). SD 2.x files come in two
kinds, the 768 ``v_prediction`` models and the 512 ``-base`` epsilon ones, with the same
tensors; without ``--config`` the file's UNet tells, as AUTOMATIC1111 tells it
(``is_using_v_parameterization_for_sd2``: one float32 step on a constant input; a mean output
below -1 is v-prediction), once per file (the answer is kept in the cache by the file's sha256).

Marker keys: v-prediction SDXL fine-tunes carry an empty ``v_pred`` tensor (and ``ztsnr`` when
trained on a zero-terminal-SNR schedule), which AUTOMATIC1111 (1.10) and ComfyUI read and
diffusers' converter does not. The converted folder's scheduler config follows them
(``SingleFile.scheduler_options``): ``prediction_type`` ``v_prediction``; ``rescale_betas_zero_snr``
with ``trailing`` timesteps, the setting diffusers gives for such schedules (Lin et al. 2024,
"Common Diffusion Noise Schedules and Sample Steps are Flawed").

Pickle checkpoints (``.ckpt``, ``.pt``, ``.pth``, ``.bin``) are refused: unpickling can run
code, and A1111-era ``.ckpt`` files hold training objects that ``torch.load(weights_only=True)``
does not open anyway. The message says how to convert them.

Errors are ``UserInputError``: one line naming the file, what is wrong and what to do.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from answer_trt.cache import cache_root
from answer_trt.errors import UserInputError
from answer_trt.files import STALE_TEMPORARY_S, sha256_file
from answer_trt.models import quiet_libraries
from answer_trt.models.family_configs import SHIPPED_PREFIX, family_folder, shipped_name
from answer_trt.models.weight_files import PICKLE_SUFFIXES, check_safetensors

SINGLE_FILE_SUFFIXES = (".safetensors",)
PICKLE_CHECKPOINT_SUFFIXES = PICKLE_SUFFIXES
CHECKPOINT_SUFFIXES = (*SINGLE_FILE_SUFFIXES, *PICKLE_CHECKPOINT_SUFFIXES)
CONVERTED_FOLDER = "single-file"  # under <cache>/models/
# Files of a diffusers config folder that decide the converted model (no weights): what
# diffusers' own config download fetches (configs, tokenizer vocabularies and merges).
CONFIG_PATTERNS = ["**/*.json", "*.json", "*.txt", "**/*.txt", "**/*.model"]
CONFIG_SUFFIXES = (".json", ".txt", ".model")


@dataclass(frozen=True)
class Family:
    """A model family a single file can hold: diffusers' model type name (``infer_diffusers_model_type``),
    what users call it, the diffusers pipeline class that converts it, and the shipped config
    folder used for it by default (``family_configs.SHIPPED``)."""

    model_type: str
    label: str
    pipeline: str
    shipped: str

    @property
    def default_config(self) -> str:
        """The ``--config`` value of the family's shipped configs (``answer-trt:sd1``)."""
        return SHIPPED_PREFIX + self.shipped


FAMILIES = {
    "v1": Family("v1", "SD 1.x", "StableDiffusionPipeline", "sd1"),
    "v2": Family("v2", "SD 2.x", "StableDiffusionPipeline", "sd2"),
    "xl_base": Family("xl_base", "SDXL", "StableDiffusionXLPipeline", "sdxl"),
}
SD2_EPSILON = "sd2-base"  # the shipped configs of an SD 2.x file whose UNet predicts epsilon
PREDICTION_FOLDER = "sd2-prediction"  # under <cache>/models/single-file/: one JSON per SD 2.x file

# diffusers' names for families it knows and answer-trt does not run (yet), as users know them.
UNSUPPORTED_FAMILIES = {
    "inpainting": "an SD 1.x inpainting checkpoint (its UNet takes 9 input channels)",
    "inpainting_v2": "an SD 2.x inpainting checkpoint (its UNet takes 9 input channels)",
    "xl_inpaint": "an SDXL inpainting checkpoint (its UNet takes 9 input channels)",
    "xl_refiner": "an SDXL refiner checkpoint (one OpenCLIP text encoder, no CLIP-L)",
    "upscale": "an SD x4 upscaler checkpoint",
    "playground-v2-5": "a Playground v2.5 checkpoint (EDM schedule)",
}

# The key prefixes of an LDM-layout Stable Diffusion checkpoint, per part.
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIXES = ("cond_stage_model.", "conditioner.embedders.")
TOO_LARGE_HEADER_KEYS = 200_000
# Marker keys a checkpoint may carry -> the scheduler config options they ask for.
MARKER_KEYS: dict[str, dict[str, Any]] = {
    "v_pred": {"prediction_type": "v_prediction"},
    "ztsnr": {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"},
}


@dataclass(frozen=True)
class SingleFile:
    """A single-file checkpoint resolved for loading: the ``file``, its ``sha256``, its
    ``family`` (``FAMILIES``), ``config`` (the ``--config`` value, or the name of the shipped
    configs used, ``answer-trt:sd1``), ``config_path`` (that config as a local folder) and ``config_sha256`` (one
    digest over the config folder's config and tokenizer files)."""

    file: Path
    sha256: str
    family: Family
    config: str
    config_path: Path
    config_sha256: str
    markers: tuple[str, ...] = ()  # the file's MARKER_KEYS, in MARKER_KEYS order

    @property
    def model_hash(self) -> str:
        """What the build key and the manifest name the model by: the file's content and the
        configs' content, and what the file's marker keys change (a 64-digit sha256)."""
        return hashlib.sha256(f"single-file\0{self.sha256}\0{self.config_sha256}{self.marker_key}".encode()).hexdigest()

    @property
    def marker_key(self) -> str:
        """The file's marker keys as they enter the model hash and the converted folder's name;
        empty without markers, so those keep the names they always had."""
        return "".join(f"\0marker={m}" for m in self.markers)

    def scheduler_options(self) -> dict[str, Any]:
        """What the file's marker keys set in the converted scheduler config (``MARKER_KEYS``)."""
        return {k: v for marker in self.markers for k, v in MARKER_KEYS[marker].items()}

    def describe(self) -> str:
        """One line for the build log: ``model.safetensors: SD 1.x single-file checkpoint (sha256 ...),
        configs and tokenizer from ...``."""
        marked = f"; its {' and '.join(self.markers)} key{'s' if len(self.markers) > 1 else ''} set " + ", ".join(
            f"{k}={v}" for k, v in self.scheduler_options().items()) if self.markers else ""
        return (f"{self.file.name}: {self.family.label} single-file checkpoint (sha256 {self.sha256[:12]}), "
                f"configs and tokenizer from {self.config}{marked}")


def is_single_file(path: Path) -> bool:
    """Whether ``path`` names a single-file checkpoint answer-trt reads or refuses as one
    (a file ending in ``.safetensors`` or a pickle suffix)."""
    return path.suffix.lower() in CHECKPOINT_SUFFIXES and path.is_file()


def refuse_pickle(path: Path) -> None:
    """Refuse a pickle checkpoint in one line saying how to convert it."""
    if path.suffix.lower() in PICKLE_CHECKPOINT_SUFFIXES:
        raise UserInputError(
            f"{path} is a pickle checkpoint ({path.suffix}), which answer-trt does not load (unpickling can run "
            "code): convert it to .safetensors (A1111's or ComfyUI's checkpoint converter, or "
            "`safetensors.torch.save_file(torch.load(FILE, weights_only=True)['state_dict'], 'model.safetensors')`) "
            "and pass that file")


@lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int, inode: int) -> str:
    return sha256_file(Path(path))


def file_sha256(path: Path) -> str:
    """sha256 of ``path``, computed once per process for one version of the file (keyed by
    size, modification time and inode: a file rewritten in place is hashed again)."""
    info = path.stat()
    return _sha256(str(path.resolve()), info.st_size, info.st_mtime_ns, info.st_ino)


def checkpoint_family(file: Path) -> Family:
    """The family of the LDM-layout checkpoint ``file``, from its safetensors header alone
    (names and shapes, no tensors read): diffusers' ``infer_diffusers_model_type`` on the
    shapes, with the text encoders' key prefixes deciding where diffusers' marker tensors are
    absent (its markers are layers a full-size model has: e.g. SDXL's is the 10th block of
    the OpenCLIP encoder; diffusers falls back to SD 1.x for everything it does not
    recognise). Refuses, in one line, a file that is not a Stable Diffusion checkpoint or is
    of a family answer-trt does not run."""
    header = check_safetensors(file)
    keys = [key for key in header if key != "__metadata__"]
    _check_parts(file, keys)
    model_type = _diffusers_model_type({key: _shape(header[key]) for key in keys})
    if model_type == "v1":  # diffusers' fallback: the text encoders tell
        if any(k.startswith("conditioner.embedders.1.model.") for k in keys) and \
                any(k.startswith("conditioner.embedders.0.transformer.") for k in keys):
            model_type = "xl_base"
        elif any(k.startswith("cond_stage_model.model.") for k in keys):
            model_type = "v2"
    if model_type in FAMILIES:
        return FAMILIES[model_type]
    what = UNSUPPORTED_FAMILIES.get(model_type, f"a {model_type!r} checkpoint (diffusers' name for its family)")
    raise UserInputError(f"{file} is {what}, which answer-trt does not run: it runs SD 1.x, SD 2.x and SDXL "
                         "text-to-image checkpoints")


def _shape(entry: Any) -> tuple[int, ...]:
    shape = entry.get("shape") if isinstance(entry, dict) else None
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        return ()
    return tuple(shape)


def _diffusers_model_type(shapes: dict[str, tuple[int, ...]]) -> str:
    """diffusers' ``infer_diffusers_model_type`` on the tensor shapes of a checkpoint (it reads
    only names and ``.shape``: stand-ins carry them, no tensor is read)."""
    import torch
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    sized = {key: SimpleNamespace(shape=torch.Size(shape)) for key, shape in shapes.items()}
    try:
        return str(infer_diffusers_model_type(sized))
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):  # a marker tensor of a strange shape
        return "v1"


def _check_parts(file: Path, keys: list[str]) -> None:
    """Refuse a file that lacks an LDM checkpoint's UNet, VAE or text encoder, naming what it
    looks like instead where that is plain (a LoRA, a diffusers component's weights)."""
    if len(keys) > TOO_LARGE_HEADER_KEYS:
        raise UserInputError(f"{file} lists {len(keys)} tensors, far more than any Stable Diffusion checkpoint: "
                             "pass the model's own checkpoint file")
    has_unet = any(k.startswith(UNET_PREFIX) for k in keys)
    has_vae = any(k.startswith(VAE_PREFIX) for k in keys)
    has_text = any(k.startswith(TEXT_PREFIXES) for k in keys)
    if has_unet and has_vae and has_text:
        return
    if not has_unet:
        sample = ", ".join(sorted(keys)[:2]) or "no tensors"
        if any(k.startswith(("lora_unet_", "lora_te", "lora.")) or ".lora_down." in k or ".lora_A." in k
               for k in keys):
            hint = "it looks like a LoRA adapter: pass it with --lora FILE[:SCALE] beside a --model"
        elif any(k.startswith(("down_blocks.", "encoder.down_blocks.", "text_model.")) for k in keys):
            hint = ("it looks like one component of a diffusers folder: pass the whole diffusers folder as "
                    "--model")
        elif any(k.startswith(("encoder.down.", "decoder.up.")) for k in keys):
            hint = "it looks like a VAE alone, not a whole model"
        else:
            hint = "pass a Stable Diffusion checkpoint (SD 1.x, SD 2.x or SDXL) or a diffusers folder"
        raise UserInputError(f"{file} is not a Stable Diffusion checkpoint: it holds no UNet tensors "
                             f"({UNET_PREFIX}*; its keys start like {sample}); {hint}")
    missing = [what for what, present in (("the VAE (first_stage_model.*)", has_vae),
                                          ("the text encoder (cond_stage_model.* or conditioner.embedders.*)",
                                           has_text)) if not present]
    raise UserInputError(f"{file} holds a Stable Diffusion UNet without {' and '.join(missing)}: answer-trt needs a "
                         "whole checkpoint (UNet, VAE and text encoder in one file); pass one, or a diffusers folder")


def family_shipped_names(family: Family) -> tuple[str, ...]:
    """The shipped config folders that fit ``family`` (SD 2.x: the v-prediction and the epsilon one)."""
    return (family.shipped, SD2_EPSILON) if family.model_type == "v2" else (family.shipped,)


def resolve_config(config: str | None, family: Family, file: Path, default: str | None = None) -> tuple[str, Path]:
    """The diffusers config folder for a ``family`` checkpoint: ``config`` (a local diffusers
    folder, a hub id fetched without weights, or a shipped name, ``answer-trt:sd1``) or, without
    one, ``default`` (the shipped configs for the family where that is None), which need no
    network and no Hugging Face cache. Returns the config as a rebuild names it (a hub id, a
    shipped name, or a local folder's absolute path) and its local folder. Refuses a folder
    that is not a diffusers pipeline folder, configs of the other family (SDXL vs SD
    1.x/2.x), and a hub id that can neither be fetched nor found in the cache (offline:
    ``HF_HUB_OFFLINE=1``), in one line naming ``--config``."""
    name = config if config is not None else (default or family.default_config)
    if not isinstance(name, str) or not name.strip():
        raise UserInputError(f"--config {name!r} names nothing: give a diffusers folder or a hub id (org/name)")
    path = Path(name).expanduser()
    shipped = shipped_name(name)
    if shipped is not None and not path.is_dir():
        fits = family_shipped_names(family)
        if shipped not in fits:
            raise UserInputError(f"--config {name} holds the configs of another family, and {file.name} is an "
                                 f"{family.label} checkpoint: give {' or '.join(SHIPPED_PREFIX + f for f in fits)}, "
                                 "or leave --config out")
        folder = family_folder(shipped)
    elif name.startswith(SHIPPED_PREFIX) and not path.exists():
        raise UserInputError(f"--config {name}: answer-trt ships no configs of that name: give one of "
                             f"{', '.join(SHIPPED_PREFIX + f for f in family_shipped_names(family))}, a diffusers "
                             "folder or a hub id")
    elif path.is_dir():
        folder = path.resolve()
    elif config is not None and (path.exists() or name.count("/") != 1):
        raise UserInputError(f"--config {name}: not a diffusers folder here and not a hub id (org/name): give the "
                             f"folder (or hub id) of a {family.label} diffusers model whose configs and tokenizer "
                             f"fit {file.name}")
    else:
        folder = _fetch_config(name, family, file)
    if not (folder / "model_index.json").is_file():
        raise UserInputError(f"--config {name}: {folder} has no model_index.json, so it is not a diffusers pipeline "
                             f"folder: give a {family.label} diffusers model folder (saved with save_pretrained) or "
                             "hub id")
    sdxl = (folder / "text_encoder_2").is_dir()
    if sdxl != (family.model_type == "xl_base"):
        held = "SDXL" if sdxl else "SD 1.x/2.x"
        raise UserInputError(f"--config {name} holds the configs of an {held} model, and {file.name} is an "
                             f"{family.label} checkpoint: give a {family.label} diffusers folder or hub id, or leave "
                             "--config out (the shipped configs)")
    return (str(folder) if path.is_dir() else name), folder


def _fetch_config(repo_id: str, family: Family, file: Path) -> Path:
    """The local snapshot of the configs and tokenizer of the hub repo ``repo_id`` (no
    weights): fetched, or from the Hugging Face cache when the hub cannot be reached or
    ``HF_HUB_OFFLINE`` is set (huggingface_hub's own fallback)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=CONFIG_PATTERNS))
    except Exception as exc:  # noqa: BLE001 - offline, no network, auth, unknown repo: one fix for all
        why = "the hub is offline (HF_HUB_OFFLINE)" if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in (
            "1", "true", "yes", "on") else f"it could not be fetched ({type(exc).__name__})"
        raise UserInputError(
            f"--config {repo_id}: {file.name} needs its configs, and {why} and it is not in the Hugging Face cache: "
            f"leave --config out (answer-trt's own {family.label} configs, no network), pass a local "
            f"{family.label} diffusers folder (its configs and tokenizer are used, not its weights), or run once "
            "with network access") from None


def config_sha256(folder: Path) -> str:
    """One digest over the config and tokenizer files of a diffusers folder (paths and
    contents; weights are left out: the single file brings them)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.suffix in CONFIG_SUFFIXES and p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def resolve_single_file(path: Path, config: str | None) -> SingleFile:
    """Check the checkpoint ``path`` (pickles refused, header whole, a Stable Diffusion
    checkpoint of a family answer-trt runs) and its configs, and hash both."""
    refuse_pickle(path)
    family = checkpoint_family(path)
    sha256 = file_sha256(path)
    default = None
    if config is None and family.model_type == "v2":
        default = SHIPPED_PREFIX + (family.shipped if sd2_predicts_v(path, sha256) else SD2_EPSILON)
    name, folder = resolve_config(config, family, path, default)
    header = check_safetensors(path)
    markers = tuple(key for key in MARKER_KEYS if key in header)
    return SingleFile(path.resolve(), sha256, family, name, folder, config_sha256(folder), markers)


def sd2_predicts_v(file: Path, sha256: str) -> bool:
    """Whether the SD 2.x checkpoint ``file`` (of content ``sha256``) predicts v (the 768
    models) rather than epsilon (the 512 ``-base`` ones): AUTOMATIC1111's test
    (``modules/sd_models_config.py``, ``is_using_v_parameterization_for_sd2``), run on the
    file's UNet in float32 with the shipped SD 2.x UNet config (``v_prediction_probe``): a
    mean output below -1 is v. Runs once per file (seconds, the UNet in float32: about 3.5 GB
    of memory); the answer is kept at ``<cache>/models/single-file/sd2-prediction/<sha256>.json``.
    A UNet that does not fit the SD 2.x config is one line naming ``--config``."""
    import json

    record = cache_root() / "models" / CONVERTED_FOLDER / PREDICTION_FOLDER / f"{sha256}.json"
    try:
        kept = json.loads(record.read_text())
        if isinstance(kept, dict) and kept.get("prediction_type") in ("v_prediction", "epsilon"):
            return bool(kept["prediction_type"] == "v_prediction")
    except (OSError, ValueError):
        pass
    quiet_libraries()
    import torch
    from diffusers import UNet2DConditionModel

    try:
        unet = UNet2DConditionModel.from_single_file(str(file), config=str(family_folder(FAMILIES["v2"].shipped)),
                                                     subfolder="unet", local_files_only=True,
                                                     torch_dtype=torch.float32)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - the boundary where a user's file meets diffusers' converter
        text = str(exc).strip().splitlines()
        line = f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__
        raise UserInputError(f"{file} could not be read as an SD 2.x UNet to tell v-prediction from epsilon "
                             f"({line}): pass --config {SHIPPED_PREFIX}sd2 (v-prediction, 768) or "
                             f"{SHIPPED_PREFIX}{SD2_EPSILON} (epsilon, 512), or the diffusers folder of the model "
                             "it was made from") from None
    predicts_v = v_prediction_probe(unet) < -1
    del unet
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        staging = record.with_name(f".{record.name}.{os.getpid()}")
        staging.write_text(json.dumps({"prediction_type": "v_prediction" if predicts_v else "epsilon"}))
        staging.replace(record)
    except OSError:  # a read-only cache: test again next time
        pass
    return predicts_v


def v_prediction_probe(unet: Any) -> float:
    """AUTOMATIC1111's probe of an SD 2.x UNet (a diffusers ``UNet2DConditionModel``): the mean
    of ``unet(x, 999, context) - x`` for ``x`` a 1x4x8x8 latent of 0.5 and ``context`` two
    tokens of 0.5 (width: the UNet's ``cross_attention_dim``), in the UNet's own dtype. A
    trained v-prediction UNet gives below -1, an epsilon one above."""
    import torch

    param = next(unet.parameters())
    x = torch.full((1, unet.config.in_channels, 8, 8), 0.5, dtype=param.dtype, device=param.device)
    context = torch.full((1, 2, unet.config.cross_attention_dim), 0.5, dtype=param.dtype, device=param.device)
    with torch.no_grad():
        out = unet(x, torch.tensor([999], device=param.device), encoder_hidden_states=context).sample
    return float((out - x).float().mean())


def converted_folder(checkpoint: SingleFile) -> Path:
    """Where the diffusers folder converted from ``checkpoint`` lives in the cache: named by
    the file's sha256 and one digest of the configs and the converting libraries' versions
    (a diffusers upgrade converts again, as it rebuilds engines)."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", checkpoint.file.stem)[:40] or "model"
    converter = hashlib.sha256(f"{checkpoint.config_sha256}\0{_converter_versions()}{checkpoint.marker_key}".encode()
                               ).hexdigest()
    return cache_root() / "models" / CONVERTED_FOLDER / f"{stem}-{checkpoint.sha256[:16]}-{converter[:12]}"


def _converter_versions() -> str:
    versions = []
    for name in ("diffusers", "transformers", "safetensors"):
        try:
            versions.append(f"{name}={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{name}=absent")
    return ",".join(versions)


def ensure_converted(checkpoint: SingleFile) -> Path:
    """The diffusers folder of ``checkpoint``, converted into the cache on first use
    (``convert`` into a staging folder beside it, then one rename; concurrent first users
    both convert and the second rename finds the folder there) and reused after."""
    folder = converted_folder(checkpoint)
    if (folder / "model_index.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(folder.parent)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=folder.parent))
    try:
        convert(checkpoint, staging)
        try:
            staging.rename(folder)
        except OSError:  # another process finished first
            if not (folder / "model_index.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


STAGING_PREFIX = ".converting-"


def remove_stale_staging(parent: Path, older_than_s: float = STALE_TEMPORARY_S) -> list[Path]:
    """Remove what a killed conversion left in ``parent`` (answer-trt's own cache folder
    for converted checkpoints): ``.converting-*`` folders untouched for ``older_than_s``.
    Nothing else lives there, so nothing else is touched. Returns what was removed."""
    removed = []
    now = time.time()
    for leftover in parent.glob(STAGING_PREFIX + "*"):
        try:
            if leftover.is_dir() and not leftover.is_symlink() and now - leftover.stat().st_mtime > older_than_s:
                shutil.rmtree(leftover)
                removed.append(leftover)
        except OSError:
            continue
    return removed


def convert(checkpoint: SingleFile, out: Path) -> None:
    """Convert ``checkpoint`` into the diffusers folder ``out`` with diffusers'
    ``from_single_file`` (configs and tokenizer from ``checkpoint.config_path``, nothing
    fetched) and ``save_pretrained``, keeping the file's own floating-point precision. What
    diffusers raises about a file it cannot convert (tensors missing or of the wrong shape
    for the configs, a damaged file) becomes one line naming the file and ``--config``."""
    quiet_libraries()
    import diffusers
    import torch

    pipeline_class = getattr(diffusers, checkpoint.family.pipeline)
    options = from_single_file_options(checkpoint)
    options["torch_dtype"] = _stored_dtype(checkpoint.file, torch)
    try:
        pipeline = pipeline_class.from_single_file(str(checkpoint.file), **options)
        if checkpoint.markers:
            pipeline.scheduler = type(pipeline.scheduler).from_config(pipeline.scheduler.config,
                                                                      **checkpoint.scheduler_options())
        pipeline.save_pretrained(out, safe_serialization=True)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - the boundary where a user's file meets diffusers' converter
        text = str(exc).strip().splitlines()
        line = f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__
        raise UserInputError(f"{checkpoint.file} could not be converted with the {checkpoint.family.label} configs of "
                             f"{checkpoint.config} ({line}): pass --config with the diffusers folder or hub id of "
                             "the model this checkpoint was made from, or re-download the file") from None


def from_single_file_options(checkpoint: SingleFile) -> dict[str, Any]:
    """The options ``convert`` passes to diffusers' ``from_single_file`` (besides the dtype):
    the local config folder and ``local_files_only`` (nothing is fetched), no safety checker."""
    options: dict[str, Any] = {"config": str(checkpoint.config_path), "local_files_only": True}
    if checkpoint.family.pipeline == "StableDiffusionPipeline":
        options.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    return options


def _stored_dtype(file: Path, torch: Any) -> Any:
    """The floating-point dtype most of the UNet's tensors are stored in (fp16 for most shared
    checkpoints): the converted folder keeps it (same size on disk, same values)."""
    header = check_safetensors(file)
    counts: dict[str, int] = {}
    for key, entry in header.items():
        if key.startswith(UNET_PREFIX) and isinstance(entry, dict):
            counts[str(entry.get("dtype"))] = counts.get(str(entry.get("dtype")), 0) + 1
    dtypes = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}
    stored = max((n, d) for d, n in counts.items() if d in dtypes)[1] if any(d in dtypes for d in counts) else "F32"
    return dtypes[stored]
