"""Clip skip in A1111's meaning (the text condition from the Nth CLIP layer from the end, through
the final layer norm for SD 1.x/2.x; 1 = the last layer), per request, on every backend: the
exported text encoder takes it as an input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from answer_trt.errors import UserInputError
from tests.cli_run import generation_pixels as _pixels


@pytest.fixture(scope="module")
def eager():
    import answer_trt

    return answer_trt.load("tiny-random", backend="torch")


def test_each_clip_skip_is_a1111s_layer_through_the_final_layer_norm(eager):
    """The reference is A1111's rule written here from the model's hidden states: clip skip N is
    final_layer_norm(hidden_states[-N]) (N = 1: the last hidden state)."""
    from answer_trt.backends.torch_modules import TextEncoderModule

    text_encoder = eager.engines["text_encoder"].module.text_encoder
    ids = eager.text.tokenize(["a red circle", "a blue square"])["input_ids"]
    with torch.no_grad():
        states = text_encoder(ids, output_hidden_states=True).hidden_states
        final_norm = getattr(text_encoder, "text_model", text_encoder).final_layer_norm
        module = TextEncoderModule(text_encoder)
        for skip in (1, 2):
            got = module(ids, torch.tensor([skip, skip]))
            assert torch.equal(got, final_norm(states[-skip])), skip
        mixed = module(ids, torch.tensor([1, 2]))  # rows of one call, each its own clip skip
        assert torch.equal(mixed[0], final_norm(states[-1])[0]) and torch.equal(mixed[1], final_norm(states[-2])[1])
        assert torch.equal(module(ids, torch.tensor([1, 1])), text_encoder(ids).last_hidden_state)


def test_sdxl_takes_the_layer_before_its_penultimate_one():
    """SDXL's condition is the penultimate layer of both encoders; clip skip N moves both N - 1
    layers further from the end (diffusers' clip_skip N - 1); the pooled embedding stays."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from answer_trt.backends.torch_modules import DualTextEncoderModule

    torch.manual_seed(0)
    config = dict(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=4, num_attention_heads=2,
                  max_position_embeddings=8, projection_dim=8)
    first, second = CLIPTextModel(CLIPTextConfig(**config)), CLIPTextModelWithProjection(CLIPTextConfig(**config))
    module = DualTextEncoderModule(first.eval(), second.eval())
    ids = torch.randint(0, 100, (2, 8))
    with torch.no_grad():
        a, b = first(ids, output_hidden_states=True), second(ids, output_hidden_states=True)
        for skip in (1, 2, 3):
            hidden, pooled = module(ids, ids, torch.tensor([skip, skip]))
            assert torch.equal(hidden, torch.cat([a.hidden_states[-(skip + 1)], b.hidden_states[-(skip + 1)]], -1))
            assert torch.equal(pooled, b.text_embeds)


def test_onnx_runtime_engines_follow_clip_skip_as_torch_does(ort_pipe, eager):
    for skip in (1, 2):
        got = ort_pipe.generate("a red circle", steps=4, seed=1, clip_skip=skip)
        ref = eager.generate("a red circle", steps=4, seed=1, clip_skip=skip)
        assert np.abs(_pixels(got) - _pixels(ref)).max() <= 2, skip
        assert got.params["clip_skip"] == str(skip)
    one, two = (ort_pipe.generate("a red circle", steps=4, seed=1, clip_skip=s) for s in (1, 2))
    assert np.abs(_pixels(one) - _pixels(two)).max() > 10  # the condition changed


def test_diffusers_clip_skip_counts_one_less(eager):
    """The Python API's diffusers convention (``pipe(prompt, clip_skip=k)``) is A1111's k + 1,
    and diffusers' own embeddings agree where its clip skip runs (transformers 4.x: 5.x moved
    the final layer norm out of ``text_model``)."""
    call = eager("a red circle", num_inference_steps=3, generator=torch.Generator().manual_seed(2), clip_skip=1)
    same = eager.generate("a red circle", steps=3, seed=2, clip_skip=2)
    assert np.array_equal(_pixels(call), _pixels(same))
    from diffusers import StableDiffusionPipeline

    from answer_trt.models.source import resolve_model

    theirs = StableDiffusionPipeline.from_pretrained(resolve_model("tiny-random").path, safety_checker=None,
                                                     requires_safety_checker=False)
    try:
        embeds, _ = theirs.encode_prompt("a red circle", "cpu", 1, False, clip_skip=1)
    except AttributeError as exc:
        pytest.skip(f"diffusers' clip_skip does not run with this transformers ({exc})")
    ours = eager.text.encode("a red circle", None, 2)[0].hidden
    assert torch.allclose(embeds, ours, atol=1e-6)


def test_clip_skip_is_refused_beyond_the_model_before_any_work(eager, tmp_path, monkeypatch, capsys):
    with pytest.raises(UserInputError, match="clip_skip 3 is beyond this model's text encoder: use 2 or less"):
        eager.generate("a red circle", steps=1, clip_skip=3)
    with pytest.raises(UserInputError, match="clip_skip must be at most 12"):
        eager.generate("a red circle", steps=1, clip_skip=13)
    from answer_trt.cli import main

    monkeypatch.setenv("ANSWER_TRT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(SystemExit) as exited:
        main(["generate", "a cat", "--clip-skip", "0", "-o", str(tmp_path / "x.png")])
    assert exited.value.code == 2 and "--clip-skip must be an integer in 1 .. 12" in capsys.readouterr().err
    assert not (tmp_path / "cache" / "engines").exists()


def test_the_cli_records_clip_skip_and_replays_it(tmp_path):
    from PIL import Image

    from answer_trt.cli import main

    first, again = tmp_path / "a.png", tmp_path / "b.png"
    assert main(["generate", "a red circle", "--model", "tiny-random", "--backend", "torch", "--steps", "3",
                 "--clip-skip", "2", "-o", str(first)]) == 0
    assert Image.open(first).info["clip_skip"] == "2"
    assert main(["generate", "--from-png", str(first), "--model", "tiny-random", "--backend", "torch", "-o",
                 str(again)]) == 0
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(again)))
