"""Prompts as AUTOMATIC1111's users write them (``prompt_syntax="a1111"``): the emphasis parser on
A1111's documented examples, the chunking of long prompts, emphasis, BREAK, ``<lora:...>`` tags,
the refusals, and the images: a plain prompt draws what ``plain`` draws (0 levels), a long prompt
draws what diffusers' own pipeline draws from the same chunked conditioning."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import answer_trt
from answer_trt.errors import UserInputError
from answer_trt.prompts.chunks import Chunk, frame, split_chunks, token_count
from answer_trt.prompts.emphasis import emphasize
from answer_trt.prompts.loras import check_lora_tags
from answer_trt.prompts.syntax import parse_attention, parse_prompt

STEPS = 4


def pairs(text: str) -> list[list]:
    return [["BREAK", -1] if f.is_break else [f.text, f.weight] for f in parse_attention(text)]


# ---- the parser ------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [  # A1111's doctest of parse_prompt_attention
    ("normal text", [["normal text", 1.0]]),
    ("an (important) word", [["an ", 1.0], ["important", 1.1], [" word", 1.0]]),
    ("(unbalanced", [["unbalanced", 1.1]]),
    ("\\(literal\\]", [["(literal]", 1.0]]),
    ("(unnecessary)(parens)", [["unnecessaryparens", 1.1]]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [["a ", 1.0], ["house", 1.5730000000000004], [" ", 1.1], ["on", 1.0], [" a ", 1.1], ["hill", 0.55],
      [", sun, ", 1.1], ["sky", 1.4641000000000006], [".", 1.1]]),
])
def test_the_parser_gives_a1111s_documented_weights(text, expected):
    got = pairs(text)
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected], abs=1e-12)


@pytest.mark.parametrize("text, expected", [
    ("((word))", [["word", pytest.approx(1.21)]]),
    ("[word]", [["word", pytest.approx(1 / 1.1)]]),
    ("[[word]]", [["word", pytest.approx(1 / 1.21)]]),
    ("(word:1.5)", [["word", 1.5]]),
    ("(word: 0.25 )", [["word", 0.25]]),
    ("(word:1.0) cat", [["word cat", 1.0]]),  # weight 1 merges with its neighbours: plain text
    ("a) b", [["a) b", 1.0]]),  # a closing bracket with nothing open is text
    ("[unbalanced", [["unbalanced", pytest.approx(1 / 1.1)]]),
    ("a \\\\ b", [["a \\ b", 1.0]]),
    ("smile:3", [["smile:3", 1.0]]),  # a colon outside ( ) is text
    ("", [["", 1.0]]),
    ("a BREAK b", [["a", 1.0], ["BREAK", -1], ["b", 1.0]]),
    ("BREAKFAST", [["BREAKFAST", 1.0]]),  # BREAK only as a word of its own
    ("(a BREAK b)", [["a", pytest.approx(1.1)], ["BREAK", -1], ["b", pytest.approx(1.1)]]),
])
def test_emphasis_escapes_and_break(text, expected):
    assert pairs(text) == expected


def test_extra_networks_are_taken_out_and_kept():
    parsed = parse_prompt("<lora:style_a:0.8> a (red:1.2) circle <lora:detail>")
    assert [(n.kind, n.name, n.weights) for n in parsed.networks] == [("lora", "style_a", ("0.8",)),
                                                                    ("lora", "detail", ())]
    assert "".join(f.text for f in parsed.fragments) == " a red circle "
    assert parsed.networks[0].multiplier() == 0.8 and parsed.networks[1].multiplier() == 1.0
    assert not parsed.plain and parse_prompt("a red circle").plain


@pytest.mark.parametrize("text, named", [
    ("a [cat:dog:0.5] house", "prompt editing"),
    ("a [dog:0.5] house", "prompt editing"),
    ("a [cat::10] house", "prompt editing"),
    ("[cat|dog]", "alternation"),
    ("a cat AND a dog", "composable"),
])
def test_schedules_alternation_and_and_are_refused_in_one_line(text, named):
    with pytest.raises(UserInputError, match=f"{named}.*not supported") as caught:
        parse_prompt(text)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("text", ["a [(word:1.2)] b", "\\[cat:dog\\]", "(a:1.2) | b", "a and b", "[a] : [b]"])
def test_what_only_looks_like_editing_is_accepted(text):
    parse_prompt(text)


# ---- chunks ------------------------------------------------------------------------------------

def test_chunks_of_75_tokens_and_a1111s_counter():
    tokens = list(range(100, 250))  # 150 tokens
    chunks = split_chunks([(tokens, 1.0)], 75)
    assert [len(c.tokens) for c in chunks] == [75, 75] and token_count(chunks, 75) == 150
    assert [len(c.tokens) for c in split_chunks([(tokens + [7], 1.0)], 75)] == [75, 75, 1]
    assert [len(c.tokens) for c in split_chunks([], 75)] == [0]  # an empty prompt: one empty chunk
    ids, weights = frame(chunks[0], 77, 1, 2, 0)
    assert len(ids) == 77 and ids[0] == 1 and ids[76] == 2 and weights[0] == weights[76] == 1.0
    short, _ = frame(Chunk([5, 6], [1.0, 1.0]), 77, 1, 2, 0)
    assert short[:5] == [1, 5, 6, 2, 0] and len(short) == 77  # diffusers' ids of a short prompt


def test_break_closes_the_chunk_and_a_comma_moves_the_tail():
    chunks = split_chunks([([5, 6], 1.0), None, ([7], 1.5)], 75)
    assert [c.tokens for c in chunks] == [[5, 6], [7]] and chunks[1].weights == [1.5]
    assert len(split_chunks([([5], 1.0), None, None, ([7], 1.0)], 75)) == 3  # BREAK BREAK: an empty chunk
    # a chunk fills up 4 tokens after a comma (id 9): those 4 move to the next chunk
    tokens = [5] * 70 + [9] + [6] * 10
    chunks = split_chunks([(tokens, 1.0)], 75, comma=9)
    assert [len(c.tokens) for c in chunks] == [71, 10] and chunks[0].tokens[-1] == 9
    assert [len(c.tokens) for c in split_chunks([(tokens, 1.0)], 75, comma=9, backtrack=0)] == [75, 6]


def test_emphasis_scales_tokens_and_keeps_the_chunks_mean():
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(77, 8, generator=gen) + 0.5
    assert emphasize(hidden, torch.ones(77)) is hidden
    weights = torch.ones(77)
    weights[3] = 1.5
    out = emphasize(hidden, weights)
    assert torch.allclose(out.mean(), hidden.mean(), atol=1e-6)
    ratio = out / hidden
    assert torch.allclose(ratio[3], 1.5 * ratio[0]) and torch.allclose(ratio[10], ratio[0])
    two = emphasize(hidden, weights, (3, 5))  # two encoders' parts: each keeps its own mean
    assert torch.allclose(two[:, :3].mean(), hidden[:, :3].mean(), atol=1e-6)
    assert torch.allclose(two[:, 3:].mean(), hidden[:, 3:].mean(), atol=1e-6)
    assert not torch.allclose(two, out)


def test_lora_tags_must_name_a_built_lora_at_its_scale():
    built = ("style_a.safetensors:0123456789ab:0.8",)
    check_lora_tags(parse_prompt("<lora:style_a:0.8> x").networks, built, "answer-trt build --model m")
    check_lora_tags(parse_prompt("<lora:style_a.safetensors:0.8> x").networks, built, "answer-trt build")
    for prompt, named in [("<lora:style_a:0.5> x", "--lora style_a.safetensors:0.5"),
                          ("<lora:other> x", "--lora other.safetensors:1.0"),
                          ("<lora:style_a:0.8:0.5> x", "separate text-encoder and UNet weights"),
                          ("<lora:style_a:abc> x", "is not a number"),
                          ("<hypernet:h:1> x", "hypernet extra networks are not supported")]:
        with pytest.raises(UserInputError, match=named) as caught:
            check_lora_tags(parse_prompt(prompt).networks, built, "answer-trt build --model m")
        assert "\n" not in str(caught.value)
    with pytest.raises(UserInputError, match=r"these have no LoRA.*`answer-trt build --model m --lora x.safetensors"):
        check_lora_tags(parse_prompt("<lora:x:1>").networks, (), "answer-trt build --model m")


# ---- images --------------------------------------------------------------------------------------

# 150 tokens of the tiny model's vocabulary, one token per word, no comma: two chunks of 75.
LONG = " ".join(["a red circle and"] * 37 + ["a red"])
COLOURS = ("red", "blue", "green", "yellow")
# Another long prompt whose end is unlike LONG's: what truncation drops changes the picture.
LONG_TAIL = " ".join(["a red circle and"] * 20 + [f"a {COLOURS[i % 4]} square and" for i in range(17)] + ["a blue"])


def levels(generation) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.int16) for im in generation.images])


@pytest.fixture(scope="module")
def eager():
    return answer_trt.load("tiny-random", backend="torch")


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    from answer_trt.build_config import BuildConfig
    from answer_trt.export.build import build

    folder = tmp_path_factory.mktemp("prompts") / "engines"
    build(BuildConfig(model="tiny-random", out=folder, max_batch=1), log=lambda _m: None)
    return answer_trt.load(folder)


def test_the_long_prompts_are_the_lengths_the_tests_need(eager):
    assert len(eager.text.tokenizers[0](LONG, add_special_tokens=False).input_ids) == 150
    assert eager.text.tokenize_a1111(LONG).chunks == 2
    assert eager.text.tokenize_a1111(LONG_TAIL).chunks == 2


@pytest.mark.parametrize("method, negative", [("cfg", None), ("cfg", "a blue square"), ("answer", None),
                                              ("answer", "a green triangle")])
def test_a_plain_prompt_draws_the_same_image_in_both_syntaxes(engines, method, negative):
    kw = dict(method=method, negative_prompt=negative, steps=STEPS, seed=3, guidance_scale=5.0)
    plain = levels(engines("a red circle and a blue square", **kw))
    a1111 = levels(engines("a red circle and a blue square", prompt_syntax="a1111", **kw))
    assert plain.std() > 5 and np.abs(plain - a1111).max() == 0


def test_a_long_prompt_is_diffusers_pipeline_on_the_chunked_conditioning(engines):
    """The reference: diffusers' text encoder run on each chunk of 75 tokens (A1111's framing),
    the hidden states concatenated, the negative the empty prompt's chunk twice (A1111's padding),
    fed to diffusers' StableDiffusionPipeline as prompt_embeds."""
    from diffusers import StableDiffusionPipeline

    from answer_trt.models.source import resolve_model

    reference = StableDiffusionPipeline.from_pretrained(resolve_model("tiny-random").path)
    reference.set_progress_bar_config(disable=True)
    tokenizer = reference.tokenizer
    ids = tokenizer(LONG, add_special_tokens=False).input_ids
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id

    def chunk(tokens):
        return [bos, *tokens, eos] + [pad] * (75 - len(tokens))

    with torch.no_grad():
        encode = reference.text_encoder
        chunks = torch.tensor([chunk(ids[:75]), chunk(ids[75:])])
        positive = encode(chunks)[0].reshape(1, 154, -1)
        empty = encode(torch.tensor([chunk([])]))[0]
        negative = torch.cat([empty, empty], dim=1)
    expected = reference(prompt_embeds=positive, negative_prompt_embeds=negative, num_inference_steps=STEPS,
                         guidance_scale=6.0, generator=torch.Generator().manual_seed(7), output_type="np").images
    expected = (expected * 255).round().astype(np.int16)
    kw = dict(method="cfg", steps=STEPS, guidance_scale=6.0, seed=7)
    got = levels(engines(LONG, prompt_syntax="a1111", **kw))
    assert expected.std() > 5 and np.abs(got - expected).max() <= 2
    truncated = levels(engines(LONG_TAIL, **kw))
    chunked = levels(engines(LONG_TAIL, prompt_syntax="a1111", **kw))
    assert np.abs(truncated - chunked).max() > 10  # the tokens past 75 now count


