"""manifest.json: what an engines folder holds, built from what, for what.

The build writes it last (atomically); loading reads it first and checks every
listed file against its sha256, so a folder never passes for something it is not.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from answer_trt.errors import UserInputError
from answer_trt.files import sha256_file, write_text_atomic
from answer_trt.models.info import ModelInfo
from export.iospec import ComponentSpec, ModelDims, Profile, SizeRange

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 2


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

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["format"] = MANIFEST_FORMAT
        data["components"] = {
            name: {"file": e.file, "spec": e.spec.to_json(), "profile": {k: list(v) for k, v in e.profile.items()}}
            for name, e in self.components.items()
        }
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        if data.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"manifest format {data.get('format')!r}, this answer-trt reads {MANIFEST_FORMAT}")
        fields = {k: v for k, v in data.items() if k != "format"}
        info = dict(data["info"])
        info["dims"] = ModelDims(**info["dims"])
        fields["info"] = ModelInfo(**info)
        fields["height"], fields["width"] = SizeRange(**data["height"]), SizeRange(**data["width"])
        fields["components"] = {
            name: ComponentEntry(
                e["file"], ComponentSpec.from_json(e["spec"]), {k: tuple(v) for k, v in e["profile"].items()}
            )
            for name, e in data["components"].items()
        }
        return cls(**fields)

    def rebuild_command(self, folder: Path) -> str:
        return f"answer-trt build --model {self.model_name} --out {folder} --force"


def write_manifest(folder: Path, manifest: Manifest) -> None:
    write_text_atomic(folder / MANIFEST_NAME, json.dumps(manifest.to_json(), indent=2, sort_keys=True) + "\n")


def read_manifest(folder: Path) -> Manifest:
    """Parse ``folder/manifest.json``; a missing or unreadable one is a user error."""
    if not folder.is_dir():
        raise UserInputError(f"engines folder {folder} does not exist: build it with `answer-trt build --out {folder}`")
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise UserInputError(f"{folder} has no {MANIFEST_NAME}: build it with `answer-trt build --out {folder}`")
    try:
        return Manifest.from_json(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as exc:
        raise UserInputError(f"{path} is not a manifest this answer-trt can read ({exc}): rebuild with --force") from None


def mismatched_files(folder: Path, manifest: Manifest) -> list[str]:
    """Files listed in the manifest that are missing or differ from their sha256."""
    return [
        rel
        for rel, digest in manifest.files.items()
        if not (folder / rel).is_file() or sha256_file(folder / rel) != digest
    ]


def verify_files(folder: Path, manifest: Manifest) -> None:
    bad = mismatched_files(folder, manifest)
    if bad:
        raise UserInputError(
            f"{folder}: {', '.join(bad)} missing or not matching the checksum in {MANIFEST_NAME}: "
            f"rebuild with `{manifest.rebuild_command(folder)}`"
        )
