"""Stage 3: the transformer, by flow matching on VAE latents, conditioned exactly as the server conditions it.

The VAE and the VLM are frozen (stages 1 and 2). Every condition is built by the
server's own code, not a re-implementation:

* prompts go through ``qwen_image.prompt.PromptEncoder`` (same templates, same computed
  drop of the template prefix, same truncation): ``encode_texts`` for text-to-image,
  ``encode_with_images`` with the source picture for edits;
* the edit source is prepared by ``qwen_image.source.prepare_source`` at the checkpoint's
  source area, encoded with the posterior mode, standardised and packed with
  ``qwen_image.latents`` as the runner does, and appended to the target tokens; the loss
  covers the target tokens only (the runner keeps only their velocity);
* prompts of a batch are right-padded and masked with ``qwen_image.denoise.pad_prompts``;
* one prompt in ten is replaced by the server's unconditional prompt (``" "``, for an
  edit with the source image kept), which is what classifier-free guidance subtracts.

Beside the flow loss, ``change_probe.ChangeProbe`` trains the middle block to know which
of an edit's tokens the instruction changes; it is discarded when the transformer is saved.

The examples are encoded once, before the first step, into an ``ExamplePool`` that every
step samples with fresh noise: the frozen encoders cost more per example than the
transformer's training step does.

Noise levels are drawn logit-normal around ``NOISE_LOCATION`` and then shifted as the
scheduler shifts them for a 64×64 picture (16 latent tokens). The transformer starts as
DiT's adaLN-Zero: every block the identity, the output zero. The closing evaluation runs
the server's ``QwenImageFlowRunner`` on the saved checkpoint with the server's default
steps and guidance and judges with ShapesBench's judges.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from diptych.bench.shapes import bench as sb
from diptych.types import ImageRequest
from training.micro.change_probe import ChangeProbe, changed_tokens
from training.micro.checkpoint import (
    EDIT_SOURCE_AREA,
    SIZE,
    Architecture,
    build_transformer,
    load_processor,
    load_tokenizer,
)
from diptych.bench.shapes.data import drawing_example, edit_example
from training.micro.training import (
    Budget,
    LossLog,
    StageResult,
    make_optimizer,
    run_stage,
    step_generator,
)
from diptych.bench.shapes.world import Split
from diptych.models.qwen_image import latents as lat
from diptych.models.qwen_image.denoise import pad_prompts
from diptych.models.qwen_image.prompt import PromptEncoder
from diptych.models.qwen_image.schedule import ShiftConfig, resolution_shift
from diptych.models.qwen_image.source import prepare_source
from diptych.models.qwen_image.state import EMPTY_NEGATIVE_PROMPT
from diptych.models.qwen_image.vae_fast import install_single_frame_paths

logger = logging.getLogger(__name__)

PROMPT_DROPOUT = 0.1
# Examples encoded once for the whole stage; see ExamplePool.
POOL_EXAMPLES = 16_384
# The share of edits in the pool, in every batch and in the flow loss (the rest are text-to-image).
# 0.625 against 0.5, on the same VAE and VLM, ShapesBench seeds 0 / 1 through the server: training
# seed 1, edit 78.1% / 82.9% against 75.2% / 76.2%, text-to-image 95.2% / 95.2% against 97.1% / 97.1%;
# training seed 0, edit 84.8% / 75.2% against 71.4% / 68.6%, text-to-image 94.3% / 90.5% against
# 97.1% / 96.2%.
EDIT_SHARE = 0.625
SEED_STRIDE = 10_000_000
# Location of the logit-normal noise levels, before the scheduler's shift. At 0 (SD3's
# choice) 11% of training σ fall above 0.85, where the server's 20-step sampler spends a
# quarter of its steps and where a prompt's choices (shape, colour, cell) are made; at 0.5,
# 23% do, and 3% fall below 0.3 (9% at 0).
NOISE_LOCATION = 0.5
EVAL_STEPS = 20  # the server's default num_inference_steps
# Weight of the change probe's loss against the two flow losses' mean. On v8's VLM, seed 0,
# ShapesBench seeds 0 / 1 (105 items each): edit 75% / 65% at 0.25 (run e8p) and 50% / 66%
# at 1 (e8p1), against 51% / 52% without the probe (d8); text-to-image 97% / 96%, 91% / 85%
# and 93% / 93%. At 1 both flow losses stayed behind d8's throughout.
CHANGE_PROBE_WEIGHT = 0.25


@dataclass(frozen=True)
class Frozen:
    """The frozen parts the transformer is trained against."""

    vae: Any
    encoder: PromptEncoder
    shift: ShiftConfig


@dataclass(frozen=True)
class DiTReport:
    result: StageResult
    t2i_accuracy: float | None
    edit_accuracy: float | None

    def summary(self) -> dict[str, object]:
        return {"steps": self.result.steps, "seconds": round(self.result.seconds, 1), **self.result.final_losses,
                "t2i_accuracy": self.t2i_accuracy, "edit_accuracy": self.edit_accuracy}


def load_frozen(out: Path) -> Frozen:
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler
    from transformers import Qwen2_5_VLForConditionalGeneration

    vae = AutoencoderKLQwenImage.from_pretrained(out / "vae").eval().requires_grad_(False)
    install_single_frame_paths(vae)
    text_encoder = Qwen2_5_VLForConditionalGeneration.from_pretrained(out / "text_encoder").eval().requires_grad_(False)
    encoder = PromptEncoder(text_encoder, load_tokenizer(out), load_processor(out), torch.float32)
    shift = ShiftConfig.from_scheduler_config(FlowMatchEulerDiscreteScheduler.load_config(out / "scheduler"))
    return Frozen(vae, encoder, shift)


@torch.no_grad()
def encode_latents(vae: Any, images: Sequence[Image.Image]) -> torch.Tensor:
    """Packed, standardised latents ``[B, tokens, 4·z]`` of pictures, as the runner encodes an edit source."""
    pixels = torch.cat([lat.pil_to_pixels(image) for image in images])
    encoded = vae.encode(pixels).latent_dist.mode()
    return lat.pack(lat.normalize(encoded, vae.config.latents_mean, vae.config.latents_std))


def shifted_sigmas(t: torch.Tensor, image_seq_len: int, shift: ShiftConfig) -> torch.Tensor:
    """Noise levels ``t`` in (0, 1) moved as the scheduler moves its sigmas for this many image tokens."""
    if not shift.use_dynamic_shifting:
        return shift.shift * t / (1 + (shift.shift - 1) * t)
    mu = resolution_shift(image_seq_len, shift)
    factor = math.exp(mu) if shift.time_shift_type == "exponential" else mu
    return factor / (factor + (1 / t - 1))


def flow_loss(transformer: Any, frozen: Frozen, clean: torch.Tensor, text: torch.Tensor, mask: torch.Tensor | None,
              generator: torch.Generator, source: torch.Tensor | None = None) -> torch.Tensor:
    """Velocity-matching loss on the target tokens: ``x_t = (1-σ)·x0 + σ·ε``, target ``ε - x0``."""
    batch, tokens = clean.shape[0], clean.shape[1]
    noise = torch.randn(clean.shape, generator=generator)
    t = torch.sigmoid(NOISE_LOCATION + torch.randn(batch, generator=generator)).clamp(1e-3, 1 - 1e-3)
    sigma = shifted_sigmas(t, tokens, frozen.shift)
    noisy = (1 - sigma[:, None, None]) * clean + sigma[:, None, None] * noise
    side = math.isqrt(tokens)  # square pictures: a side×side grid of packed tokens
    shapes = [(1, side, side)] if source is None else [(1, side, side), (1, side, side)]
    hidden = noisy if source is None else torch.cat([noisy, source], dim=1)
    output = transformer(hidden_states=hidden, timestep=sigma, encoder_hidden_states=text,
                         encoder_hidden_states_mask=mask, img_shapes=[shapes] * batch, return_dict=False)[0]
    return F.mse_loss(output[:, :tokens], noise - clean)


def zero_init_modulation(transformer: Any) -> None:
    """adaLN-Zero (DiT): every block's modulation, hence its gates, and the output layer start
    at zero, so each block begins as the identity and the first prediction is zero.

    Measured after 1,000 steps from the same pool and noise, against diffusers' default
    initialisation: held-out flow loss at σ 0.9 of 0.535 against 0.553 for text-to-image,
    0.291 against 0.366 for edits.
    """
    with torch.no_grad():
        for block in transformer.transformer_blocks:
            for modulation in (block.img_mod[1], block.txt_mod[1]):
                modulation.weight.zero_()
                modulation.bias.zero_()
        for layer in (transformer.norm_out.linear, transformer.proj_out):
            layer.weight.zero_()
            layer.bias.zero_()


def dropped(prompts: Sequence[str], rng: random.Random) -> list[str]:
    """Prompts with one in ten replaced by the unconditional prompt the server guides against."""
    return [EMPTY_NEGATIVE_PROMPT if rng.random() < PROMPT_DROPOUT else prompt for prompt in prompts]


@dataclass(frozen=True)
class Encoded:
    """One training example as the transformer receives it, encoded once by the frozen parts."""

    clean: torch.Tensor  # packed latents of the picture to draw, [tokens, channels]
    text: torch.Tensor  # the prompt's condition, [1, L, D]
    source: torch.Tensor | None = None  # an edit's packed source latents, [tokens, channels]
    changed: torch.Tensor | None = None  # an edit's tokens that differ from the source, [tokens] (ChangeProbe)


def t2i_examples(frozen: Frozen, start: int, count: int, rng: random.Random) -> list[Encoded]:
    """Drawings ``start … start+count-1`` of the training split, encoded."""
    examples = [drawing_example(Split.TRAIN, start + j) for j in range(count)]
    prompts = dropped([example.caption.text for example in examples], rng)
    embeddings = frozen.encoder.encode_texts(prompts)
    clean = encode_latents(frozen.vae, [example.image for example in examples])
    # clone: the encoder runs under inference_mode, and a view would keep the whole batch alive.
    return [Encoded(row.clone(), embedding.embeds.clone()) for row, embedding in zip(clean, embeddings, strict=True)]


def edit_examples(frozen: Frozen, start: int, count: int, rng: random.Random) -> list[Encoded]:
    """Edits ``start … start+count-1`` of the training split, encoded (the source prepared as the server prepares it)."""
    examples = [edit_example(Split.TRAIN, start + j) for j in range(count)]
    sources = [prepare_source(example.source_image, EDIT_SOURCE_AREA) for example in examples]
    prompts = dropped([example.triplet.instruction for example in examples], rng)
    embeddings = frozen.encoder.encode_with_images(list(zip(prompts, sources, strict=True)))
    targets = encode_latents(frozen.vae, [example.target_image for example in examples])
    source_latents = encode_latents(frozen.vae, sources)
    side = math.isqrt(targets.shape[1])
    changed = [changed_tokens(example.source_image, example.target_image, side) for example in examples]
    return [Encoded(target.clone(), embedding.embeds.clone(), source.clone(), change)
            for target, embedding, source, change in zip(targets, embeddings, source_latents, changed, strict=True)]


def stack(examples: Sequence[Encoded]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """A batch: clean latents, right-padded conditions and their mask (as the runner pads them), sources."""
    text, mask = pad_prompts([example.text for example in examples])
    sources = [example.source for example in examples]
    source = torch.stack(sources) if all(s is not None for s in sources) else None  # type: ignore[arg-type]
    return torch.stack([example.clean for example in examples]), text, mask, source


@dataclass(frozen=True)
class ExamplePool:
    """Training examples encoded once and sampled by every step.

    Encoding (the VLM over each prompt, the VAE over each picture) costs 10 ms an example at
    two threads, more than the transformer's step costs per example (0.18 s for 16, 0.41 s
    for 64, measured with two heads of 64; four of 32 cost 4% more); encoding each example
    once and revisiting it with fresh noise lets the stage take larger batches and more steps
    in the same minutes.
    """

    t2i: tuple[Encoded, ...]
    edit: tuple[Encoded, ...]

    def batch(self, rng: random.Random, size: int, edit_share: float) -> tuple[list[Encoded], list[Encoded]]:
        """``size`` examples, ``edit_share`` of them edits and the rest text-to-image, drawn without repetition."""
        t2i, edits = split(size, edit_share)
        return rng.sample(self.t2i, min(t2i, len(self.t2i))), rng.sample(self.edit, min(edits, len(self.edit)))


def split(size: int, edit_share: float) -> tuple[int, int]:
    """``size`` examples as (text-to-image, edits): at least one of each."""
    edits = min(max(round(size * edit_share), 1), size - 1)
    return size - edits, edits


def build_pool(frozen: Frozen, seed: int, size: int, edit_share: float, *, chunk: int = 64,
               show_progress: bool = True) -> ExamplePool:
    """``size`` examples split by ``edit_share``; example indices unique to (seed, position)."""
    t2i: list[Encoded] = []
    edit: list[Encoded] = []
    counts = split(max(size, 2), edit_share)
    with tqdm(total=sum(counts), desc="dit examples", unit="ex", disable=not show_progress, dynamic_ncols=True) as bar:
        for start in range(0, max(counts), chunk):
            # Past the smaller kind's end a chunk holds only the other kind.
            t2i_count, edit_count = (max(min(chunk, count - start), 0) for count in counts)
            rng = random.Random(f"diptych-micro/dit-pool/{seed}/{start}")
            if t2i_count:
                t2i += t2i_examples(frozen, seed * SEED_STRIDE + start, t2i_count, rng)
            if edit_count:
                edit += edit_examples(frozen, seed * SEED_STRIDE + start, edit_count, rng)
            bar.update(t2i_count + edit_count)
    return ExamplePool(tuple(t2i), tuple(edit))


def train_dit(out: Path, arch: Architecture, budget: Budget, seed: int, log: LossLog, *, eval_items: int = 40,
              show_progress: bool = True) -> DiTReport:
    frozen = load_frozen(out)
    started = time.monotonic()
    pool = build_pool(frozen, seed, min(POOL_EXAMPLES, budget.steps * budget.batch_size), EDIT_SHARE,
                      show_progress=show_progress)
    encoding = time.monotonic() - started
    log.write({"stage": "dit", "event": "pool", "examples": len(pool.t2i) + len(pool.edit), "seconds": round(encoding, 1)})
    # The stage's time cap covers the encoding too.
    budget = dataclasses.replace(budget, max_minutes=max(budget.max_minutes - encoding / 60, 0.0))
    torch.manual_seed(seed)
    transformer = build_transformer(arch, out)
    zero_init_modulation(transformer)
    transformer.train()
    probe = ChangeProbe(transformer.inner_dim)
    optimizer = make_optimizer(torch.nn.ModuleList([transformer, probe]), budget)

    def step_fn(step: int) -> dict[str, float]:
        generator = step_generator(seed, "dit", step)
        t2i, edits = pool.batch(random.Random(f"diptych-micro/dit/{seed}/{step}"), budget.batch_size, EDIT_SHARE)
        clean, text, mask, _ = stack(t2i)
        loss_t2i = flow_loss(transformer, frozen, clean, text, mask, generator)
        clean, text, mask, source = stack(edits)
        with probe.reading(transformer):
            loss_edit = flow_loss(transformer, frozen, clean, text, mask, generator, source)
        loss_change = probe.loss(torch.stack([example.changed for example in edits]))  # type: ignore[misc]
        loss = (1 - EDIT_SHARE) * loss_t2i + EDIT_SHARE * loss_edit + CHANGE_PROBE_WEIGHT * loss_change
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        optimizer.step()
        if eval_items and budget.eval_every and (step + 1) % budget.eval_every == 0 and step + 1 < budget.steps:
            transformer.save_pretrained(out / "transformer")
            t2i_accuracy, edit_accuracy = evaluate_images(out, eval_items)
            log.write({"stage": "dit", "event": "eval", "step": step + 1, "t2i_accuracy": t2i_accuracy,
                       "edit_accuracy": edit_accuracy})
            logger.info("dit step %d: held-out text-to-image %.0f%%, edit %.0f%%", step + 1, 100 * t2i_accuracy,
                        100 * edit_accuracy)
        return {"loss": loss.item(), "t2i": loss_t2i.item(), "edit": loss_edit.item(), "change": loss_change.item()}

    result = run_stage("dit", budget, optimizer, step_fn, log, show_progress=show_progress)
    transformer.eval()
    transformer.save_pretrained(out / "transformer")
    t2i, edit = evaluate_images(out, eval_items) if eval_items else (None, None)
    log.write({"stage": "dit", "event": "eval", "step": result.steps, "t2i_accuracy": t2i, "edit_accuracy": edit})
    logger.info("dit: %d steps in %.0f s; held-out text-to-image %s, edit %s", result.steps, result.seconds, t2i, edit)
    return DiTReport(result, t2i, edit)


def evaluate_images(out: Path, count: int, batch: int = 16) -> tuple[float, float]:
    """ShapesBench's text-to-image and edit items through the server's flow runner on the saved checkpoint."""
    from diptych.models.qwen_image.adapter import QwenImageAdapter

    # As the server would: the adapter's runner (declared source area) and default guidance.
    adapter = QwenImageAdapter(out)
    runner = adapter.build_flow_runner("cpu", "float32")
    guidance = adapter.capabilities().default_guidance_scale
    t2i_items, edit_items = sb.t2i_items(count, seed=0), sb.edit_items(count, seed=0)
    t2i_requests = [_request(f"t2i-{i}", item.prompt, guidance, item.noise_seed) for i, item in enumerate(t2i_items)]
    edit_requests = [_request(f"edit-{i}", item.instruction, guidance, item.noise_seed,
                              Image.open(io.BytesIO(item.source_png)).convert("RGB"))
                     for i, item in enumerate(edit_items)]
    t2i_images = _generate(runner, t2i_requests, batch)
    edit_images = _generate(runner, edit_requests, batch)
    t2i = sum(sb.judge_t2i(item, image).correct for item, image in zip(t2i_items, t2i_images, strict=True))
    edit = sum(sb.judge_edit(item.triplet, image).correct for item, image in zip(edit_items, edit_images, strict=True))
    return t2i / max(count, 1), edit / max(count, 1)


def _request(request_id: str, prompt: str, guidance: float, seed: int,
             source: Image.Image | None = None) -> ImageRequest:
    return ImageRequest(request_id=request_id, prompt=prompt, width=SIZE, height=SIZE,
                        num_inference_steps=EVAL_STEPS, guidance_scale=guidance, seed=seed,
                        source_images=(source,) if source is not None else ())


def _generate(runner: Any, requests: list[ImageRequest], batch: int) -> list[Image.Image]:
    images: list[Image.Image] = []
    for start in range(0, len(requests), batch):
        states = [state for prepared in runner.prepare(requests[start:start + batch]) for state in prepared]
        for _ in range(EVAL_STEPS):
            runner.step(states)
        images.extend(runner.decode(states))
    return images