def test_emphasis_and_break_change_the_image_and_weight_one_does_not(engines):
    kw = dict(steps=STEPS, seed=2, prompt_syntax="a1111", method="answer")
    base = levels(engines("a red circle and a blue square", **kw))
    assert np.abs(levels(engines("a (red:1.0) circle and a blue square", **kw)) - base).max() == 0
    assert np.abs(levels(engines("a (red:1.6) circle and a blue square", **kw)) - base).max() > 10
    assert np.abs(levels(engines("a [[red]] circle and a blue square", **kw)) - base).max() > 0  # weaker: 1/1.21
    broken = engines("a red circle BREAK a blue square", **kw)
    assert np.abs(levels(broken) - base).max() > 10
    assert json.loads(broken.params["answer-trt"])["prompt_syntax"] == "a1111"  # replay reads it


def test_a_prompt_beyond_the_built_chunks_is_refused_naming_the_flag(engines):
    too_long = " BREAK ".join(["a red circle"] * 4)  # four chunks, three built
    with pytest.raises(UserInputError, match=r"the prompt is 4 chunks .* beyond the 3 .*--max-prompt-chunks 4") as c:
        engines(too_long, prompt_syntax="a1111", steps=1)
    assert "\n" not in str(c.value)
    with pytest.raises(UserInputError, match="the negative prompt is 4 chunks"):
        engines("a cat", negative_prompt=too_long, prompt_syntax="a1111", steps=1)
    with pytest.raises(UserInputError, match="--lora"):
        engines("<lora:style:0.8> a cat", prompt_syntax="a1111", steps=1)
    with pytest.raises(UserInputError, match="prompt editing"):
        engines("a [cat:dog:0.5]", prompt_syntax="a1111", steps=1)
    with pytest.raises(UserInputError, match="unknown prompt_syntax 'comfy': choose one of plain, a1111"):
        engines("a cat", prompt_syntax="comfy", steps=1)
    engines("<lora:style:0.8> [cat:dog:0.5] AND more", steps=1)  # plain: all of it is text


