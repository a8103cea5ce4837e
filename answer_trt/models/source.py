"""Resolve a MODEL argument (``tiny``, a local diffusers folder, or a hub id) to a
local diffusers folder, and load its components through ``from_pretrained``."""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from answer_trt.cache import cache_root
from answer_trt.errors import UserInputError
from answer_trt.files import tree_sha256
from answer_trt.models import quiet_libraries, tiny
from export.iospec import ModelDims

REQUIRED_SUBFOLDERS = ("tokenizer", "text_encoder", "unet", "vae", "scheduler")


@dataclass(frozen=True)
class ModelSource:
    """A model on local disk: ``name`` as the user gave it, ``path`` its diffusers folder."""

    name: str
    path: Path

    def content_hash(self) -> str:
        return tree_sha256(self.path)


def resolve_model(model: str) -> ModelSource:
    if model == tiny.TINY_NAME:
        return ModelSource(model, ensure_tiny_model())
    path = Path(model).expanduser()
    if path.is_dir():
        missing = [sub for sub in REQUIRED_SUBFOLDERS if not (path / sub).is_dir()]
        if missing:
            raise UserInputError(
                f"{path} is not a diffusers model folder (missing {', '.join(missing)}): pass a folder saved "
                "with save_pretrained, a hub id, or `tiny`"
            )
        return ModelSource(model, path.resolve())
    if path.exists() or model.count("/") != 1:
        raise UserInputError(f"model {model!r} not found: pass a diffusers model folder, a hub id (org/name), or `tiny`")
    return ModelSource(model, _download(model))


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.txt", "*.safetensors", "*.model"]))
    except Exception as exc:  # network, auth, or unknown repo: all are fixed the same way
        raise UserInputError(
            f"could not fetch model {repo_id!r} from the hub ({type(exc).__name__}): download it elsewhere and "
            "pass the local folder"
        ) from None


def ensure_tiny_model() -> Path:
    """Build the tiny model into the cache once (atomically: temp folder + rename)."""
    folder = cache_root() / "models" / f"{tiny.TINY_NAME}-v{tiny.TINY_VERSION}"
    if (folder / "model_index.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=folder.parent))
    try:
        tiny.build_tiny_model(staging)
        try:
            staging.rename(folder)
        except OSError:  # another process finished first
            if not (folder / "model_index.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def read_dims(path: Path) -> ModelDims:
    """The sizes the IO specs need, read from the model's config files (no weights loaded)."""

    def config(sub: str, name: str = "config.json") -> dict[str, Any]:
        return dict(json.loads((path / sub / name).read_text()))

    text, unet, vae = config("text_encoder"), config("unet"), config("vae")
    max_length = config("tokenizer", "tokenizer_config.json").get("model_max_length")
    if not isinstance(max_length, int) or max_length > text["max_position_embeddings"]:
        max_length = int(text["max_position_embeddings"])
    return ModelDims(
        text_max_length=max_length,
        text_hidden_size=int(text["hidden_size"]),
        latent_channels=int(unet["in_channels"]),
        vae_scale_factor=2 ** (len(vae["block_out_channels"]) - 1),
        default_latent_size=int(unet["sample_size"]),
    )


@dataclass(frozen=True)
class LoadedModel:
    """The torch components of a diffusers SD-family folder."""

    tokenizer: Any
    text_encoder: Any
    unet: Any
    vae: Any
    scheduler_config: dict[str, Any]


def load_model(path: Path) -> LoadedModel:
    quiet_libraries()
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer


    return LoadedModel(
        tokenizer=CLIPTokenizer.from_pretrained(path / "tokenizer"),
        text_encoder=CLIPTextModel.from_pretrained(path / "text_encoder").eval(),
        unet=UNet2DConditionModel.from_pretrained(path / "unet").eval(),
        vae=AutoencoderKL.from_pretrained(path / "vae").eval(),
        scheduler_config=json.loads((path / "scheduler" / "scheduler_config.json").read_text()),
    )
