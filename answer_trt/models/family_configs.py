"""The configs and tokenizers of the Stable Diffusion families, shipped inside the package, so
that a single-file checkpoint converts with no model hub and no Hugging Face cache
(``models/single_file.py``).

``families/<name>/`` holds one diffusers-layout config folder per family, without weights:
``model_index.json``, ``unet/config.json``, ``vae/config.json``, ``text_encoder(_2)/config.json``,
``scheduler/scheduler_config.json`` and ``tokenizer(_2)/tokenizer_config.json`` +
``special_tokens_map.json``. The values are the published architectures' (the diffusers
folders ``stable-diffusion-v1-5/stable-diffusion-v1-5``, ``stabilityai/stable-diffusion-2-1``,
``stabilityai/stable-diffusion-2-1-base`` and ``stabilityai/stable-diffusion-xl-base-1.0``):

- ``sd1``: SD 1.x, CLIP ViT-L/14, PNDM, epsilon, 512 px.
- ``sd2``: SD 2.x 768-v, OpenCLIP ViT-H/14 (its 23 first layers, as SD 2 uses the
  penultimate one), DDIM, ``v_prediction``, 768 px.
- ``sd2-base``: SD 2.x 512-base, the same networks, ``epsilon``, 512 px.
- ``sdxl``: SDXL base 1.0, CLIP ViT-L/14 + OpenCLIP ViT-bigG/14, Euler, epsilon, 1024 px.

Tokenizers: all four use CLIP's byte-level BPE; the OpenCLIP ones pad with ``!`` instead of
the end token (their ``tokenizer_config.json``). Only the merges ship:
``families/clip_merges.txt.gz`` (208 KB), the first 48,894 merges of CLIP's
``bpe_simple_vocab_16e6.txt.gz`` (lines 1 to 48,894, the ones CLIP uses; OpenAI CLIP, MIT
license). The vocabulary is derived from them (``tokenizer_files.clip_vocab``: bytes, bytes
with ``</w>``, the merges joined, the two special tokens: 49,408 tokens), and ``vocab.json`` +
``merges.txt`` (1.6 MB a folder) are written at first use, when the family's folder is
expanded into the cache: ``<cache>/models/family-configs/<name>-<digest>/``, named by a digest
of the shipped files, so a changed package expands again.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import tempfile
import time
from pathlib import Path

from answer_trt.cache import cache_root
from answer_trt.files import STALE_TEMPORARY_S, sha256_file
from answer_trt.models.tokenizer_files import write_clip_bpe

FAMILIES_DIR = Path(__file__).resolve().parent / "families"
MERGES_FILE = "clip_merges.txt.gz"
SHIPPED = ("sd1", "sd2", "sd2-base", "sdxl")
# How a shipped folder is named as a --config value and in a manifest ("answer-trt:sd2-base").
SHIPPED_PREFIX = "answer-trt:"
EXPANDED_FOLDER = "family-configs"  # under <cache>/models/
TOKENIZER_FOLDERS = ("tokenizer", "tokenizer_2")
STAGING_PREFIX = ".expanding-"


def shipped_name(value: str) -> str | None:
    """The shipped folder a ``--config`` value names (``answer-trt:sd1`` -> ``sd1``), or None
    where it names none."""
    if value.startswith(SHIPPED_PREFIX) and value[len(SHIPPED_PREFIX):] in SHIPPED:
        return value[len(SHIPPED_PREFIX):]
    return None


def _shipped_files(name: str) -> list[Path]:
    return sorted(p for p in (FAMILIES_DIR / name).rglob("*") if p.is_file())


def shipped_digest(name: str) -> str:
    """sha256 over the shipped folder ``name``'s files (paths and contents) and the merges."""
    digest = hashlib.sha256()
    for path in [*_shipped_files(name), FAMILIES_DIR / MERGES_FILE]:
        digest.update(path.relative_to(FAMILIES_DIR).as_posix().encode() + b"\0")
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def clip_merges() -> list[tuple[str, str]]:
    """CLIP's 48,894 BPE merges, in rank order, from the shipped ``clip_merges.txt.gz``."""
    lines = gzip.decompress((FAMILIES_DIR / MERGES_FILE).read_bytes()).decode("utf-8").splitlines()
    pairs = [line.split(" ") for line in lines[1:] if line]  # lines[0]: "#version: 0.2"
    return [(pair[0], pair[1]) for pair in pairs]


def family_folder(name: str) -> Path:
    """The shipped config folder ``name`` (``SHIPPED``) as a whole diffusers config folder
    with its tokenizers' ``vocab.json`` and ``merges.txt``: expanded into the cache once
    (into a staging folder, then one rename; a concurrent first user's rename wins) and
    reused after. Raises ``KeyError`` for a name not shipped."""
    if name not in SHIPPED:
        raise KeyError(name)
    target = cache_root() / "models" / EXPANDED_FOLDER / f"{name}-{shipped_digest(name)[:16]}"
    if (target / "model_index.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(target.parent)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=target.parent))
    try:
        shutil.copytree(FAMILIES_DIR / name, staging, dirs_exist_ok=True)
        merges = clip_merges()
        for sub in TOKENIZER_FOLDERS:
            if (staging / sub).is_dir():
                write_clip_bpe(staging / sub, merges)
        if target.exists():  # damaged (folders appear whole, by one rename): replace it
            shutil.rmtree(target, ignore_errors=True)
        try:
            staging.rename(target)
        except OSError:  # another process finished first
            if not (target / "model_index.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _remove_stale_staging(parent: Path) -> None:
    """Remove what a killed expansion left in ``parent`` (answer-trt's own folder): staging
    folders untouched for ``STALE_TEMPORARY_S``."""
    now = time.time()
    for leftover in parent.glob(STAGING_PREFIX + "*"):
        try:
            if leftover.is_dir() and not leftover.is_symlink() and now - leftover.stat().st_mtime > STALE_TEMPORARY_S:
                shutil.rmtree(leftover)
        except OSError:
            continue