def test_the_batcher_keeps_each_requests_text_length(eager):
    """Rows of different text lengths cannot share a UNet call: the batcher groups them, and each
    request draws what generate draws."""
    from answer_trt.schema import GenerateRequest
    from answer_trt.serving.batcher import StepBatcher

    requests = [GenerateRequest(LONG, steps=STEPS, seed=1, prompt_syntax="a1111", method="answer"),
                GenerateRequest("a red circle", steps=STEPS, seed=1, prompt_syntax="a1111"),
                GenerateRequest(LONG_TAIL, steps=STEPS, seed=5, prompt_syntax="a1111")]
    with StepBatcher(eager) as batcher:
        tickets = [batcher.submit(r) for r in requests]
        results = [t.result(timeout=300) for t in tickets]
    for request, result in zip(requests, results):
        alone = eager.run(request)
        assert np.abs(levels(result) - levels(alone)).max() <= 1


def test_step_graphs_take_chunked_conditions(eager):
    """--cuda-graph's buffers and graphs are per shape: a long prompt's conditions get their own
    (the capture is the eager stand-in here, as in test_graphed.py)."""
    from answer_trt.graphed import EagerCapturer, GraphCache

    pipe = answer_trt.load("tiny-random", backend="torch")
    pipe.graphs = GraphCache(EagerCapturer())
    kw = dict(steps=STEPS, seed=4, prompt_syntax="a1111", scheduler="ddim")
    for prompt in (LONG, "a red circle"):
        graphed = levels(pipe.generate(prompt, cuda_graph=True, **kw))
        assert np.abs(graphed - levels(eager.generate(prompt, **kw))).max() <= 1
    assert len(pipe.graphs.buffers) == 2


