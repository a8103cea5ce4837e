"""One guider per guidance method (answer_trt/guiders.py): the rows each step puts on the
batch axis and the peak the batcher admits by, agreeing with what the sampler, the
graphed sampler and the batcher really do; which steps can be captured as a CUDA graph;
and the rule that only the guiders map method names: no runtime module compares them
(the check below reads every runtime module's syntax tree, and is shown to bite)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from answer_trt.conditioning import cat_conditions
from answer_trt.config import METHODS, MODES, GuidanceConfig, SamplingConfig
from answer_trt.graphed import EagerCapturer, GraphCache, refusal, sample_graphed, supports
from answer_trt.guiders import CFG, DNS, DenoiserCall, InnerAnswer, ParallelAnswer, make_guider
from answer_trt.iospec import MAX_BRANCHES
from answer_trt.sampler import sample, sampling_program
from answer_trt.schedulers import make_step_rule
from answer_trt.serving.batcher import call_rows, peak_rows
from tests.toys import ToyDenoiser, make_scheduler

ROOT = Path(__file__).resolve().parents[1]
SIGMAS = [0.99, 0.95, 0.9, 0.8, 0.7, 0.6, 0.45, 0.3, 0.15]  # falling, as in sampling

# The identities and call counts here are those of guidance at every step (conftest.py).
pytestmark = pytest.mark.usefixtures("guided_at_every_step")


def test_the_factory_maps_every_method_and_mode_to_its_guider():
    want = {"cfg": CFG, "dns": DNS}
    for method in METHODS:
        for mode in MODES:
            guider = make_guider(GuidanceConfig(method=method, mode=mode))
            expected = want.get(method) or {"parallel": ParallelAnswer, "inner": InnerAnswer}[mode]
            assert type(guider) is expected, (method, mode)
            assert guider.config == GuidanceConfig(method=method, mode=mode)


def test_two_row_methods_make_one_call_of_two_rows_per_step():
    for method in ("cfg", "dns"):
        guider = make_guider(GuidanceConfig(method=method, dns_steps=3))
        assert guider.calls(SIGMAS) == [(2,)] * len(SIGMAS)
        assert guider.peak_rows_per_image == 2 and guider.peak_rows(3) == 6


def test_answer_parallel_has_two_rows_at_anchors_and_three_between():
    guider = make_guider(GuidanceConfig(method="answer", dns_steps=3, chain_min_sigma=0.0))
    assert guider.calls(SIGMAS) == [(2,), (3,), (3,), (2,), (3,), (3,), (2,), (3,), (3,)]
    assert guider.peak_rows_per_image == 3 and guider.peak_rows(2) == 6
    below = make_guider(GuidanceConfig(method="answer", dns_steps=3, chain_min_sigma=0.5))  # interval: CFG below
    assert below.calls(SIGMAS) == [(2,), (3,), (3,), (2,), (3,), (3,), (2,), (2,), (2,)]
    assert make_guider(GuidanceConfig(method="answer", dns_steps=1)).calls(SIGMAS) == [(2,)] * len(SIGMAS)  # CFG


def test_answer_inner_makes_k_calls_of_two_rows_per_step():
    guider = make_guider(GuidanceConfig(method="answer", mode="inner", dns_steps=3, chain_min_sigma=0.0))
    assert guider.calls(SIGMAS) == [(2, 2, 2)] * 7 + [(2, 2), (2,)]  # no iteration beyond the last step
    assert guider.peak_rows_per_image == 2 and guider.peak_rows(4) == 8
    below = make_guider(GuidanceConfig(method="answer", mode="inner", dns_steps=3, chain_min_sigma=0.5))
    assert below.calls(SIGMAS) == [(2, 2, 2)] * 6 + [(2,)] * 3


def test_the_widest_guider_is_what_the_engines_are_built_for():
    guiders = [make_guider(GuidanceConfig(method=m, mode=d)) for m in METHODS for d in MODES]
    peaks = {type(g): g.peak_rows_per_image for g in guiders}
    assert max(peaks.values()) == MAX_BRANCHES
    assert peaks == {CFG: 2, DNS: 2, ParallelAnswer: 3, InnerAnswer: 2}


def drive(program, see):
    """Answer a sampling program's calls with the toy denoiser (``see(call)`` first); returns
    the final latents."""
    toy = ToyDenoiser()
    try:
        call = next(program)
        while True:
            assert isinstance(call, DenoiserCall)
            see(call)
            out = toy(torch.cat(call.latents), call.t.expand(call.count), cat_conditions(call.conds))
            call = program.send(list(out.chunk(len(call.latents))))
    except StopIteration as done:
        return done.value


CONFIGS = [
    GuidanceConfig(method="cfg"),
    GuidanceConfig(method="dns", negative_scale=2.0),
    GuidanceConfig(method="answer", dns_steps=3, chain_min_sigma=0.0),
    GuidanceConfig(method="answer", dns_steps=3, chain_min_sigma=0.5),
    GuidanceConfig(method="answer", mode="inner", dns_steps=3, chain_min_sigma=0.0),
    GuidanceConfig(method="answer", mode="inner", dns_steps=2, chain_min_sigma=0.5),
]
# The variant "guidance interval" (guidance_min_sigma): below it, every method runs one row.
INTERVAL = [GuidanceConfig(method=m, mode=d, dns_steps=3, guidance_min_sigma=0.4)
            for m, d in (("cfg", "parallel"), ("dns", "parallel"), ("answer", "parallel"), ("answer", "inner"))]


@pytest.mark.parametrize("guidance", CONFIGS, ids=lambda g: f"{g.method}-{g.mode}-K{g.dns_steps}-s{g.chain_min_sigma}")
@pytest.mark.parametrize("kind", ["ddim", "euler"])
def test_the_sampler_makes_the_calls_the_guider_declares(problem, guidance, kind):
    """Run the sampling program by hand: each step's calls carry the declared rows x images,
    and no call exceeds the peak the batcher admits by."""
    noise, cond = problem
    rule = make_step_rule(make_scheduler(kind), 7)
    steps: list[list[int]] = [[]]
    program = sampling_program(noise, cond, rule, guidance, callback=lambda i, n: steps.append([]))
    drive(program, lambda call: steps[-1].append(call.count))
    guider, batch = make_guider(guidance), noise.shape[0]
    sigmas = [rule.levels(i)[1] for i in range(7)]
    assert [tuple(s) for s in steps[:-1]] == [tuple(r * batch for r in c) for c in guider.calls(sigmas)]
    assert max(max(s) for s in steps[:-1]) <= guider.peak_rows(batch)
    config = SamplingConfig(guidance=guidance, batch=batch)
    assert peak_rows(config) == guider.peak_rows(batch)  # the batcher's refusal above max_rows
    assert call_rows(config, rule) == [n for s in steps[:-1] for n in s]  # the batcher's admission


@pytest.mark.parametrize("guidance", [g for g in CONFIGS + INTERVAL if g.mode == "parallel" or g.method != "answer"],
                         ids=lambda g: f"{g.method}-K{g.dns_steps}-s{g.chain_min_sigma}-g{g.guidance_min_sigma}")
def test_the_graphed_sampler_replays_the_declared_step_kinds(problem, guidance):
    """Rows per call as declared (the 1-row guidance-off step included), same latents as eager."""
    noise, cond = problem
    rows: list[int] = []
    toy = ToyDenoiser()

    def denoiser(latents, t, c):
        rows.append(latents.shape[0])
        return toy(latents, t, c)

    rule = make_step_rule(make_scheduler("ddim"), 7)
    graphed = sample_graphed(denoiser, noise, cond, make_scheduler("ddim"), 7, guidance,
                             cache=GraphCache(EagerCapturer()))
    assert torch.allclose(graphed, sample(ToyDenoiser(), noise, cond, make_scheduler("ddim"), 7, guidance), atol=1e-5)
    guider = make_guider(guidance)
    assert [(r // noise.shape[0],) for r in rows] == guider.calls(rule.sigmas)
    kinds = guider.graph_kinds(rule.sigmas)
    assert len(kinds) == 7 and len(set(kinds)) == len({c for c in guider.calls(rule.sigmas)})


def test_graphability_is_the_guiders_and_refusals_name_the_reason():
    euler = make_scheduler("euler")
    rule = make_step_rule(euler, 5)
    for method in METHODS:
        assert make_guider(GuidanceConfig(method=method)).graph_refusal is None
        assert supports(GuidanceConfig(method=method), rule) and refusal(GuidanceConfig(method=method), rule, euler) \
            is None
    inner = make_guider(GuidanceConfig(mode="inner"))
    assert inner.graph_refusal is not None and "--mode parallel" in inner.graph_refusal
    assert "\n" not in inner.graph_refusal  # one line
    assert not supports(GuidanceConfig(mode="inner"), rule)
    assert refusal(GuidanceConfig(mode="inner"), rule, euler) == inner.graph_refusal
    with pytest.raises(ValueError, match="--mode parallel"):
        inner.graph_kinds([0.9, 0.5])
    with pytest.raises(ValueError, match="--mode parallel"):
        sample_graphed(ToyDenoiser(), torch.zeros(1, 4, 8, 8), None, euler, 5, GuidanceConfig(mode="inner"))


# --------------------------------------------------- no method names outside the guiders

RUNTIME = sorted({path for folder in ("answer_trt", "answer_trt/serving", "answer_trt/bench")
                  for path in (ROOT / folder).glob("*.py")}
                 - {ROOT / "answer_trt" / name for name in ("guiders.py", "config.py", "schema.py")})
NAMES = set(METHODS) | set(MODES)


def method_comparisons(source: str) -> list[str]:
    """Where ``source`` branches on a method or mode name: a comparison (``==``, ``!=``,
    ``in``, ``not in``) with one of the names, a ``case`` on one, or a table looked up by a
    ``method``/``mode`` value. Comments and docstrings do not count."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(isinstance(o, ast.Constant) and o.value in NAMES for o in operands) or any(
                    isinstance(o, (ast.Tuple, ast.List, ast.Set)) and any(
                        isinstance(e, ast.Constant) and e.value in NAMES for e in o.elts) for o in operands):
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.MatchValue) and isinstance(node.value, ast.Constant) and node.value.value in NAMES:
            found.append(f"line {node.lineno}: case {node.value.value!r}")
        elif isinstance(node, ast.Subscript) and _names_method(node.slice):
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" \
                and node.args and _names_method(node.args[0]):
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def _names_method(node: ast.AST) -> bool:
    name = node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else None
    return name in ("method", "mode")


