"""Resolve a MODEL argument (a built-in name, a local diffusers folder, or a hub id) to
a local diffusers folder, and load its components through ``from_pretrained``.

Built-in names: ``tiny``, the default, is a small model trained on the synthetic shapes
(``synthetic/train.py``) whose fp16 weights ship inside the package; ``tiny-random``,
``tiny-sd21`` and ``tiny-sdxl`` have random weights and are built in code on first use.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from answer_trt.cache import cache_root
from answer_trt.errors import UserInputError
from answer_trt.files import tree_sha256
from answer_trt.manifest import TOKENIZER_FOLDERS
from answer_trt.models import quiet_libraries, tiny
from answer_trt.models.info import config_json, is_sdxl

REQUIRED_SUBFOLDERS = ("tokenizer", "text_encoder", "unet", "vae", "scheduler")
DEFAULT_MODEL = "tiny"
SHIPPED_MODELS = {DEFAULT_MODEL: Path(__file__).parent / "weights" / "tiny"}
BUILT_IN_MODELS = (*SHIPPED_MODELS, *tiny.BUILDERS)


@dataclass(frozen=True)
class ModelSource:
    """A model on local disk: ``name`` as the user gave it, ``path`` its diffusers folder."""

    name: str
    path: Path

    def content_hash(self) -> str:
        return tree_sha256(self.path)


def resolve_model(model: str) -> ModelSource:
    if model in SHIPPED_MODELS:
        return ModelSource(model, shipped_model(model))
    if model in tiny.BUILDERS:
        return ModelSource(model, ensure_tiny_model(model))
    path = Path(model).expanduser()
    if path.is_dir():
        missing = [sub for sub in REQUIRED_SUBFOLDERS if not (path / sub).is_dir()]
        if missing:
            raise UserInputError(
                f"{path} is not a diffusers model folder (missing {', '.join(missing)}): pass a folder saved "
                "with save_pretrained, a hub id, or a built-in name (" + ", ".join(BUILT_IN_MODELS) + ")"
            )
        return ModelSource(model, path.resolve())
    if path.exists() or model.count("/") != 1:
        raise UserInputError(
            f"model {model!r} not found: pass a diffusers model folder, a hub id (org/name), or a built-in name "
            f"({', '.join(BUILT_IN_MODELS)})"
        )
    return ModelSource(model, _download(model))


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
            "answer-trt, or retrain them with `python -m synthetic.train --out " + str(folder) + "`"
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


def load_model(path: Path) -> LoadedModel:
    quiet_libraries()
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    sdxl = is_sdxl(path)
    # Always fp32, whatever the saved dtype (transformers 5 would keep fp16 weights fp16):
    # the export stage and the torch backend choose the precision themselves.
    fp32 = torch.float32
    return LoadedModel(
        tokenizers=load_tokenizers(path),
        text_encoder=CLIPTextModel.from_pretrained(path / "text_encoder", dtype=fp32).eval(),
        text_encoder_2=(
            CLIPTextModelWithProjection.from_pretrained(path / "text_encoder_2", dtype=fp32).eval() if sdxl else None
        ),
        unet=UNet2DConditionModel.from_pretrained(path / "unet", torch_dtype=fp32).eval(),
        vae=AutoencoderKL.from_pretrained(path / "vae", torch_dtype=fp32).eval(),
        scheduler_config=config_json(path, "scheduler", "scheduler_config.json"),
    )


def load_tokenizers(path: Path) -> tuple[Any, ...]:
    """The model's CLIP tokenizer(s), from ``path/tokenizer`` (and ``path/tokenizer_2``)."""
    from transformers import CLIPTokenizer

    return tuple(CLIPTokenizer.from_pretrained(path / sub) for sub in TOKENIZER_FOLDERS if (path / sub).is_dir())