def test_the_a1111_route_reads_a1111_syntax(eager):
    from answer_trt.serving.conventions import a1111_requests
    from answer_trt.serving.models import Txt2ImgBody

    body = Txt2ImgBody(prompt="a (red:1.3) circle", steps=2)
    (request,) = a1111_requests(body, 1, "tiny-random")
    assert request.prompt_syntax == "a1111"
    (plain,) = a1111_requests(Txt2ImgBody(prompt="x", steps=2, prompt_syntax="plain"), 1, "tiny-random")
    assert plain.prompt_syntax == "plain"
    assert Txt2ImgBody.model_json_schema()["properties"]["prompt_syntax"]["default"] == "a1111"


def test_an_a1111_png_is_redrawn_in_a1111_syntax(tmp_path):
    from PIL import PngImagePlugin

    from answer_trt.cli import _request, make_parser

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a (red:1.3) circle\nNegative prompt: blue\nSteps: 3, Sampler: Euler, CFG scale: 5, "
                                "Seed: 2, Size: 64x64")
    png = tmp_path / "a1111.png"
    Image.new("RGB", (8, 8)).save(png, pnginfo=info)
    request, _, _ = _request(make_parser().parse_args(["generate", "--from-png", str(png)]))
    assert request.prompt == "a (red:1.3) circle" and request.prompt_syntax == "a1111"


