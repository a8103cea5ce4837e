"""The `tiny-biased` benchmark fixture (benchmarks/models/tiny-biased): small, fp16, and
loadable through the ordinary model path; it stays out of the package."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors import safe_open

from answer_trt.models.source import resolve_model

FIXTURE = Path(__file__).resolve().parents[1] / "benchmarks" / "models" / "tiny-biased"
BUDGET_BYTES = 10_000_000
SMALL_N = 16
# At N = 256, w = 7.5 (benchmarks/README.md): CFG 0.859 correct on with-bias pairs (`tiny` 0.844); asked
# against the bias CFG's shape rate is 0.596 against 0.98 or so otherwise; the default beats CFG there by
# +0.109. Sixteen prompts get margins wide enough for their noise.
WITH_BIAS_CFG_FLOOR = 0.7
BIAS_SHAPE_GAP = 0.15
DEFAULT_MARGIN = 0.1


def test_fixture_is_small_fp16_and_loads():
    files = [p for p in FIXTURE.rglob("*") if p.is_file()]
    assert files and sum(p.stat().st_size for p in files) <= BUDGET_BYTES
    for path in (p for p in files if p.suffix == ".safetensors"):
        with safe_open(str(path), "pt") as tensors:
            assert {str(tensors.get_tensor(k).dtype) for k in tensors.keys()} == {"torch.float16"}, path
    source = resolve_model(str(FIXTURE))
    assert source.path.resolve() == FIXTURE.resolve()


def test_fixture_is_not_package_data():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = tomllib.loads((FIXTURE.parents[2] / "pyproject.toml").read_text())
    setuptools = pyproject["tool"]["setuptools"]
    assert all("benchmarks" not in p for p in [*setuptools["packages"], *setuptools["package-dir"].values()])


def test_fixture_loads_with_every_tensor_in_the_layout_every_transformers_reads():
    from answer_trt.models.source import load_model

    with safe_open(str(FIXTURE / "text_encoder" / "model.safetensors"), "pt") as tensors:
        assert all(name.startswith("text_model.") for name in tensors.keys())
    load_model(FIXTURE)  # strict: refuses missing or unexpected tensors


def test_training_script_stores_the_prefixed_layout(tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    from answer_trt.synthetic.train import prefix_text_encoder_tensors

    path = tmp_path / "model.safetensors"
    save_file({"embeddings.w": torch.ones(2, dtype=torch.float16), "text_model.x": torch.zeros(1)}, str(path))
    prefix_text_encoder_tensors(path)
    tensors = load_file(str(path))
    assert set(tensors) == {"text_model.embeddings.w", "text_model.x"}
    assert tensors["text_model.embeddings.w"].dtype == torch.float16


def test_small_n_compliance_on_the_fixture_shows_its_bias_and_its_training(tmp_path, capsys):
    """The N = 256 comparison (benchmarks/README.md) at 16 prompts per family, through the
    product path: well trained apart from its bias (with-bias pairs as right as `tiny`'s),
    the bias there (asked against it, the shape goes wrong), and the default ANSWER not
    below CFG where the bias is."""
    import json

    from answer_trt.synthetic import compliance

    out = tmp_path / "biased.json"
    default = compliance.default_spec().label
    args = ["--model", str(FIXTURE), "--prompts", str(SMALL_N), "--seed", "5000", "--batch", str(SMALL_N),
            "--families", "with-bias,against-bias", "--guidance-scales", "7.5",
            "--methods", f"{default.replace(' ', '-')},cfg-negative=bias-shape", "--json", str(out)]
    assert compliance.main(args) == 0
    print(capsys.readouterr().out)
    report = json.loads(out.read_text())
    assert report["model"]["name"] == str(FIXTURE)
    rates = {c["family"]: {m["label"]: {k: v["value"] for k, v in m["rates"].items()} for m in c["methods"]}
             for c in report["cells"]}
    with_bias, against = rates["with-bias"], rates["against-bias"]
    assert with_bias["cfg"]["correct"] >= WITH_BIAS_CFG_FLOOR
    assert against["cfg"]["shape"] <= with_bias["cfg"]["shape"] - BIAS_SHAPE_GAP
    assert against[default]["correct"] >= against["cfg"]["correct"] - DEFAULT_MARGIN
    # nothing asked against the bias, so no negative prompt: the baseline is plain CFG there
    assert with_bias["cfg negative=bias-shape"] == with_bias["cfg"]