def test_no_runtime_module_compares_method_names():
    names = {p.relative_to(ROOT).as_posix() for p in RUNTIME}
    assert {"answer_trt/sampler.py", "answer_trt/graphed.py", "answer_trt/serving/batcher.py",
            "answer_trt/bench/suite.py", "answer_trt/pipeline.py"} <= names
    offences = {path.relative_to(ROOT).as_posix(): method_comparisons(path.read_text()) for path in RUNTIME}
    assert {p: o for p, o in offences.items() if o} == {}, "branch on the guider (answer_trt/guiders.py) instead"


@pytest.mark.parametrize("line", [
    'parallel = guidance.method == "answer" and guidance.mode == "parallel"',  # the sampler, before guiders
    'two_rows = guidance.method != "answer" or anchored[i]',  # graphed.py, before
    'n = (3 if g.method == "answer" and g.mode == "parallel" else 2) * batch',  # the batcher's peak_rows, before
    'if "answer" in config.methods:\n    pass',  # the bench, before
    'ok = guidance.method in ("cfg", "dns")',
    'match guidance.method:\n    case "cfg":\n        pass',
    'step = STEPS[guidance.method]',
    'step = STEPS.get(config.mode)',
])
def test_the_method_name_check_bites(line):
    assert method_comparisons(line)