def test_a_replay_keeps_the_recorded_syntax(eager):
    from answer_trt.schema import from_parameters

    generation = eager("a (red:1.3) circle", steps=1, prompt_syntax="a1111")
    record = generation.images[0].info["answer-trt"]
    assert from_parameters(record).prompt_syntax == "a1111"
    assert from_parameters(json.loads(record) | {"prompt_syntax": "plain"}).prompt_syntax == "plain"


# ---- prompt_embeds (compel and the like) ------------------------------------------------------

def test_prompt_embeds_skip_the_text_engine_and_draw_diffusers_image(engines):
    """diffusers' prompt_embeds / negative_prompt_embeds: the conditions of a long A1111 prompt,
    given as tensors, draw the image of that prompt; and diffusers' pipeline draws it too."""
    from diffusers import StableDiffusionPipeline

    from answer_trt.models.source import resolve_model

    positive, negative = engines.text.encode(LONG, "a blue square", syntax="a1111")
    assert positive.hidden.shape[1] == negative.hidden.shape[1] == 154
    kw = dict(steps=STEPS, guidance_scale=6.0, seed=7, method="cfg")
    given = engines(prompt_embeds=positive.hidden, negative_prompt_embeds=negative.hidden, **kw)
    assert np.abs(levels(given) - levels(engines(LONG, negative_prompt="a blue square", prompt_syntax="a1111",
                                                 **kw))).max() == 0
    assert json.loads(given.params["answer-trt"])["prompt_embeds"] == "given (not recorded)"
    reference = StableDiffusionPipeline.from_pretrained(resolve_model("tiny-random").path)
    reference.set_progress_bar_config(disable=True)
    expected = reference(prompt_embeds=positive.hidden, negative_prompt_embeds=negative.hidden,
                         num_inference_steps=STEPS, guidance_scale=6.0, generator=torch.Generator().manual_seed(7),
                         output_type="np").images
    assert np.abs(levels(given) - (expected * 255).round().astype(np.int16)).max() <= 2
    alone = engines(prompt_embeds=positive.hidden, **kw)  # no negative: c_0, one empty chunk per chunk
    assert np.abs(levels(alone) - levels(engines(LONG, prompt_syntax="a1111", **kw))).max() == 0


