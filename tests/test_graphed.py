"""The graphable whole-step sampler equals the reference sampler (on the CPU, replaying
the step functions eagerly), and the graph cache captures once per step kind, shape and
configuration, reusing graphs and static buffers across calls. CUDA-graph capture
itself needs a GPU (marked test)."""

from __future__ import annotations

import pytest
import torch

from answer_trt.conditioning import TextCondition
from answer_trt.config import GuidanceConfig
from answer_trt.graphed import EagerCapturer, GraphCache, sample_graphed, supports
from answer_trt.sampler import Conditioning, sample
from answer_trt.schedulers import make_step_rule
from tests.toys import ToyDenoiser, make_scheduler

CASES = [
    GuidanceConfig(method="cfg"),
    GuidanceConfig(method="dns", negative_scale=3.0),
    GuidanceConfig(method="answer", dns_steps=3),
    GuidanceConfig(method="answer", dns_steps=1),
    GuidanceConfig(method="answer", dns_steps=3, chain_min_sigma=0.5, drift_tau=0.3, guidance_rescale=0.7),
    GuidanceConfig(method="cfg", guidance_rescale=0.7),
]


@pytest.mark.parametrize("kind", ["ddim", "euler"])
@pytest.mark.parametrize("guidance", CASES,
                         ids=lambda g: f"{g.method}-K{g.dns_steps}-s{g.chain_min_sigma}-r{g.guidance_rescale}")
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_graphed_steps_equal_the_reference_sampler(problem, kind, guidance, prediction_type):
    noise, cond = problem
    want = sample(ToyDenoiser(), noise, cond, make_scheduler(kind), 7, guidance, prediction_type=prediction_type)
    got = sample_graphed(ToyDenoiser(), noise, cond, make_scheduler(kind), 7, guidance,
                         prediction_type=prediction_type)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


class CountingCapturer(EagerCapturer):
    """Runs the step twice while 'capturing', as warm-up does on a GPU."""

    def __init__(self) -> None:
        self.kinds: list[str] = []

    def capture(self, step):
        self.kinds.append(step.__name__)
        step()
        step()
        return step


def test_graphs_are_captured_once_and_reused_across_calls(problem):
    noise, cond = problem
    capturer = CountingCapturer()
    cache = GraphCache(capturer)
    guidance = GuidanceConfig(method="answer", dns_steps=3, guidance_min_sigma=0.0)  # guided at every step
    denoiser = ToyDenoiser()

    def graphed(noise, cond, guidance=guidance):
        return sample_graphed(denoiser, noise, cond, make_scheduler("ddim"), 7, guidance, cache=cache)

    def reference(noise, cond, guidance=guidance):
        return sample(denoiser, noise, cond, make_scheduler("ddim"), 7, guidance)

    first = graphed(noise, cond)
    assert capturer.kinds == ["anchor_step", "chain_step"]
    torch.testing.assert_close(first, reference(noise, cond), rtol=1e-4, atol=1e-4)  # warm-up left no trace
    again = graphed(noise, cond)
    assert cache.captures == 2 and torch.equal(again, first)  # same shapes: nothing captured
    assert first.data_ptr() not in {b.x.data_ptr() for b in cache.buffers.values()}  # a copy, not the buffer

    other = Conditioning(cond.negative, cond.positive)  # another prompt: copied into the same buffers
    torch.testing.assert_close(graphed(noise, other), reference(noise, other), rtol=1e-4, atol=1e-4)
    assert cache.captures == 2 and len(cache.buffers) == 1

    cfg = GuidanceConfig(method="cfg", guidance_scale=3.0)  # constants baked into a graph: a new key
    torch.testing.assert_close(graphed(noise, cond, cfg), reference(noise, cond, cfg), rtol=1e-4, atol=1e-4)
    assert cache.captures == 3
    one = Conditioning(*(TextCondition(c.hidden[:1]) for c in (cond.positive, cond.negative)))
    torch.testing.assert_close(graphed(noise[:1], one), reference(noise[:1], one), rtol=1e-4, atol=1e-4)
    assert cache.captures == 5 and len(cache.buffers) == 2  # a new shape: new buffers, both kinds


def test_the_cache_keeps_a_bounded_number_of_graphs(problem):
    noise, cond = problem
    cache = GraphCache(EagerCapturer(), limit=2)
    for w in (2.0, 3.0, 4.0):
        sample_graphed(ToyDenoiser(), noise, cond, make_scheduler("ddim"), 3, GuidanceConfig("cfg", w), cache=cache)
    assert cache.captures == 3 and len(cache.graphs) == 2


def test_graphable_configurations():
    ddim = make_step_rule(make_scheduler("ddim"), 5)
    exact = make_step_rule(make_scheduler("ddim"), 5, exact_diffusers=True)
    assert supports(GuidanceConfig(), ddim)
    assert not supports(GuidanceConfig(mode="inner"), ddim)
    assert not supports(GuidanceConfig(), exact)


@pytest.mark.gpu
def test_cuda_graph_replay_matches_eager_on_a_gpu(problem):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from answer_trt.graphed import CudaGraphCapturer

    noise, cond = problem
    toy = ToyDenoiser()
    toy.mix, toy.proj = toy.mix.cuda(), toy.proj.cuda()
    on_gpu = Conditioning(TextCondition(cond.positive.hidden.cuda()), TextCondition(cond.negative.hidden.cuda()))
    guidance = GuidanceConfig(method="answer", dns_steps=3, guidance_min_sigma=0.0)  # guided at every step
    eager = sample_graphed(toy, noise.cuda(), on_gpu, make_scheduler("ddim"), 7, guidance)
    cache = GraphCache(CudaGraphCapturer())
    graphed = sample_graphed(toy, noise.cuda(), on_gpu, make_scheduler("ddim"), 7, guidance, cache=cache)
    torch.testing.assert_close(graphed, eager, rtol=1e-5, atol=1e-5)
    again = sample_graphed(toy, noise.cuda(), on_gpu, make_scheduler("ddim"), 7, guidance, cache=cache)
    assert cache.captures == 2 and torch.equal(again, graphed)  # replayed, not re-captured
