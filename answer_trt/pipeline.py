"""The generation pipeline: tokenize -> encode -> sample -> decode -> PIL images."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from answer_trt.backends.base import Engine
from answer_trt.build_config import MAX_PROMPT_CHUNKS, BuildConfig
from answer_trt.clock import StageClock
from answer_trt.conditioning import TextCondition
from answer_trt.config import SamplingConfig
from answer_trt.controlnet import (
    ControlImages,
    attach_control,
    check_control,
    control_windows,
    controlnet_engines,
    load_control_images,
    make_denoiser,
)
from answer_trt.errors import NonFiniteImageError, UserInputError
from answer_trt.graphed import CudaGraphCapturer, GraphCache, refusal, sample_graphed
from answer_trt.guiders import make_guider
from answer_trt.images import save_pngs, to_pil
from answer_trt.img2img import ImageStart, InitImage, check_init, load_init_image, started
from answer_trt.iospec import TEXT_ENCODER, VAE_DECODER, VAE_ENCODER, SizeRange
from answer_trt.models.info import ModelInfo
from answer_trt.models.lora import lora_tag_keys
from answer_trt.prompts.embeds import EMBED_KEYWORDS, PromptEmbeds, check_prompt_embeds
from answer_trt.prompts.loras import check_lora_tags
from answer_trt.rules import check_int, check_memory, check_size
from answer_trt.sampler import (
    BranchEvaluator,
    Conditioning,
    Denoiser,
    SamplingProgram,
    StepCallback,
    run_program,
    sampling_program,
)
from answer_trt.schedulers import StepNoise, StepRule, draw_noise, make_scheduler, make_step_rule, noise_generators
from answer_trt.schema import GenerateRequest, make_request
from answer_trt.schema import parameters as schema_parameters
from answer_trt.text import PromptEncoder

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    """What the engines were built for; ``None`` means unlimited (torch backend).
    ``build`` is the request that built them (``Manifest.build_config``): a rebuild hint
    replays it with only the flag that must change."""

    max_batch: int | None = None
    height: SizeRange | None = None
    width: SizeRange | None = None
    build: BuildConfig | None = None
    prompt_chunks: int | None = None  # the UNet's text axis, in chunks (``--max-prompt-chunks``)

    def __post_init__(self) -> None:
        if self.max_batch is not None:
            check_int("max_batch (of the engines' limits)", self.max_batch)

    def rebuild_command(self, **changes: Any) -> str:
        """``answer-trt build ...`` with ``changes`` (BuildConfig fields) applied."""
        if self.build is None:
            return " ".join(["answer-trt build", *(f"--{k.replace('_', '-')} {v}" for k, v in changes.items())])
        return replace(self.build, **changes).command()


@dataclass(frozen=True)
class BuiltWeights:
    """Which weights of the model the engines run: its weights ``variant`` (None: the plain
    ones) and the LoRA adapters fused into them, as ``name:sha256-prefix:scale`` tags
    (``answer_trt.models.lora``), and ``model_hash``: the model's sha256 as the engines'
    manifest records it (None for an eager model). Each image's metadata records them, and a
    replay checks the LoRAs."""

    variant: str | None = None
    loras: tuple[str, ...] = ()
    model_hash: str | None = None
    vae_hash: str | None = None  # --vae: the replacing VAE's sha256 (None: the model's own VAE)
    vae_name: str | None = None  # its file or folder name (A1111's infotext "VAE")
    # ControlNets the folder was built with (``answer_trt.controlnet``): ``name:sha256-prefix:scale`` tags and
    # the scales, in --controlnet order.
    controlnets: tuple[str, ...] = ()
    control_scales: tuple[float, ...] = ()

    def parameters(self) -> dict[str, str]:
        """The PNG metadata entries (none for the plain weights without LoRAs, run eagerly)."""
        entries = {"variant": self.variant} if self.variant else {}
        if self.model_hash:
            entries["model_hash"] = self.model_hash[:16]
        if self.loras:
            entries["loras"] = ", ".join(self.loras)
        if self.vae_hash:
            entries["vae_hash"] = self.vae_hash[:16]
            entries["vae"] = self.vae_name or ""
        if self.controlnets:
            entries["controlnets"] = ", ".join(self.controlnets)
        return entries

    def check_replay(self, recorded: Mapping[str, Any], image: str) -> None:
        """Refuse to redraw ``image`` (its metadata ``recorded``) with other LoRAs than it was
        drawn with (compared by sha256 prefix and scale), in one line saying which to pass."""
        text = recorded.get("loras")
        drawn = lora_tag_keys(text if isinstance(text, str) else "")
        if drawn != lora_tag_keys(", ".join(self.loras)):
            have = ", ".join(self.loras) or "no LoRA"
            raise UserInputError(f"{image} was drawn with the LoRAs {text or 'none'}, and this run has {have}: "
                                 "pass --lora FILE:SCALE for each file of that sha256 (or none), in that order")
        drawn_vae = recorded.get("vae_hash") if isinstance(recorded.get("vae_hash"), str) else None
        ours = self.vae_hash
        if (ours is not None or drawn_vae) and not (drawn_vae and ours and ours.startswith(drawn_vae)):
            vae = f"the VAE {recorded.get('vae') or '?'} (sha256 {drawn_vae}...)" if drawn_vae else "the model's VAE"
            have = f"{self.vae_name} (sha256 {ours[:16]}...)" if ours else "the model's own"
            raise UserInputError(f"{image} was drawn with {vae}, and this run has {have}: pass --vae with that file "
                                 "(or none)")


@dataclass(frozen=True)
class Timings:
    text_s: float
    denoise_s: float
    decode_s: float
    steps: int  # the denoising steps run (img2img: int(steps x strength))
    encode_s: float = 0.0  # img2img / inpainting: the input image's VAE encoder call(s) and noising

    @property
    def total_s(self) -> float:
        return self.text_s + self.encode_s + self.denoise_s + self.decode_s

    def summary(self, images: int, height: int, width: int) -> str:
        encode = f"encode {self.encode_s * 1e3:.0f} ms, " if self.encode_s else ""
        return (
            f"{images} image(s) {width}x{height} in {self.total_s:.2f} s: text {self.text_s * 1e3:.0f} ms, {encode}"
            f"denoise {self.denoise_s:.2f} s ({self.denoise_s / self.steps * 1e3:.1f} ms/step x {self.steps}), "
            f"decode {self.decode_s * 1e3:.0f} ms"
        )


@dataclass(frozen=True)
class RequestPlan:
    """A request checked against these engines (``Pipeline.plan``): its ``config`` (size
    filled in), the diffusers ``scheduler`` it runs, that scheduler's step ``rule`` for
    ``config.steps``, and ``params``, the PNG text its images carry."""

    request: GenerateRequest
    config: SamplingConfig
    scheduler: Any
    rule: StepRule
    params: dict[str, str]
    start: int | None = None  # img2img: the schedule's timestep index it begins at (None: text to image)
    strength: float | None = None  # img2img's and inpainting's, resolved
    text_chunks: int = 1  # the chunks of the text conditions (A1111's long prompts), for both of them

    @property
    def denoising_steps(self) -> int:
        """The steps this request runs: ``config.steps``, fewer for img2img (``strength``)."""
        return self.config.steps if self.start is None else len(self.rule.timesteps)


@dataclass(frozen=True)
class Generation:
    """What a call returns: ``images`` (PIL images, each with its parameters in ``info``; a
    float array for ``output_type="np"``), the batch's ``params``, stage ``timings`` and the
    resolved ``config``."""

    images: Any
    params: dict[str, str]
    timings: Timings
    config: SamplingConfig

    # It reads as the list of its images too (what ``pipe(prompt)`` returned before it took
    # diffusers' convention of an object with ``.images``).
    def __iter__(self) -> Iterator[Any]:
        return iter(self.images)

    def __getitem__(self, index: int) -> Any:
        return self.images[index]

    def __len__(self) -> int:
        return len(self.images)

    def save(self, path: str | Path) -> list[Path]:
        """Write the images as ``path``, ``path-1``, ... (PNG), each with its metadata (PIL's
        plain ``Image.save`` drops it); atomically. Returns the paths."""
        if not isinstance(self.images, list):
            raise UserInputError("save() writes PIL images: call with output_type='pil' (the default)")
        return save_pngs(self.images, Path(path))


CUDA_GRAPH_NEEDS_GPU = ("--cuda-graph needs engines on a CUDA GPU (tensorrt, inductor built with --device cuda, "
                        "or torch with --device cuda)")


class Pipeline:
    """ANSWER / CFG / DNS text-to-image over three engines (see ``answer_trt.load``)."""

    def __init__(
        self,
        *,
        tokenizers: tuple[Any, ...],
        engines: dict[str, Engine],
        scheduler_config: dict[str, Any],
        info: ModelInfo,
        model_name: str,
        backend: str,
        precision: str = "fp32",
        device: str = "cpu",
        stream: Any = None,
        limits: Limits = Limits(),
        weights: BuiltWeights = BuiltWeights(),
    ) -> None:
        self.engines = engines
        self.weights = weights
        self.text = PromptEncoder(tokenizers, engines[TEXT_ENCODER], info.dims.text_max_length,
                                  info.zero_empty_negative, info.dims.text_hidden_sizes)
        self.denoiser: Denoiser = make_denoiser(engines)
        self.scheduler_config = scheduler_config
        self.info = info
        self.dims = info.dims
        self.prediction_type = info.prediction_type
        self.model_name = model_name
        self.backend = backend
        self.precision = precision
        self.device = torch.device(device)
        self.stream = stream  # a torch CUDA stream the engines run on (TensorRT), or None
        self.limits = limits
        self.clock = StageClock(self.device)
        # --cuda-graph: graphs and their static buffers, kept across calls; the lock serializes their use.
        self.graphs = GraphCache(CudaGraphCapturer())
        self._graphs_lock = threading.Lock()

    @property
    def default_size(self) -> tuple[int, int]:
        size = self.dims.default_image_size
        height, width = self.limits.height, self.limits.width
        return (height.opt if height else size, width.opt if width else size)

    def __call__(self, prompt: str | None = None, *, output_type: str = "pil", **kwargs: Any) -> Any:
        """diffusers' calling convention: ``pipe(prompt, num_inference_steps=..., generator=...,
        num_images_per_prompt=..., guidance_scale=..., negative_prompt=..., height=...,
        width=..., clip_skip=...)`` (our field names work too) returns an object with ``.images``:
        PIL images (``output_type="pil"``, each carrying its metadata) or a float array
        ``[B, H, W, 3]`` in [0, 1] (``"np"``). ``clip_skip`` has diffusers' meaning here (layers
        skipped: 1 is A1111's and ``generate``'s 2; None or 0: none). ``prompt_embeds=`` (with
        ``negative_prompt_embeds``, and SDXL's ``pooled_prompt_embeds`` and
        ``negative_pooled_prompt_embeds``), as diffusers names them, replace the prompts: the text
        engine is skipped (``answer_trt.prompts.embeds``; the images' metadata cannot replay them)."""
        embeds = None
        if any(kwargs.get(name) is not None for name in EMBED_KEYWORDS):
            if prompt or kwargs.get("negative_prompt"):
                raise UserInputError("pass a prompt or prompt_embeds (and a negative prompt or "
                                     "negative_prompt_embeds), not both")
            embeds = check_prompt_embeds(self.dims, self.limits.prompt_chunks,
                                         {name: kwargs.pop(name, None) for name in EMBED_KEYWORDS})
        for name in EMBED_KEYWORDS:
            kwargs.pop(name, None)  # given as None: as diffusers, nothing
        if "clip_skip" in kwargs:
            skipped = kwargs.pop("clip_skip")
            if skipped is not None:
                if isinstance(skipped, bool) or not isinstance(skipped, int) or skipped < 0:
                    raise UserInputError(f"clip_skip (diffusers' meaning: layers skipped) must be an integer >= 0, "
                                         f"got {skipped!r}")
                kwargs["clip_skip"] = skipped + 1
        result = self.generate(prompt or "", embeds=embeds, **kwargs)
        if output_type == "pil":
            return result
        if output_type == "np":
            import numpy as np

            return replace(result, images=np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in result.images]))
        raise UserInputError(f"output_type {output_type!r}: choose pil or np")

    def on_stream(self) -> contextlib.AbstractContextManager[Any]:
        return torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()

    def generate(
        self,
        prompt: str,
        *,
        fused: bool = True,
        cuda_graph: bool = False,
        callback: StepCallback | None = None,
        image: Any = None,
        mask_image: Any = None,
        control_image: Any = None,
        embeds: PromptEmbeds | None = None,
        **fields: Any,
    ) -> Generation:
        """Generate ``batch`` images for ``prompt``. ``fields`` are the request schema's
        (``answer_trt.schema.GenerateRequest``, each with its bounds in ``answer-trt generate
        --help``; docs/ANSWER.md for the guidance ones); an unknown keyword is refused with
        the closest name. An empty prompt
        is valid: its embedding is c_0, so CFG becomes unconditional sampling.
        ``fused=False`` calls the UNet once per branch (the reference); ``cuda_graph``
        replays each step as a CUDA graph. ``image`` (a path, PIL image or ``[H, W, 3]`` array)
        makes it img2img with ``strength`` (``answer_trt.img2img``): the image's size is the
        output's, unless ``height``/``width`` resize it. ``mask_image`` (diffusers' keyword; white:
        repaint) with it makes it inpainting (``answer_trt.inpaint``; ``mask_blur``). ``control_image`` (one
        image, or one per ControlNet) drives the folder's ControlNets (``answer_trt.controlnet``). ``embeds``:
        given text conditions (``__call__``'s ``prompt_embeds``) instead of the prompts'."""
        init = None
        if image is not None:
            init = load_init_image(image, fields.get("height"), fields.get("width"))
            fields = {**fields, "height": init.height, "width": init.width,
                      "image_sha256": fields.get("image_sha256") or init.sha256}
            if mask_image is not None:
                from answer_trt.inpaint import with_mask

                init = with_mask(init, mask_image, fields.get("mask_blur", 0))
                fields["mask_sha256"] = fields.get("mask_sha256") or init.mask_sha256
        elif mask_image is not None:
            raise UserInputError("mask_image is inpainting's: pass the image to repaint too (image=...)")
        control = None
        if control_image is not None:
            height, width = fields.get("height") or self.default_size[0], fields.get("width") or self.default_size[1]
            control = load_control_images(control_image, len(controlnet_engines(self.engines)), height, width)
            fields = {**fields, "control_image_sha256": fields.get("control_image_sha256") or control.sha256}
        return self.run(make_request(prompt, fields), fused=fused, cuda_graph=cuda_graph, callback=callback,
                        init=init, embeds=embeds, control=control)

    def run(
        self, request: GenerateRequest, *, fused: bool = True, cuda_graph: bool = False,
        callback: StepCallback | None = None, init: InitImage | None = None, embeds: PromptEmbeds | None = None,
        control: ControlImages | None = None,
    ) -> Generation:
        """``generate`` for a ready ``GenerateRequest`` (what serving and replay hold): the
        steps every request goes through, ``plan`` -> ``prepare`` -> ``program`` (run here one
        call at a time; the serving batcher runs many together) -> ``vae_decode`` -> ``finish``.
        ``init``: img2img's input image (``request.image_sha256`` names it); ``control``: the
        ControlNets' images (``request.control_image_sha256``)."""
        if callback is not None and not callable(callback):
            raise UserInputError(f"callback must be a function of (step index, number of steps), got "
                                 f"{type(callback).__name__}")
        plan = self.plan(request, init, embeds, control)
        if cuda_graph:
            self._check_graphable(plan)
        with self.on_stream():
            started = self.clock()
            cond, noise = self.prepare(request.prompt, request.negative_prompt, plan.config, request.prompt_syntax,
                                       embeds)
            start, encode_s = None, 0.0
            if init is not None and plan.start is not None:
                encode_started = self.clock()
                start = self.image_start(plan, init)
                noise, cond = start.latents, start.condition(cond)
                encode_s = self.clock() - encode_started
            if control is not None:
                cond = self.attach_control(plan, cond, control)
            text_done = self.clock()
            if cuda_graph:
                latents = self._sample_graphed(noise, cond, plan, callback)
            else:
                latents = run_program(self.program(plan, cond, noise, callback, start),
                                      BranchEvaluator(self.denoiser, fused))
            denoise_done = self.clock()
            images = self.finish(latents, self.vae_decode(latents), plan.params)
            timings = Timings(text_done - started - encode_s, denoise_done - text_done, self.clock() - denoise_done,
                              plan.denoising_steps, encode_s)
        return Generation(images, plan.params, timings, plan.config)

    def attach_control(self, plan: RequestPlan, cond: Conditioning, control: ControlImages) -> Conditioning:
        """``cond`` with the request's control images, scales, guidance window and guess mode on
        its rows (``answer_trt.controlnet.attach_control``)."""
        request, count = plan.request, len(self.weights.control_scales)
        windows = control_windows(plan.rule.timesteps, request.control_guidance_start, request.control_guidance_end,
                                  count)
        scale = request.controlnet_conditioning_scale
        scales = self.weights.control_scales if scale is None else (scale,) * count
        return attach_control(cond, control, scales, windows, plan.config.batch, self.device, request.guess_mode)

    def plan(self, request: GenerateRequest, init: InitImage | None = None,
             embeds: PromptEmbeds | None = None, control: ControlImages | None = None) -> RequestPlan:
        """Check ``request`` against these engines (``check_request``; img2img's ``init`` image
        against it, ``answer_trt.img2img.check_init``; given ``embeds``' shapes) and make its scheduler
        and step rule; no engine work. Raises ``UserInputError`` with the CLI's messages. Warns when a
        negative prompt is ignored (guidance off at w <= 1)."""
        strength = check_init(request, init, has_encoder=VAE_ENCODER in self.engines,
                              rebuild_command=self.limits.rebuild_command(components="all"),
                              sdxl=bool(self.dims.pooled_size), multiple=self.dims.size_multiple,
                              height=self.limits.height, width=self.limits.width, inpaint_unet=self.dims.inpaint_unet)
        config = self.check_request(request.sampling_config(), request.prompt)
        # ControlNet's images (a request naming some needs them: the serving batcher runs none yet).
        check_control(request, control, config.height or 0, config.width or 0)
        if request.negative_prompt and not make_guider(config.guidance).reads_negative:
            logger.warning("the negative prompt is ignored: at guidance_scale %g <= 1 guidance is off and only the "
                           "prompt's prediction is used (as in diffusers); pass a guidance_scale above 1 to use it",
                           config.guidance.guidance_scale)
        if embeds is not None:
            chunks = embeds.chunks
        else:
            chunks = self.check_prompts(request) if request.prompt_syntax == "a1111" else 1
        scheduler = make_scheduler(self.scheduler_config, config.scheduler)
        rule = make_step_rule(scheduler, config.steps)  # e.g. too many steps for the scheduler fails here
        start = None
        if strength is not None:
            rule, start = started(scheduler, rule, config.steps, strength)
        extra = {"prompt_embeds": "given (not recorded)"} if embeds is not None else {}
        return RequestPlan(request, config, scheduler, rule,
                           self.parameters(request, config, type(scheduler).__name__, strength, extra),
                           start=start, strength=strength, text_chunks=chunks)

    def check_prompts(self, request: GenerateRequest) -> int:
        """Check a request's prompts in A1111's syntax before anything runs: what is not
        supported, ``<lora:...>`` tags against the LoRAs built in (``prompts.loras``), and
        their chunks against the UNet's text axis. Returns the chunks both conditions take."""
        chunks = 1
        for which, text in (("prompt", request.prompt), ("negative prompt", request.negative_prompt)):
            if text is None:
                continue
            tokenized = self.text.tokenize_a1111(text)
            check_lora_tags(tokenized.parsed.networks, self.weights.loras, self.limits.rebuild_command())
            built = self.limits.prompt_chunks
            length = self.dims.text_max_length - 2
            if tokenized.chunks > MAX_PROMPT_CHUNKS:
                raise UserInputError(
                    f"the {which} is {tokenized.chunks} chunks of {length} tokens (A1111 syntax, BREAK included), "
                    f"beyond the {MAX_PROMPT_CHUNKS} any build takes: shorten it")
            if built is not None and tokenized.chunks > built:
                raise UserInputError(
                    f"the {which} is {tokenized.chunks} chunks of {length} tokens (A1111 syntax, BREAK included), "
                    f"beyond the {built} these engines were built for: shorten it, or rebuild with "
                    f"`{self.limits.rebuild_command(max_prompt_chunks=tokenized.chunks)}`")
            chunks = max(chunks, tokenized.chunks)
        return chunks

    def program(
        self, plan: RequestPlan, cond: Conditioning, noise: torch.Tensor, callback: StepCallback | None = None,
        start: ImageStart | None = None,
    ) -> SamplingProgram:
        """The request's sampling loop as a program that yields each UNet call's rows
        (``answer_trt.sampler.sampling_program``) and returns the final latents. A stochastic
        sampler draws its step noise from the generators of the initial ``noise``, continued
        (``schedulers.StepNoise``), as diffusers' pipelines do. From an input image, ``start``
        (``image_start``) gives the latents (``noise``), its generators continued, and inpainting's
        blend after each step."""
        rule = plan.rule
        if rule.draws_noise:
            step_noise = start.step_noise if start is not None else None
            rule = rule.seeded(step_noise or StepNoise.for_request(plan.config.seed, plan.config.seeds, noise.shape))
        return sampling_program(noise, cond, rule, plan.config.guidance, prediction_type=self.prediction_type,
                                callback=callback, noised=start.noised if start is not None else False,
                                after_step=start.after_step if start is not None else None)

    def image_start(self, plan: RequestPlan, init: InitImage) -> ImageStart:
        """Where a run from an input image starts: img2img's (``answer_trt.img2img.start_latents``)
        or, with a mask, inpainting's (``answer_trt.inpaint.inpaint_start``)."""
        from answer_trt.img2img import start_latents
        from answer_trt.inpaint import inpaint_start

        assert plan.start is not None and plan.strength is not None  # a plan from an input image
        config, encoder = plan.config, self.engines[VAE_ENCODER]
        if init.mask is None:
            return start_latents(encoder, init, plan.scheduler, plan.start, config.batch, config.seed, config.seeds,
                                 self.device)
        factor = self.dims.vae_scale_factor
        shape = (self.dims.latent_channels, init.height // factor, init.width // factor)
        return inpaint_start(encoder, init, plan.scheduler, plan.start, plan.denoising_steps, plan.strength, shape,
                             config.batch, config.seed, config.seeds, self.device, self.dims.inpaint_unet)

    def request_config(self, prompt: str, **fields: Any) -> SamplingConfig:
        """A request's validated configuration, sized against these engines
        (``check_request``); ``fields`` as ``generate``'s. Raises ``UserInputError`` with the
        CLI's messages."""
        return self.check_request(make_request(prompt, fields).sampling_config(), prompt)

    def prepare(
        self, prompt: str, negative_prompt: str | None, config: SamplingConfig, syntax: str = "plain",
        embeds: PromptEmbeds | None = None,
    ) -> tuple[Conditioning, torch.Tensor]:
        """The text conditions of ``config.batch`` images (c_p, and c_0 or the negative
        prompt's; SDXL time ids added; ``syntax``: the request's ``prompt_syntax``) and their
        initial noise, drawn from the seed (or from each image's own seed). ``embeds``: given
        conditions instead of the prompts' (``__call__``'s ``prompt_embeds``)."""
        assert config.height is not None and config.width is not None  # resolved by check_request
        if embeds is not None:
            c_p, c_neg = self.text.with_negative(embeds.positive, embeds.negative, config.clip_skip)
        else:
            c_p, c_neg = self.text.encode(prompt, negative_prompt, config.clip_skip, syntax)
        if self.dims.time_ids_size:
            c_p, c_neg = (self.with_time_ids(c, config.height, config.width) for c in (c_p, c_neg))
        # On the device once (SDXL's time ids are made on the host): no copy per UNet call.
        c_p, c_neg = c_p.to(self.device), c_neg.to(self.device)
        cond = Conditioning(c_p.expand(config.batch), c_neg.expand(config.batch))
        shape = (config.batch, self.dims.latent_channels, config.height // self.dims.vae_scale_factor,
                 config.width // self.dims.vae_scale_factor)
        # Drawn on the CPU with CPU generators, as diffusers does, so seeds agree everywhere: one
        # generator for the batch, or one per image (diffusers' list of generators, ``seeds``).
        noise = draw_noise(noise_generators(config.seed, config.seeds), shape).to(self.device)
        return cond, noise

    def finish(self, latents: torch.Tensor, decoded: torch.Tensor, params: dict[str, str]) -> list[Image.Image]:
        """Images ``[B, 3, H, W]`` in [-1, 1] decoded from ``latents`` -> PIL images carrying
        ``params`` as PNG text; raises ``NonFiniteImageError`` (see ``check_finite``) instead
        of returning a black picture."""
        self.check_finite(latents, decoded)
        return to_pil(decoded, params)

    def check_finite(self, latents: torch.Tensor, images: torch.Tensor) -> None:
        """Raise ``NonFiniteImageError`` if the denoised ``latents`` (the UNet's doing) or
        the decoded ``images`` (the VAE's) hold NaN or inf, naming the component and the fix
        that applies to this backend and precision."""
        for component, values in (("UNet (denoising)", latents), ("VAE decoder", images)):
            if not torch.isfinite(values).all():
                request = "a large guidance_scale or negative_scale drives latents out of range: lower it; else "
                raise NonFiniteImageError(f"the {component} produced NaN or inf values: {request}"
                                          f"{self.precision_advice()}")

    def precision_advice(self) -> str:
        """What to change when a component overflows, for this backend and precision."""
        if self.backend == "torch":
            if self.precision == "fp32":
                return "they appear in fp32 too: check the model's weights"
            return "the torch backend runs fp16 on CUDA; run the model in fp32 with --device cpu"
        if self.precision == "fp32":
            return "these engines are fp32 already: check the model's weights"
        return f"{self.precision} overflowed; rebuild in fp32: `{self.limits.rebuild_command(precision='fp32')}`"

    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents ``[B, C, h, w]`` -> images ``[B, 3, H, W]`` in [-1, 1]."""
        decoder = self.engines[VAE_DECODER]
        return decoder.run({decoder.spec.input_names[0]: latents})[decoder.spec.output_names[0]]

    def _check_graphable(self, plan: RequestPlan) -> None:
        if plan.start is not None:
            raise UserInputError("--cuda-graph runs text to image only: drop --cuda-graph for img2img")
        if self.graphs.capturer.requires_cuda and self.device.type != "cuda":
            raise UserInputError(CUDA_GRAPH_NEEDS_GPU)
        reason = refusal(plan.config.guidance, plan.rule, plan.scheduler)
        if reason is not None:
            raise UserInputError(reason)

    def _sample_graphed(
        self, noise: torch.Tensor, cond: Conditioning, plan: RequestPlan, callback: StepCallback | None
    ) -> torch.Tensor:
        with self._graphs_lock:  # the static buffers serve one generation at a time
            return sample_graphed(self.denoiser, noise, cond, plan.scheduler, plan.config.steps, plan.config.guidance,
                                  prediction_type=self.prediction_type, cache=self.graphs, callback=callback)

    @staticmethod
    def with_time_ids(cond: TextCondition, height: int, width: int) -> TextCondition:
        """SDXL micro-conditioning with diffusers' defaults: original size = target size =
        the requested size, crop top-left = (0, 0)."""
        time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32)
        return replace(cond, time_ids=time_ids)

    def check_request(self, config: SamplingConfig, prompt: str) -> SamplingConfig:
        """Fill in the default size, refuse what the engines were not built for, and size
        the work against the memory limit (``answer_trt.rules.check_memory``) before any
        of it is allocated."""
        if not isinstance(prompt, str):
            raise UserInputError(f"prompt must be a string, got {type(prompt).__name__}")
        default_h, default_w = self.default_size
        given = config.height is not None and config.width is not None
        config = replace(config, height=config.height or default_h, width=config.width or default_w)
        limits, factor = self.limits, self.dims.size_multiple
        for side, value, built in (("height", config.height, limits.height), ("width", config.width, limits.width)):
            assert value is not None  # filled in above
            check_size(f"--{side}", value, factor)
            if built is not None and not built.low <= value <= built.high:
                raise UserInputError(
                    f"--{side} {value} is outside what was built ({side} {built}): use a {side} in that range, "
                    f"or rebuild with `{limits.rebuild_command(**{side: value})}` (a MIN:MAX range works too)"
                )
        if config.clip_skip > self.dims.max_clip_skip:
            raise UserInputError(f"clip_skip {config.clip_skip} is beyond this model's text encoder: use "
                                 f"{self.dims.max_clip_skip} or less (1: the last layer, no skip)")
        if limits.max_batch is not None and config.batch > limits.max_batch:
            raise UserInputError(
                f"--batch {config.batch} is beyond the built maximum of {limits.max_batch}: use --batch "
                f"{limits.max_batch} or fewer, or rebuild with `{limits.rebuild_command(max_batch=config.batch)}`"
            )
        assert config.height is not None and config.width is not None
        check_memory(self.dims, config.batch, config.height, config.width, self.precision,
                     size_label="" if given else "the default size, ")
        return config

    def parameters(self, request: GenerateRequest, config: SamplingConfig, scheduler_class: str,
                   strength: float | None = None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The PNG text chunks of the request's images (``schema.parameters``): its fields as
        resolved for these engines (size, wn, the guidance interval, img2img's strength), the scheduler
        class that ran, model, backend, precision, and the weights variant and LoRAs where there are
        any; then ``extra``."""
        resolved = {"negative_scale": config.guidance.wn, "guidance_min_sigma": config.guidance.interval_min_sigma,
                    "height": config.height, "width": config.width, "strength": strength}
        entries = {"scheduler_class": scheduler_class, "model": self.model_name, "backend": self.backend,
                   "precision": self.precision, **self.weights.parameters(), **(extra or {})}
        return schema_parameters(request, resolved, entries)