def test_the_method_name_check_lets_other_comparisons_through():
    assert method_comparisons('"""method == "answer" in a docstring"""\n'
                              'if request.method != method:  # HTTP, guidance.method == "cfg" in a comment\n'
                              '    pass\n'
                              'ok = prediction_type == "epsilon"\n'
                              'result = report.result("answer")') == []


def test_the_guidance_interval_makes_one_row_steps_below_it():
    for guidance in INTERVAL:
        guider = make_guider(guidance)
        full = make_guider(GuidanceConfig(method=guidance.method, mode=guidance.mode, dns_steps=3))
        calls = guider.calls(SIGMAS)
        assert calls[:7] == full.calls(SIGMAS)[:7] and calls[7:] == [(1,), (1,)], guidance
        assert guider.peak_rows(2) == full.peak_rows(2)  # the peak is at high noise


@pytest.mark.parametrize("guidance", INTERVAL, ids=lambda g: f"{g.method}-{g.mode}")
def test_below_the_interval_a_step_is_the_conditional_prediction(problem, guidance):
    """Same run with and without the interval: equal while guided; from the first step below
    it, each step's UNet call is the one row (x, c_p), and the final latents differ."""
    noise, cond = problem
    rule = make_step_rule(make_scheduler("ddim"), 7)
    sigmas = [rule.levels(i)[1] for i in range(7)]
    first_off = next(i for i, s in enumerate(sigmas) if s < guidance.guidance_min_sigma)
    assert 0 < first_off < 7
    seen: dict[float, list[tuple[int, ...]]] = {}
    results = {}
    for threshold in (0.0, guidance.guidance_min_sigma):
        log = seen.setdefault(threshold, [])
        program = sampling_program(noise, cond, rule, GuidanceConfig(**{**guidance.__dict__,
                                                                         "guidance_min_sigma": threshold}))
        results[threshold] = drive(program, lambda call, log=log: log.append(tuple(int(c.hidden.shape[0])
                                                                                   for c in call.conds)))
    cut = seen[guidance.guidance_min_sigma]
    assert cut[-(7 - first_off):] == [(noise.shape[0],)] * (7 - first_off)  # one branch per step
    assert not torch.equal(results[0.0], results[guidance.guidance_min_sigma])