@pytest.mark.parametrize("keywords, message", [
    (dict(prompt_embeds=torch.zeros(1, 100, 32)), r"prompt_embeds has 100 tokens; this model takes \[1, 77 \* k, 32\]"),
    (dict(prompt_embeds=torch.zeros(1, 77, 16)), r"prompt_embeds has shape \[1, 77, 16\]"),
    (dict(prompt_embeds=torch.zeros(2, 77, 32)), r"prompt_embeds has shape \[2, 77, 32\]"),
    (dict(prompt_embeds=[[0.0]]), "prompt_embeds must be a torch tensor"),
    (dict(prompt_embeds=torch.zeros(1, 4 * 77, 32)), "4 chunks of 77 tokens, beyond the 3"),
    (dict(prompt_embeds=torch.zeros(1, 77, 32), negative_prompt_embeds=torch.zeros(1, 154, 32)),
     "negative_prompt_embeds has shape"),
    (dict(prompt_embeds=torch.zeros(1, 77, 32), pooled_prompt_embeds=torch.zeros(1, 8)), "SDXL's"),
    (dict(prompt_embeds=torch.full((1, 77, 32), float("nan"))), "finite"),
    (dict(prompt="a cat", prompt_embeds=torch.zeros(1, 77, 32)), "a prompt or prompt_embeds"),
])
def test_prompt_embeds_shapes_are_checked_in_one_line(engines, keywords, message):
    assert engines.dims.text_hidden_size == 32
    with pytest.raises(UserInputError, match=message) as caught:
        engines(steps=1, **keywords)
    assert "\n" not in str(caught.value)


def test_sdxl_chunks_both_encoders_and_pools_the_first_chunk():
    """SDXL: both tokenizers' ids chunked alike, the pooled embedding the first chunk's, c_0 (zeros,
    as diffusers' SDXL) padded with zeros; a plain prompt draws plain's pixels."""
    pipe = answer_trt.load("tiny-sdxl", backend="torch")
    kw = dict(steps=3, seed=1, method="answer", guidance_min_sigma=0.0)
    plain, a1111 = (levels(pipe("a red circle", prompt_syntax=s, **kw)) for s in ("plain", "a1111"))
    assert plain.std() > 5 and np.abs(plain - a1111).max() == 0
    first = " ".join(["a red circle and"] * 18 + ["a red circle"])  # LONG's first 75 tokens
    positive, c_0 = pipe.text.encode(LONG, None, 1, "a1111")
    alone, _ = pipe.text.encode(first, None, 1, "a1111")
    assert positive.hidden.shape == c_0.hidden.shape == (1, 154, pipe.dims.text_hidden_size)
    assert not c_0.hidden.any()
    torch.testing.assert_close(positive.pooled, alone.pooled)
    torch.testing.assert_close(positive.hidden[:, :77], alone.hidden)
    # emphasis rescales each encoder's part on its own, as A1111 runs each encoder's emphasis
    widths = pipe.text.widths
    assert len(widths) == 2 and sum(widths) == pipe.dims.text_hidden_size
    plain_states, _ = pipe.text.encode("a red circle", None, 1, "a1111")
    weighted, _ = pipe.text.encode("a (red:1.5) circle", None, 1, "a1111")
    for a, b in zip(plain_states.hidden[0, :2].split(widths, -1), weighted.hidden[0, :2].split(widths, -1)):
        assert not torch.allclose(a, b)
    for a, b in zip(plain_states.hidden[0].split(widths, -1), weighted.hidden[0].split(widths, -1)):
        torch.testing.assert_close(a.mean(), b.mean())


def test_the_build_flag_is_replayed_by_every_rebuild_hint(engines):
    from answer_trt.build_config import BuildConfig
    from answer_trt.cli import make_parser

    assert "--max-prompt-chunks" not in BuildConfig().command()  # the default: commands read as before
    assert "--max-prompt-chunks 5" in BuildConfig(max_prompt_chunks=5).command()
    assert make_parser().parse_args(["build", "--out", "e", "--max-prompt-chunks", "5"]).max_prompt_chunks == 5
    with pytest.raises(UserInputError, match="--max-prompt-chunks must be an integer >= 1"):
        BuildConfig(max_prompt_chunks=0)
    assert engines.limits.prompt_chunks == 3 and engines.limits.build.max_prompt_chunks == 3
