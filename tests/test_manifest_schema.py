"""The manifest's JSON schema (pydantic, answer_trt/manifest.py): each kind of wrong value
is refused in one line that names the field (tests/test_faults.py runs the same through
the CLI)."""

from __future__ import annotations

import copy
import json

import pytest

from answer_trt.manifest import MANIFEST_NAME, Manifest, ManifestError, SessionChoice


@pytest.fixture(scope="module")
def data(engines_dir):
    return json.loads((engines_dir / MANIFEST_NAME).read_text())


@pytest.mark.parametrize("change, message", [
    (lambda d: d["files"].update({"/etc/passwd": "0" * 64}), "files entry is an absolute path ('/etc/passwd')"),
    (lambda d: d["files"].update({"a.bin": 5}), "files.a.bin must be a string, not an integer 5"),
    (lambda d: d["info"]["dims"].update(latent_channels=-4),
     "info.dims.latent_channels is -4, outside the allowed range (at least 1)"),
    (lambda d: d["info"]["dims"].update(latent_channels=2**40), "(at most 2147483647)"),
    (lambda d: d["components"]["unet"]["spec"]["inputs"].clear(),
     "components.unet.spec.inputs has 0 items, fewer than 1"),
    (lambda d: d["components"]["unet"]["spec"]["inputs"][0].update(shape=[1, 4.0]),
     "components.unet.spec.inputs[0].shape[1] must be an integer >= 1 or a symbol name, not a number 4.0"),
    (lambda d: d.update(session={"intra_op_threads": "2", "unet_call_ms": {}}),
     "session.intra_op_threads must be an integer, not a string '2'"),
    (lambda d: d.update(versions=[]), "versions must be a JSON object, not a list"),
    (lambda d: d["info"].update(zero_empty_negative=1), "info.zero_empty_negative must be true or false"),
    (lambda d: d["info"].pop("dims"), "info lacks dims"),
    (lambda d: d["height"].update(low=10**6), "height is low 1000000"),
    (lambda d: d.update(model_name="x" * 2000), "model_name is not a one-line string"),
])
def test_each_wrong_value_is_one_line_naming_the_field(data, change, message):
    bad = copy.deepcopy(data)
    change(bad)
    with pytest.raises(ManifestError) as refused:
        Manifest.from_json(bad)
    text = str(refused.value)
    assert message in text and "\n" not in text


def test_a_valid_manifest_round_trips_and_optional_records_may_be_null(data):
    manifest = Manifest.from_json(data)
    assert Manifest.from_json(json.loads(json.dumps(manifest.to_json()))) == manifest
    assert Manifest.from_json({**data, "gpu_capability": None, "session": None}).session is None


def test_records_the_build_makes_are_validated_when_made():
    assert SessionChoice(2, {"1": 3.5}, cpus=4).threads_here(4) == 2
    with pytest.raises(ValueError):
        SessionChoice(-1, {})
    with pytest.raises(ValueError):
        SessionChoice(1, {"1": float("nan")})
