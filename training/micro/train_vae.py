"""Stage 1: the VAE (``AutoencoderKLQwenImage``) on renders of training scenes at 64×64.

Loss: L1 + MSE on pixels of the decode of slightly noised latents, plus a small L2 pull of
the latents towards 0, so they stay bounded and the decoder tolerates the imprecise
latents a denoiser produces (see ``step_fn`` for why not a learnt-variance KL). After
training, per-channel mean and std of the posterior means over training scenes go into
the config (``latents_mean`` / ``latents_std``), which is how the pipeline standardises
latents for the transformer. The VAE runs through the server's single-frame fast paths
(``vae_fast``): the same math, a third of the convolution work, and differentiable.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from diptych.bench.shapes.analyser import analyse
from training.micro.checkpoint import SIZE, Architecture, build_vae
from diptych.bench.shapes.data import scene_example
from training.micro.training import (
    Budget,
    LossLog,
    StageResult,
    make_optimizer,
    run_stage,
    step_generator,
)
from diptych.bench.shapes.world import BACKGROUND, Split, render
from diptych.models.qwen_image import latents as lat
from diptych.models.qwen_image.vae_fast import install_single_frame_paths

logger = logging.getLogger(__name__)

LATENT_NOISE = 0.1  # σ of the noise added to latents in training: the decoder must tolerate imprecise latents
FOREGROUND_WEIGHT = 9.0  # shapes cover ~10% of a picture: weighted, they count about as much as the background
PRIOR_WEIGHT = 1e-3  # per latent element, against a per-pixel reconstruction loss
_STATS_IMAGES = 256
SEED_STRIDE = 10_000_000  # example indices of seed s start at s·stride


@dataclass(frozen=True)
class VAEReport:
    result: StageResult
    heldout_scenes_correct: float | None  # analyser reads decode(encode(x)) as x's scene

    def summary(self) -> dict[str, object]:
        return {"steps": self.result.steps, "seconds": round(self.result.seconds, 1), **self.result.final_losses,
                "heldout_scenes_correct": self.heldout_scenes_correct}


def pixels(images: list[Image.Image]) -> torch.Tensor:
    """PIL images → ``[B, 3, 1, H, W]`` in [-1, 1], as the server converts a source image."""
    return torch.cat([lat.pil_to_pixels(image) for image in images])


def batch_images(seed: int, step: int, batch_size: int, split: Split = Split.TRAIN) -> list[Image.Image]:
    base = seed * SEED_STRIDE + step * batch_size
    return [render(scene_example(split, base + j), SIZE) for j in range(batch_size)]


def train_vae(out: Path, arch: Architecture, budget: Budget, seed: int, log: LossLog, *, eval_items: int = 40,
              show_progress: bool = True) -> VAEReport:
    torch.manual_seed(seed)
    vae = build_vae(arch)
    install_single_frame_paths(vae)
    vae.train()
    optimizer = make_optimizer(vae, budget)

    def step_fn(step: int) -> dict[str, float]:
        x = pixels(batch_images(seed, step, budget.batch_size))
        # A fixed-variance posterior: z = mode + σ·ε with a small σ, and an L2 pull of the
        # means towards 0. The learnt-variance KL of a textbook VAE starts with unit noise
        # that drowns the young encoder's signal: the decoder settled on a blank picture for
        # hundreds of steps in a probe. The pipeline encodes with the mode anyway.
        mode = vae.encode(x).latent_dist.mode()
        noise = torch.randn(mode.shape, generator=step_generator(seed, "vae", step))
        y = decode_unclamped(vae, mode + LATENT_NOISE * noise)
        weight = foreground_weight(x)
        l1, mse = (weight * (y - x).abs()).mean(), (weight * (y - x).pow(2)).mean()
        prior = mode.pow(2).mean()
        loss = l1 + mse + PRIOR_WEIGHT * prior
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        return {"loss": loss.item(), "l1": l1.item(), "prior": prior.item()}

    result = run_stage("vae", budget, optimizer, step_fn, log, show_progress=show_progress)
    vae.eval()
    mean, std = latent_statistics(vae, seed)
    vae.register_to_config(latents_mean=mean, latents_std=std)
    vae.save_pretrained(out / "vae")
    correct = heldout_reconstruction(vae, eval_items) if eval_items else None
    log.write({"stage": "vae", "event": "eval", "heldout_scenes_correct": correct, "latents_std": std})
    logger.info("vae: %d steps in %.0f s; held-out scenes read back correctly: %s", result.steps, result.seconds,
                correct)
    return VAEReport(result, correct)


def foreground_weight(x: torch.Tensor) -> torch.Tensor:
    """Per-pixel loss weight: ``1 + FOREGROUND_WEIGHT`` on shapes, 1 on the background.

    Shapes cover about a tenth of a picture; unweighted, a blank background is a deep
    local minimum (probes sat there for 150 steps), weighted, shapes appear within 100.
    """
    background = torch.tensor(BACKGROUND, dtype=x.dtype).view(1, 3, 1, 1, 1) / 127.5 - 1
    return 1 + FOREGROUND_WEIGHT * ((x - background).abs().amax(dim=1, keepdim=True) > 0.05).to(x.dtype)


def decode_unclamped(vae: Any, z: torch.Tensor) -> torch.Tensor:
    """``vae.decode`` (one frame, same cache protocol) without its final clamp to [-1, 1].

    The clamp has no gradient outside the range: a young decoder whose outputs overshoot
    learns nothing there (a probe sat worse than a blank picture for 100 steps). Serving
    clamps; the trained decoder stays inside the range, so the clamp then changes nothing.
    """
    vae.clear_cache()
    vae._conv_idx = [0]
    out = vae.decoder(vae.post_quant_conv(z), feat_cache=vae._feat_map, feat_idx=vae._conv_idx)
    vae.clear_cache()
    return out


@torch.no_grad()
def latent_statistics(vae: Any, seed: int) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of posterior means over training scenes not used in training."""
    images = [render(scene_example(Split.TRAIN, seed * SEED_STRIDE + SEED_STRIDE - 1 - j), SIZE)
              for j in range(_STATS_IMAGES)]
    means = torch.cat([vae.encode(pixels(images[i:i + 64])).latent_dist.mode() for i in range(0, len(images), 64)])
    flat = means.transpose(0, 1).reshape(means.shape[1], -1)
    return [round(float(v), 5) for v in flat.mean(1)], [round(float(v), 5) for v in flat.std(1).clamp_min(1e-3)]


@torch.no_grad()
def reconstruct(vae: Any, images: list[Image.Image]) -> list[Image.Image]:
    """decode(encode(x)) with the posterior mode, as an edit's source is encoded, back to PIL."""
    decoded = vae.decode(vae.encode(pixels(images)).latent_dist.mode()).sample
    return lat.pixels_to_pil(decoded[:, :, 0])


def heldout_reconstruction(vae: Any, count: int) -> float:
    """Share of held-out scenes whose reconstruction the analyser reads as the scene itself."""
    scenes = [scene_example(Split.HELDOUT, index) for index in range(count)]
    outputs = reconstruct(vae, [render(scene, SIZE) for scene in scenes])
    return sum(analyse(image).scene() == scene for image, scene in zip(outputs, scenes, strict=True)) / count
