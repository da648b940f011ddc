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

Noise levels are drawn logit-normal and then shifted as the scheduler shifts them for a
64×64 picture (16 latent tokens), so training sees the sigmas inference visits. The
closing evaluation runs the server's ``QwenImageFlowRunner`` on the saved checkpoint with
the server's default steps and guidance and judges with ShapesBench's judges.
"""

from __future__ import annotations

import io
import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from diptych.bench import shapesbench as sb
from diptych.engine.types import ImageRequest
from diptych.models.micro.checkpoint import (
    EDIT_SOURCE_AREA,
    SIZE,
    Architecture,
    build_transformer,
    load_processor,
    load_tokenizer,
)
from diptych.models.micro.data import drawing_example, edit_example
from diptych.models.micro.training import (
    Budget,
    LossLog,
    StageResult,
    make_optimizer,
    run_stage,
    step_generator,
)
from diptych.models.micro.world import Split
from diptych.models.qwen_image import latents as lat
from diptych.models.qwen_image.denoise import pad_prompts
from diptych.models.qwen_image.prompt import PromptEncoder
from diptych.models.qwen_image.schedule import ShiftConfig, resolution_shift
from diptych.models.qwen_image.source import prepare_source
from diptych.models.qwen_image.state import EMPTY_NEGATIVE_PROMPT
from diptych.models.qwen_image.vae_fast import install_single_frame_paths

logger = logging.getLogger(__name__)

PROMPT_DROPOUT = 0.1
SEED_STRIDE = 10_000_000
EVAL_STEPS = 20  # the server's default num_inference_steps
EVAL_GUIDANCE = 4.0  # the server's default guidance_scale


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
    t = torch.sigmoid(torch.randn(batch, generator=generator)).clamp(1e-3, 1 - 1e-3)
    sigma = shifted_sigmas(t, tokens, frozen.shift)
    noisy = (1 - sigma[:, None, None]) * clean + sigma[:, None, None] * noise
    side = math.isqrt(tokens)  # square pictures: a side×side grid of packed tokens
    shapes = [(1, side, side)] if source is None else [(1, side, side), (1, side, side)]
    hidden = noisy if source is None else torch.cat([noisy, source], dim=1)
    output = transformer(hidden_states=hidden, timestep=sigma, encoder_hidden_states=text,
                         encoder_hidden_states_mask=mask, img_shapes=[shapes] * batch, return_dict=False)[0]
    return F.mse_loss(output[:, :tokens], noise - clean)


def trainable(embeds: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    # The encoder runs under inference_mode; its tensors cannot enter autograd until copied.
    return [embed.clone() for embed in embeds]


def dropped(prompts: Sequence[str], rng: random.Random) -> list[str]:
    """Prompts with one in ten replaced by the unconditional prompt the server guides against."""
    return [EMPTY_NEGATIVE_PROMPT if rng.random() < PROMPT_DROPOUT else prompt for prompt in prompts]


def t2i_batch(frozen: Frozen, seed: int, step: int, size: int, rng: random.Random
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    base = seed * SEED_STRIDE + step * size
    examples = [drawing_example(Split.TRAIN, base + j) for j in range(size)]
    prompts = dropped([example.caption.text for example in examples], rng)
    text, mask = pad_prompts(trainable([e.embeds for e in frozen.encoder.encode_texts(prompts)]))
    return encode_latents(frozen.vae, [example.image for example in examples]), text, mask


def edit_batch(frozen: Frozen, seed: int, step: int, size: int, rng: random.Random
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    base = seed * SEED_STRIDE + step * size
    examples = [edit_example(Split.TRAIN, base + j) for j in range(size)]
    sources = [prepare_source(example.source_image, EDIT_SOURCE_AREA) for example in examples]
    prompts = dropped([example.triplet.instruction for example in examples], rng)
    embeddings = frozen.encoder.encode_with_images(list(zip(prompts, sources, strict=True)))
    text, mask = pad_prompts(trainable([e.embeds for e in embeddings]))
    target = encode_latents(frozen.vae, [example.target_image for example in examples])
    return target, text, mask, encode_latents(frozen.vae, sources)


def train_dit(out: Path, arch: Architecture, budget: Budget, seed: int, log: LossLog, *, eval_items: int = 40,
              show_progress: bool = True) -> DiTReport:
    frozen = load_frozen(out)
    torch.manual_seed(seed)
    transformer = build_transformer(arch, out)
    transformer.train()
    optimizer = make_optimizer(transformer, budget)
    half = max(budget.batch_size // 2, 1)

    def step_fn(step: int) -> dict[str, float]:
        rng = random.Random(f"diptych-micro/dit/{seed}/{step}")
        generator = step_generator(seed, "dit", step)
        clean, text, mask = t2i_batch(frozen, seed, step, half, rng)
        loss_t2i = flow_loss(transformer, frozen, clean, text, mask, generator)
        clean, text, mask, source = edit_batch(frozen, seed, step, half, rng)
        loss_edit = flow_loss(transformer, frozen, clean, text, mask, generator, source)
        loss = (loss_t2i + loss_edit) / 2
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        optimizer.step()
        if eval_items and budget.eval_every and (step + 1) % budget.eval_every == 0 and step + 1 < budget.steps:
            transformer.save_pretrained(out / "transformer")
            t2i, edit = evaluate_images(out, eval_items)
            log.write({"stage": "dit", "event": "eval", "step": step + 1, "t2i_accuracy": t2i, "edit_accuracy": edit})
            logger.info("dit step %d: held-out text-to-image %.0f%%, edit %.0f%%", step + 1, 100 * t2i, 100 * edit)
        return {"loss": loss.item(), "t2i": loss_t2i.item(), "edit": loss_edit.item()}

    result = run_stage("dit", budget, optimizer, step_fn, log, show_progress=show_progress)
    transformer.eval()
    transformer.save_pretrained(out / "transformer")
    t2i, edit = evaluate_images(out, eval_items) if eval_items else (None, None)
    log.write({"stage": "dit", "event": "eval", "step": result.steps, "t2i_accuracy": t2i, "edit_accuracy": edit})
    logger.info("dit: %d steps in %.0f s; held-out text-to-image %s, edit %s", result.steps, result.seconds, t2i, edit)
    return DiTReport(result, t2i, edit)


def evaluate_images(out: Path, count: int, batch: int = 16) -> tuple[float, float]:
    """ShapesBench's text-to-image and edit items through the server's flow runner on the saved checkpoint."""
    from diptych.models.qwen_image.flow import QwenImageFlowRunner

    runner = QwenImageFlowRunner(out, "cpu", source_area=EDIT_SOURCE_AREA)
    t2i_items, edit_items = sb.t2i_items(count, seed=0), sb.edit_items(count, seed=0)
    t2i_requests = [_request(f"t2i-{i}", item.prompt) for i, item in enumerate(t2i_items)]
    edit_requests = [_request(f"edit-{i}", item.instruction, Image.open(io.BytesIO(item.source_png)).convert("RGB"))
                     for i, item in enumerate(edit_items)]
    t2i_images = _generate(runner, t2i_requests, batch)
    edit_images = _generate(runner, edit_requests, batch)
    t2i = sum(sb.judge_t2i(item, image).correct for item, image in zip(t2i_items, t2i_images, strict=True))
    edit = sum(sb.judge_edit(item.triplet, image).correct for item, image in zip(edit_items, edit_images, strict=True))
    return t2i / max(count, 1), edit / max(count, 1)


def _request(request_id: str, prompt: str, source: Image.Image | None = None) -> ImageRequest:
    return ImageRequest(request_id=request_id, prompt=prompt, width=SIZE, height=SIZE,
                        num_inference_steps=EVAL_STEPS, guidance_scale=EVAL_GUIDANCE, seed=0,
                        source_images=(source,) if source is not None else ())


def _generate(runner: Any, requests: list[ImageRequest], batch: int) -> list[Image.Image]:
    images: list[Image.Image] = []
    for start in range(0, len(requests), batch):
        states = [state for prepared in runner.prepare(requests[start:start + batch]) for state in prepared]
        for _ in range(EVAL_STEPS):
            runner.step(states)
        images.extend(runner.decode(states))
    return images
