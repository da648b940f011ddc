"""A tiny random Qwen-Image 2.1 checkpoint in diffusers' public ``QwenImage21Pipeline`` layout.

Writes ``transformer/`` (``QwenImage21Transformer2DModel``), ``vae/``
(``AutoencoderKLQwenImage21``, 16x, RGBA), ``text_encoder/`` (a 2-layer
``Qwen3VLForConditionalGeneration``), ``processor/`` (a ``Qwen3VLProcessor``: a byte-level
BPE trained here with Qwen3-VL's added tokens and chat template, image and video
preprocessor configs) and ``scheduler/``. Deterministic from ``seed``; a few MB; seconds.

The real pipeline resizes reference images to ``output_resolution``² (1024² by default) for
both the VLM and the VAE. A tiny checkpoint works at :data:`OUTPUT_RESOLUTION`, declared in
``model_index.json`` under ``_diptych_output_resolution`` (diffusers ignores keys starting
with ``_``), so callers of the diffusers pipeline pass ``output_resolution`` themselves.

:func:`write_mid_qwen_image_21` writes the same VLM and VAE around a mid-sized transformer
(89.5M parameters) at :data:`MID_OUTPUT_RESOLUTION`, for ``diptych bench flow``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from diptych.models.qwen_image.tiny import SCHEDULER_CONFIG
from diptych.models.qwen_image.tiny_vlm import CORPUS, build_qwen_vl, qwen2_tokenizer
from diptych.models.qwen_image_21.adapter import OUTPUT_RESOLUTION_KEY
from diptych.models.qwen_image_21.chat_template import CHAT_TEMPLATE, QWEN3_EXTRA_TOKENS, SPECIAL_TOKENS
from diptych.models.tiny_files import redraw_linear, write_json
from diptych.models.tiny_tokenizer import token_ids

logger = logging.getLogger(__name__)

# The side (pixels) a tiny checkpoint generates at and resizes references to: 4 latent cells
# of 16 px a side, 2 x 2 merged vision tokens of 32 px.
OUTPUT_RESOLUTION = 64

_BPE_VOCAB_SIZE = 1024

# Qwen3-VL text model: 4 heads of 32 (vLLM's CPU attention needs head_dim >= 32).
# Qwen3-VL interleaves its multimodal rotary sections; they sum to head_dim / 2.
_TEXT = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "hidden_act": "silu",
    "rope_parameters": {"rope_type": "default", "rope_theta": 5_000_000.0, "mrope_section": [6, 5, 5],
                        "mrope_interleaved": True},
}
# Qwen3-VL vision tower: 16 px patches, 2 x 2 merge (one text token per 32 x 32 px), one
# deepstack layer; learnt position embeddings on an 8 x 8 grid (must be a square).
_VISION = {
    "depth": 2,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_heads": 2,
    "in_channels": 3,
    "patch_size": 16,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "num_position_embeddings": 64,
    "deepstack_visual_indexes": [0],
    "hidden_act": "gelu_pytorch_tanh",
}
# As in the Qwen-Image tiny VLM: at transformers' 0.02 two layers barely react to their input.
_INITIALIZER_RANGE = 0.2

# Pixel budget of the image processor: from one merged token (32²) to 16² tokens; it must
# admit OUTPUT_RESOLUTION², which the pipeline resizes every reference to.
_MIN_PIXELS = 32 * 32
_MAX_PIXELS = 32 * 32 * 256
_HALF = [0.5, 0.5, 0.5]

# The real VAE's structure (five stages of 2x: 16x spatial, causal 3-D convolutions) with
# narrow channels. z_dim 8, not 4: the pipeline's image processor takes a 4-channel tensor
# with as many channels as latents for latents.
_VAE: dict[str, Any] = {
    "base_dim": 8,
    "decoder_base_dim": 8,
    "z_dim": 8,
    "dim_mult": [1, 1, 1, 1, 1],
    "num_res_blocks": 1,
    "attn_scales": [],
    "temperal_downsample": [False, True, True, True],
    "dropout": 0.0,
    "in_channels": 4,  # RGBA
    "out_channels": 4,
}

# Two 32-wide heads; the rotary axes (frame, rows, cols) sum to the head dim.
_TRANSFORMER: dict[str, Any] = {
    "patch_size": 1,
    "num_layers": 2,
    "attention_head_dim": 32,
    "num_attention_heads": 2,
    "mlp_ratio": 3,
    "axes_dims_rope": [8, 12, 12],
    "causal_condition": True,
}
# Linear layers re-drawn with this spread so that prompt and seed visibly move the image
# (see the Qwen-Image tiny checkpoint).
_TRANSFORMER_INIT_STD = 0.2

# A mid-sized transformer for benchmarks: 16 heads of 64 (width 1024), 6 blocks, 89.5M
# parameters (13.6M a block: 4 x 1024² attention, 3 x 1024 x 3072 SwiGLU; 7.7M of embedders
# and modulation), so that GEMMs dominate a step as with real checkpoints. Keeps diffusers'
# own init: the tiny one's wide spread would blow up six 1024-wide blocks.
MID_TRANSFORMER: dict[str, Any] = {
    **_TRANSFORMER,
    "num_layers": 6,
    "attention_head_dim": 64,
    "num_attention_heads": 16,
    "axes_dims_rope": [16, 24, 24],
}
# The side the mid checkpoint works at: 16² target tokens of 16 px. Its references (256² in
# their aspect) and sizes up to 512² stay within the processor's pixel budget (_MAX_PIXELS).
MID_OUTPUT_RESOLUTION = 256

_PIPELINE_COMPONENTS: dict[str, list[str]] = {
    "processor": ["transformers", "Qwen3VLProcessor"],
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    "text_encoder": ["transformers", "Qwen3VLForConditionalGeneration"],
    "transformer": ["diffusers", "QwenImage21Transformer2DModel"],
    "vae": ["diffusers", "AutoencoderKLQwenImage21"],
}


def write_tiny_qwen_image_21(out_dir: Path, seed: int = 0) -> Path:
    """A tiny random Qwen-Image 2.1 checkpoint in ``out_dir``; returns ``out_dir``."""
    return _write_checkpoint(Path(out_dir), seed, _TRANSFORMER, _TRANSFORMER_INIT_STD, OUTPUT_RESOLUTION)


def write_mid_qwen_image_21(out_dir: Path, seed: int = 0) -> Path:
    """A random Qwen-Image 2.1 checkpoint with the mid-sized transformer (tiny VLM and VAE); returns ``out_dir``."""
    return _write_checkpoint(Path(out_dir), seed, MID_TRANSFORMER, None, MID_OUTPUT_RESOLUTION)


def _write_checkpoint(out_dir: Path, seed: int, transformer_config: dict[str, Any], init_std: float | None,
                      output_resolution: int) -> Path:
    from diffusers import AutoencoderKLQwenImage21, FlowMatchEulerDiscreteScheduler, QwenImage21Transformer2DModel

    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = qwen3_vl_tokenizer()
    ids = token_ids(tokenizer, SPECIAL_TOKENS)
    _write_processor(out_dir / "processor", tokenizer)
    text_encoder = _build_text_encoder(vocab_size=len(tokenizer), ids=ids, seed=seed)
    text_encoder.save_pretrained(out_dir / "text_encoder")

    # fork_rng: seeding must not disturb the caller's global random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        z_dim = _VAE["z_dim"]
        means = [round(v, 4) for v in (torch.randn(z_dim) * 0.5).tolist()]
        stds = [round(v, 4) for v in (torch.rand(z_dim) * 1.5 + 0.5).tolist()]
        vae = AutoencoderKLQwenImage21(**_VAE, latents_mean=means, latents_std=stds)
        transformer = QwenImage21Transformer2DModel(
            **transformer_config, in_channels=z_dim, out_channels=z_dim, context_in_dim=_TEXT["hidden_size"]
        )
        if init_std is not None:
            redraw_linear(transformer, init_std)
    vae.save_pretrained(out_dir / "vae")
    transformer.save_pretrained(out_dir / "transformer")
    FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG).save_pretrained(out_dir / "scheduler")
    _write_model_index(out_dir, output_resolution)
    logger.info("wrote a Qwen-Image 2.1 checkpoint (seed %d, %d-layer transformer) to %s", seed,
                transformer_config["num_layers"], out_dir)
    return out_dir


def qwen3_vl_tokenizer() -> Any:
    """The tiny Qwen2 BPE with Qwen3-VL's added tokens (in its order) and chat template."""
    from transformers import AddedToken

    tokenizer = qwen2_tokenizer(CORPUS, _BPE_VOCAB_SIZE)
    # Qwen3-VL marks these as added but not special (they survive skip_special_tokens).
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in QWEN3_EXTRA_TOKENS])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _write_processor(processor_dir: Path, tokenizer: Any) -> None:
    """Processor files: tokenizer, image and video preprocessor configs, chat template."""
    tokenizer.save_pretrained(processor_dir)
    shared = {
        "size": {"shortest_edge": _MIN_PIXELS, "longest_edge": _MAX_PIXELS},
        "patch_size": _VISION["patch_size"],
        "temporal_patch_size": _VISION["temporal_patch_size"],
        "merge_size": _VISION["spatial_merge_size"],
        "image_mean": _HALF,
        "image_std": _HALF,
        "do_resize": True,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "do_convert_rgb": True,
        "resample": 3,  # bicubic
        "processor_class": "Qwen3VLProcessor",
    }
    # Public class names; without torchvision diptych.compat resolves them to working classes.
    write_json(processor_dir / "preprocessor_config.json", {**shared, "image_processor_type": "Qwen2VLImageProcessor"})
    write_json(
        processor_dir / "video_preprocessor_config.json",
        {**shared, "video_processor_type": "Qwen3VLVideoProcessor", "fps": 2, "do_sample_frames": True,
         "min_frames": 4, "max_frames": 768},
    )
    (processor_dir / "chat_template.jinja").write_text(CHAT_TEMPLATE)


def _build_text_encoder(*, vocab_size: int, ids: dict[str, int], seed: int) -> Any:
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    return build_qwen_vl(Qwen3VLConfig, Qwen3VLForConditionalGeneration, text=_TEXT, vision=_VISION,
                         vocab_size=vocab_size, ids=ids, seed=seed, initializer_range=_INITIALIZER_RANGE)


def _write_model_index(out_dir: Path, output_resolution: int) -> None:
    import diffusers

    index: dict[str, Any] = {
        "_class_name": "QwenImage21Pipeline",
        "_diffusers_version": diffusers.__version__,
        OUTPUT_RESOLUTION_KEY: output_resolution,
        **_PIPELINE_COMPONENTS,
    }
    write_json(out_dir / "model_index.json", index)
