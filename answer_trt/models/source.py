"""Resolve a MODEL argument (a built-in name, a local diffusers folder, a single-file
checkpoint, or a hub id) to a local diffusers folder, and load its components through
``from_pretrained``. A single file is converted into a diffusers folder in the cache once
(``models/single_file.py``).

Built-in names: ``tiny``, the default, is a small model trained on the synthetic shapes
(``synthetic/train.py``) whose fp16 weights ship inside the package; ``tiny-random``,
``tiny-sd21`` and ``tiny-sdxl`` have random weights and are built in code on first use.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from answer_trt.cache import cache_root
from answer_trt.errors import UserInputError
from answer_trt.files import tree_sha256
from answer_trt.manifest import FAST_TOKENIZER_FILE, TOKENIZER_FOLDERS, TokenizerFiles, tokenizer_files
from answer_trt.models import quiet_libraries, tiny
from answer_trt.models.info import RESAVE, is_sdxl, scheduler_config
from answer_trt.models.lora import LoraFile, fuse_loras
from answer_trt.models.single_file import (
    CHECKPOINT_SUFFIXES,
    SingleFile,
    ensure_converted,
    is_single_file,
    resolve_single_file,
)
from answer_trt.models.vae_file import VaeFile, load_vae
from answer_trt.models.weight_files import check_variant, check_weights, component_variants

REQUIRED_SUBFOLDERS = ("tokenizer", "text_encoder", "unet", "vae", "scheduler")
DEFAULT_MODEL = "tiny"
SHIPPED_MODELS = {DEFAULT_MODEL: Path(__file__).parent / "weights" / "tiny"}
BUILT_IN_MODELS = (*SHIPPED_MODELS, *tiny.BUILDERS)


@dataclass(frozen=True)
class ModelSource:
    """A model on local disk: ``name`` as the user gave it, ``path`` its diffusers folder,
    ``variant`` the weights variant it loads (``models/weight_files.py``; None: plain),
    ``checkpoint`` the single-file checkpoint ``path`` was converted from (None: a folder)."""

    name: str
    path: Path
    variant: str | None = None
    checkpoint: SingleFile | None = None

    def content_hash(self) -> str:
        """sha256 naming the weights and configs: of the folder's files, or for a single file
        of the file and its configs (``SingleFile.model_hash``)."""
        return self.checkpoint.model_hash if self.checkpoint is not None else tree_sha256(self.path)


def resolve_model(model: str, variant: str | None = None, config: str | None = None) -> ModelSource:
    """The model folder ``model`` names (downloaded from the hub where it is a hub id, converted
    into the cache where it is a single-file checkpoint, with the configs of ``config``), with
    its weights checked: of ``variant`` where one is asked for, else of the one variant its
    weights are stored as, if they are stored only so (``weight_files.folder_variant``)."""
    if variant is not None:
        check_variant(variant)
    if not isinstance(model, str) or not model.strip():
        raise UserInputError(f"--model {model!r} names no model: give a diffusers folder, a single-file "
                             ".safetensors checkpoint, a hub id or a built-in name (tiny, tiny-random, tiny-sd21, "
                             "tiny-sdxl)")
    path = Path(model).expanduser()
    if model not in BUILT_IN_MODELS and is_single_file(path):
        return _single_file(model, path, variant, config)
    if path.suffix.lower() in CHECKPOINT_SUFFIXES and not path.exists():
        raise UserInputError(f"--model {model}: no such file (a single-file checkpoint is given by its path)")
    if config is not None:
        raise UserInputError(f"--config {config} gives the configs of a single-file checkpoint, and --model {model} "
                             "is not one (a diffusers folder, hub id or built-in name brings its own): drop --config")
    if model in SHIPPED_MODELS:
        return _checked(model, shipped_model(model), variant)
    if model in tiny.BUILDERS:
        return _checked(model, ensure_tiny_model(model), variant)
    if path.is_dir():
        missing = [sub for sub in REQUIRED_SUBFOLDERS if not (path / sub).is_dir()]
        if missing:
            raise UserInputError(
                f"{path} is not a diffusers model folder (missing {', '.join(missing)}): pass a folder saved "
                "with save_pretrained, a hub id, or a built-in name (" + ", ".join(BUILT_IN_MODELS) + ")"
            )
        return _checked(model, path.resolve(), variant)
    if path.exists():
        raise UserInputError(
            f"model {model!r} is a file, not a folder or a .safetensors checkpoint: pass the diffusers model folder "
            "(with unet/, vae/, ...), a single-file .safetensors checkpoint, a hub id, or a built-in name "
            f"({', '.join(BUILT_IN_MODELS)})"
        )
    if model.count("/") != 1:
        raise UserInputError(
            f"model {model!r} not found: pass a diffusers model folder, a hub id (org/name), or a built-in name "
            f"({', '.join(BUILT_IN_MODELS)})"
        )
    return _checked(model, _download(model), variant)


def _checked(name: str, path: Path, variant: str | None) -> ModelSource:
    return ModelSource(name, path, check_weights(path, variant))


def _single_file(name: str, path: Path, variant: str | None, config: str | None) -> ModelSource:
    """A single-file checkpoint, converted into a diffusers folder in the cache (once per
    file content and configs: ``models/single_file.py``)."""
    if variant is not None:
        raise UserInputError(f"--variant {variant} picks among a diffusers folder's weights files, and {path} is a "
                             "single-file checkpoint with one set of weights: drop --variant")
    checkpoint = resolve_single_file(path, config)
    folder = ensure_converted(checkpoint)
    try:
        check_weights(folder, None)
    except UserInputError:  # a converted folder damaged since (it is the cache's own): convert again
        shutil.rmtree(folder, ignore_errors=True)
        folder = ensure_converted(checkpoint)
        check_weights(folder, None)
    return ModelSource(name, folder, None, checkpoint)


# Subfolders whose config file marks a folder as a diffusers model (or a part of one).
MODEL_CONFIGS = ("unet/config.json", "text_encoder/config.json", "text_encoder_2/config.json", "vae/config.json")


def model_folder_evidence(path: Path) -> str | None:
    """Why ``path`` looks like a diffusers model folder (``"model_index.json"``, or a
    component config such as ``"unet/config.json"``), or None where it does not."""
    for marker in ("model_index.json", *MODEL_CONFIGS):
        if (path / marker).exists():
            return marker
    return None


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.txt", "*.safetensors", "*.model"]))
    except Exception as exc:  # network, auth, or unknown repo: all are fixed the same way
        raise UserInputError(
            f"could not fetch model {repo_id!r} from the hub ({type(exc).__name__}): download it elsewhere and "
            "pass the local folder"
        ) from None


def shipped_model(name: str = DEFAULT_MODEL) -> Path:
    """The folder of a model whose weights ship inside the package."""
    folder = SHIPPED_MODELS[name]
    if not (folder / "model_index.json").is_file():
        raise UserInputError(
            f"the weights of the built-in `{name}` model are missing from this install ({folder}): reinstall "
            "answer-trt, or retrain them with `python -m answer_trt.synthetic.train --out " + str(folder) + "`"
        )
    return folder


def ensure_tiny_model(name: str = tiny.RANDOM_NAME) -> Path:
    """Build a random-weight built-in model into the cache once (atomically: temp folder
    + rename)."""
    folder = cache_root() / "models" / f"{name}-v{tiny.TINY_VERSION}"
    if (folder / "model_index.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=folder.parent))
    try:
        tiny.build_tiny_model(staging, name)
        try:
            staging.rename(folder)
        except OSError:  # another process finished first
            if not (folder / "model_index.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


@dataclass(frozen=True)
class LoadedModel:
    """The torch components of a diffusers SD-family folder (SDXL: with the second
    tokenizer and text encoder)."""

    tokenizers: tuple[Any, ...]
    text_encoder: Any
    unet: Any
    vae: Any
    scheduler_config: dict[str, Any]
    text_encoder_2: Any = None


def load_model(path: Path, variant: str | None = None, loras: Sequence[LoraFile] = (),
               vae: VaeFile | None = None) -> LoadedModel:
    """The components of the model folder ``path``, each from the weights variant
    ``component_variants(path, variant)`` picks (as diffusers' ``from_pretrained(variant=...)``
    would), in float32 and eval mode, with the LoRA adapters ``loras`` fused into their
    weights (``models/lora.py``), and ``vae`` (``--vae``, ``models/vae_file.py``) in place of its
    own VAE. Raises ``UserInputError`` for a component whose files do not
    load or do not cover its architecture (``_load``), or an adapter that does not fit."""
    quiet_libraries()
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    sdxl = is_sdxl(path)
    variants = component_variants(path, variant)

    def options(sub: str) -> dict[str, Any]:
        # Always fp32, whatever the saved dtype (transformers 5 would keep fp16 weights fp16):
        # the export stage and the torch backend choose the precision themselves.
        # output_loading_info=True: each loader also says which tensors it did not find (left at
        # their random initial values) or found without a place for them; _load refuses both.
        # low_cpu_mem_usage=False for diffusers' models: with accelerate installed (peft brings
        # it) diffusers 0.30 otherwise raises on missing tensors with an empty list of names.
        text = sub.startswith("text_encoder")
        dtype = {"dtype": torch.float32} if text else {"torch_dtype": torch.float32, "low_cpu_mem_usage": False}
        return {**dtype, "output_loading_info": True, **({"variant": variants[sub]} if variants.get(sub) else {})}

    model = LoadedModel(
        tokenizers=load_tokenizers(path),
        text_encoder=_load(path / "text_encoder",
                           lambda p: CLIPTextModel.from_pretrained(p, **options("text_encoder"))),
        text_encoder_2=(
            _load(path / "text_encoder_2",
                  lambda p: CLIPTextModelWithProjection.from_pretrained(p, **options("text_encoder_2")))
            if sdxl else None
        ),
        unet=_load(path / "unet", lambda p: UNet2DConditionModel.from_pretrained(p, **options("unet"))),
        vae=(_load(path / "vae", lambda p: AutoencoderKL.from_pretrained(p, **options("vae"))) if vae is None
             else load_vae(vae, path)),
        scheduler_config=scheduler_config(path),  # the class diffusers' pipeline would pick
    )
    fuse_loras(loras, unet=model.unet, vae=model.vae, text_encoder=model.text_encoder,
               text_encoder_2=model.text_encoder_2)
    return model


# Tensors a checkpoint may lack or carry without harm: CLIP's position_ids is a buffer that
# the model computes itself (older checkpoints saved it, newer models do not load it).
HARMLESS_TENSORS = ("position_ids",)
SHOWN_NAMES = 3


def _load(folder: Path, load: Any) -> Any:
    """``load(folder)`` (a ``from_pretrained`` with ``output_loading_info=True``) in eval
    mode. This is the boundary where a user's files meet the libraries' loaders: whatever
    they raise about a broken component (a config that does not fit its weights, a corrupt
    file) becomes one line naming the folder, and so do weights that leave tensors of the
    model missing (the libraries would start those from random values and only warn) or
    hold tensors the model has no place for (weights of another architecture)."""
    try:
        model, info = load(folder)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - see the docstring
        raise UserInputError(f"{folder} could not be loaded ({_first_line(exc)}): {RESAVE}") from None
    check_loading_info(folder, info)
    return model.eval()


def check_loading_info(folder: Path, info: dict[str, Any]) -> None:
    """Refuse a component whose weights do not match its architecture exactly, in one line
    naming the folder, the count and the first few tensor names."""
    problems = []
    for key, what in (("missing_keys", "missing from the weights"),
                      ("unexpected_keys", "in the weights but not in the model"),
                      ("mismatched_keys", "of the wrong shape")):
        names = sorted(_tensor_name(k) for k in info.get(key) or ())
        names = [n for n in names if not n.endswith(HARMLESS_TENSORS)]
        if names:
            shown = ", ".join(names[:SHOWN_NAMES]) + (", ..." if len(names) > SHOWN_NAMES else "")
            problems.append(f"{len(names)} tensor{'s' if len(names) != 1 else ''} {what} ({shown})")
    errors = [str(e).strip().splitlines()[0] for e in info.get("error_msgs") or () if str(e).strip()]
    if errors:
        problems.append(f"loading error: {errors[0][:300]}")
    if problems:
        raise UserInputError(f"{folder}: the weights do not match the {folder.name} model: " + "; ".join(problems)
                             + f"; answer-trt does not run a model with tensors at random values: {RESAVE}")


def _tensor_name(key: Any) -> str:
    # mismatched_keys are (name, saved shape, model shape) tuples
    return str(key[0] if isinstance(key, tuple) and key else key)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else ""
    return f"{type(exc).__name__}: {line[:300]}" if line else type(exc).__name__


def load_engine_tokenizers(folder: Path, files: Iterable[str]) -> tuple[Any, ...]:
    """The CLIP tokenizer(s) of an engines folder, each opened as ``tokenizer_files`` says
    (the `tokenizers` file the build wrote, through ``models/fast_tokenizer.py`` with no
    transformers import; transformers for folders built before that file existed).
    ``files`` are the manifest's checksummed files: a tokenizer that would open a file
    outside them is refused (one line: rebuild), so nothing unchecked is ever read."""
    listed = set(files)
    layouts = [tokenizer_files(folder, sub) for sub in TOKENIZER_FOLDERS if (folder / sub).is_dir()]
    for layout in layouts:
        unlisted = [rel for rel in layout.files if rel not in listed]
        if not layout.reader or unlisted:
            what = f"has {unlisted[0]} without a checksum" if unlisted else layout.describe()
            raise UserInputError(f"{folder / layout.sub} {what}: rebuild the engines folder with `answer-trt build`")
    return tuple(open_tokenizer(folder, layout) for layout in layouts)


def load_tokenizers(path: Path) -> tuple[Any, ...]:
    """The model's CLIP tokenizer(s), from ``path/tokenizer`` (and ``path/tokenizer_2``), in
    whichever layout transformers saved them (``manifest.tokenizer_files``)."""
    tokenizers = []
    for sub in TOKENIZER_FOLDERS:
        if not (path / sub).is_dir():
            continue
        layout = tokenizer_files(path, sub)
        if not layout.reader:
            raise UserInputError(f"{path / sub} {layout.describe()}: {RESAVE}")
        tokenizers.append(open_tokenizer(path, layout))
    return tuple(tokenizers)


def open_tokenizer(root: Path, layout: TokenizerFiles) -> Any:
    """Open the tokenizer ``layout`` describes, with the reader it names."""
    folder = root / layout.sub
    if layout.reader == "answer-trt":
        from answer_trt.models.fast_tokenizer import FastClipTokenizer

        return FastClipTokenizer.from_file(folder / FAST_TOKENIZER_FILE)
    import transformers

    # transformers 5 has one CLIP tokenizer class (CLIPTokenizerFast is an alias, where kept).
    cls = transformers.CLIPTokenizer if layout.reader == "slow" else getattr(
        transformers, "CLIPTokenizerFast", transformers.CLIPTokenizer)
    return _load_tokenizer(folder, cls)


def _load_tokenizer(folder: Path, cls: Any) -> Any:
    try:
        return cls.from_pretrained(folder)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - a user's broken tokenizer files, as in _load
        raise UserInputError(f"{folder} could not be loaded as a CLIP tokenizer ({_first_line(exc)}): "
                             f"{RESAVE}") from None
