"""Tiny random Qwen-Image and Qwen-Image-Edit checkpoints in diffusers' public layout.

``transformer/``, ``vae/`` and ``scheduler/`` are written here; ``text_encoder/``,
``tokenizer/`` and ``processor/`` come from :func:`write_tiny_vlm`. Everything is
deterministic from ``seed`` and takes a few seconds on a CPU.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from diptych.models.qwen_image.tiny_vlm import write_tiny_vlm
from diptych.models.tiny_files import redraw_linear

logger = logging.getLogger(__name__)

# Qwen-Image's published scheduler_config.json: resolution-dependent exponential shift,
# stretched so that the last sigma is 0.02.
SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 0.9,
    "base_image_seq_len": 256,
    "max_image_seq_len": 8192,
    "invert_sigmas": False,
    "shift_terminal": 0.02,
    "use_karras_sigmas": False,
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
    "time_shift_type": "exponential",
    "stochastic_sampling": False,
}

# The real VAE's structure (8x spatial compression in three stages, causal 3-D convolutions)
# with narrow channels; z_dim 8 keeps the latent channels distinct from RGB(A) channel counts,
# which the edit pipeline uses to tell images from latents.
_VAE: dict[str, Any] = {
    "base_dim": 8,
    "z_dim": 8,
    "dim_mult": [1, 2, 2, 2],
    "num_res_blocks": 1,
    "attn_scales": [],
    "temperal_downsample": [False, True, True],
    "dropout": 0.0,
}

# Two 32-wide heads (the brief's floor for attention head_dim); the rotary axes (frame,
# rows, cols) must sum to the head dim.
_TRANSFORMER: dict[str, Any] = {
    "patch_size": 2,
    "num_layers": 2,
    "attention_head_dim": 32,
    "num_attention_heads": 2,
    "guidance_embeds": False,
    "axes_dims_rope": [8, 12, 12],
}

# Transformer linear layers are re-drawn with this spread. With diffusers' default init two
# tiny blocks barely move the residual stream: different prompts then change the image by
# ~0.1 grey level and an equality test against diffusers would prove little. At 0.2 a
# different prompt moves pixels by several levels (0.3 makes the latents blow up).
_TRANSFORMER_INIT_STD = 0.2

_PIPELINE_COMPONENTS: dict[str, list[str]] = {
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    "text_encoder": ["transformers", "Qwen2_5_VLForConditionalGeneration"],
    "tokenizer": ["transformers", "Qwen2Tokenizer"],
    "transformer": ["diffusers", "QwenImageTransformer2DModel"],
    "vae": ["diffusers", "AutoencoderKLQwenImage"],
}


# A mid-sized transformer for benchmarks (about 76M parameters: 8 blocks of width 512), where
# compute rather than per-call overhead dominates a step, as with real checkpoints. Keeps
# diffusers' own init: the wide spread that makes tiny blocks react would blow up 8 of these.
MID_TRANSFORMER: dict[str, Any] = {
    "patch_size": 2,
    "num_layers": 8,
    "attention_head_dim": 64,
    "num_attention_heads": 8,
    "guidance_embeds": False,
    "axes_dims_rope": [16, 24, 24],
}


def write_tiny_qwen_image(out_dir: Path, seed: int = 0) -> Path:
    """A tiny random Qwen-Image (text-to-image) checkpoint in ``out_dir``; returns ``out_dir``."""
    return _write_checkpoint(Path(out_dir), seed, edit=False)


def write_mid_qwen_image(out_dir: Path, seed: int = 0) -> Path:
    """A random Qwen-Image checkpoint with the mid-sized transformer (tiny VLM and VAE); returns ``out_dir``."""
    return _write_checkpoint(Path(out_dir), seed, edit=False, transformer_config=MID_TRANSFORMER, init_std=None)


def write_tiny_qwen_image_edit(out_dir: Path, seed: int = 0) -> Path:
    """A tiny random Qwen-Image-Edit checkpoint in ``out_dir``; returns ``out_dir``."""
    return _write_checkpoint(Path(out_dir), seed, edit=True)


def _write_checkpoint(
    out_dir: Path,
    seed: int,
    *,
    edit: bool,
    transformer_config: dict[str, Any] = _TRANSFORMER,
    init_std: float | None = _TRANSFORMER_INIT_STD,
) -> Path:
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel

    out_dir.mkdir(parents=True, exist_ok=True)
    write_tiny_vlm(out_dir, seed=seed)
    # The transformer reads the VLM's last hidden states: its input width is the VLM's width.
    text_width = text_hidden_size(out_dir / "text_encoder")

    # fork_rng: seeding must not disturb the caller's global random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        z_dim = _VAE["z_dim"]
        means = (torch.randn(z_dim) * 0.5).tolist()
        stds = (torch.rand(z_dim) * 1.5 + 0.5).tolist()
        vae = AutoencoderKLQwenImage(
            **_VAE, latents_mean=[round(v, 4) for v in means], latents_std=[round(v, 4) for v in stds]
        )
        transformer = QwenImageTransformer2DModel(
            **transformer_config,
            in_channels=z_dim * 4,  # one 2x2 patch of latent cells per token
            out_channels=z_dim,
            joint_attention_dim=text_width,
        )
        if init_std is not None:
            redraw_linear(transformer, init_std)
    vae.save_pretrained(out_dir / "vae")
    transformer.save_pretrained(out_dir / "transformer")
    FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG).save_pretrained(out_dir / "scheduler")
    _write_model_index(out_dir, edit=edit)
    logger.info("wrote tiny %s checkpoint (seed %d) to %s", "Qwen-Image-Edit" if edit else "Qwen-Image", seed, out_dir)
    return out_dir



def text_hidden_size(text_encoder_dir: Path) -> int:
    """The hidden size of a saved Qwen2.5-VL (nested under ``text_config`` in newer configs)."""
    config = json.loads((text_encoder_dir / "config.json").read_text())
    size = config.get("text_config", {}).get("hidden_size", config.get("hidden_size"))
    if not isinstance(size, int):
        raise ValueError(f"{text_encoder_dir}/config.json names no integer hidden_size")
    return size


def _write_model_index(out_dir: Path, *, edit: bool) -> None:
    import diffusers

    index: dict[str, Any] = {
        "_class_name": "QwenImageEditPipeline" if edit else "QwenImagePipeline",
        "_diffusers_version": diffusers.__version__,
        **_PIPELINE_COMPONENTS,
    }
    if edit:
        index["processor"] = ["transformers", "Qwen2VLProcessor"]
    (out_dir / "model_index.json").write_text(json.dumps(dict(sorted(index.items())), indent=2) + "\n")
