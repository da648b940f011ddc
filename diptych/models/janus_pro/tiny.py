"""A tiny random Janus-Pro checkpoint in transformers' public layout (``JanusForConditionalGeneration``).

One directory: ``config.json``, ``model.safetensors``, ``generation_config.json``, the
tokenizer (a byte-level BPE trained here, with Janus-Pro's special tokens and chat
template) and the processor (``JanusProcessor``). The architecture is the real one with
narrow widths and a 64×64 image of 4×4 = 16 image tokens (the real model: 384×384, 24×24 =
576), so generation takes 16 steps. Deterministic from ``seed``; no model hub involved.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from diptych.models.janus_pro import chat_format as cf
from diptych.models.tiny_tokenizer import (
    QWEN2_PRETOKENIZE_REGEX,
    token_ids,
    train_byte_level_bpe,
)

logger = logging.getLogger(__name__)

_CORPUS: tuple[str, ...] = (
    "You are a helpful language and vision assistant.",
    "Describe the image in detail. What is in this picture?",
    "The picture shows a red circle on a white background.",
    "A blue square sits next to a green triangle in the middle of the image.",
    "There is a yellow star above a black line, and an orange cross below it.",
    "Generate an image of a cat sitting on a mat under a tree in the sun.",
    "A photo of a house with a garden, a river, mountains and clouds in the distance.",
    "The quick brown fox jumps over the lazy dog. 0 1 2 3 4 5 6 7 8 9",
    "Text, numbers and symbols: (a) [b] {c} <d> e-f g_h i/j k:l m;n o?p q!r s'u v\"w x*y z+",
)
_BPE_VOCAB_SIZE = 640

IMAGE_SIZE = 64  # pixels per side, for understanding and generation alike
_PATCH = 16  # → 4 × 4 image tokens
_NUM_IMAGE_TOKENS = (IMAGE_SIZE // _PATCH) ** 2
_TEXT = {  # Llama; two 64-wide heads (vLLM's CPU attention needs head_dim >= 32)
    "model_type": "llama",
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-6,
    "hidden_act": "silu",
    "rope_theta": 10000.0,
}
_VISION = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": IMAGE_SIZE,
    "patch_size": _PATCH,
    "mlp_ratio": 2.0,
    "depth": 2,
    "num_image_tokens": _NUM_IMAGE_TOKENS,
    "projection_dim": _TEXT["hidden_size"],
}
# Five resolutions (16× upsampling from the 4×4 grid) as the real VQ model; GroupNorm(32) needs
# channel counts that are multiples of 32.
_VQ = {
    "embed_dim": 8,
    "num_embeddings": 256,
    "latent_channels": 32,
    "base_channels": 32,
    "channel_multiplier": [1, 1, 2, 2, 4],
    "num_res_blocks": 1,
    "projection_dim": _TEXT["hidden_size"],
    "image_token_embed_dim": _TEXT["hidden_size"],
    "num_hidden_layers": 2,
}
# transformers' 0.02 init leaves a two-layer model nearly input-independent; 0.2 makes it react.
_INITIALIZER_RANGE = 0.2
_MEAN = [0.5, 0.5, 0.5]  # Janus-Pro normalises to [-1, 1], as its VQ decoder outputs
_STD = [0.5, 0.5, 0.5]


# A mid-sized variant for benchmarks, where compute rather than per-step overhead dominates:
# a ~75M-parameter language model and 256×256 images of 16 × 16 = 256 image tokens.
_MID_SIDE = 256
_MID_TEXT = {"hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 6, "num_attention_heads": 16,
             "num_key_value_heads": 16}


def write_mid_janus_pro(out_dir: Path, *, seed: int = 0) -> Path:
    """The mid-sized random checkpoint (benchmarks); same layout and tokenizer as the tiny one."""
    hidden = _MID_TEXT["hidden_size"]
    tokens = (_MID_SIDE // _PATCH) ** 2
    return _write(
        out_dir, seed, side=_MID_SIDE, init=0.02, text={**_TEXT, **_MID_TEXT},
        vision={**_VISION, "image_size": _MID_SIDE, "num_image_tokens": tokens, "projection_dim": hidden},
        vq={**_VQ, "num_embeddings": 1024, "projection_dim": hidden, "image_token_embed_dim": hidden},
    )


def write_tiny_janus_pro(out_dir: Path, *, seed: int = 0) -> Path:
    """Write the checkpoint into ``out_dir`` and return it."""
    return _write(out_dir, seed, side=IMAGE_SIZE, init=_INITIALIZER_RANGE, text=_TEXT, vision=_VISION, vq=_VQ)


def _write(out_dir: Path, seed: int, *, side: int, init: float, text: dict[str, Any], vision: dict[str, Any],
           vq: dict[str, Any]) -> Path:
    from transformers import JanusForConditionalGeneration

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_tokenizer()
    ids = token_ids(tokenizer, cf.SPECIAL_TOKENS)
    config = _build_config(vocab_size=len(tokenizer), ids=ids, init=init, text=text, vision=vision, vq=vq)
    with torch.random.fork_rng(devices=[]):  # seeding must not disturb the caller's random stream
        torch.manual_seed(seed)
        model = JanusForConditionalGeneration(config).eval()
    model.generation_config = _generation_config(ids)
    model.save_pretrained(out_dir)
    _write_processor(out_dir, tokenizer, side=side, num_image_tokens=vision["num_image_tokens"])
    logger.info("wrote random Janus-Pro (vocab %d + %d image codes, seed %d) to %s",
                len(tokenizer), vq["num_embeddings"], seed, out_dir)
    return out_dir


def _build_tokenizer() -> Any:
    from transformers import PreTrainedTokenizerFast

    bpe = train_byte_level_bpe(_CORPUS, _BPE_VOCAB_SIZE, QWEN2_PRETOKENIZE_REGEX)
    bpe.add_special_tokens(list(cf.SPECIAL_TOKENS))
    # The public tokenizer prepends BOS to every encoding (LlamaTokenizerFast, add_bos_token).
    from tokenizers import processors

    bos_id = bpe.token_to_id(cf.BOS)
    bpe.post_processor = processors.TemplateProcessing(
        single=f"{cf.BOS} $A", pair=f"{cf.BOS} $A {cf.BOS} $B", special_tokens=[(cf.BOS, bos_id)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=cf.BOS,
        eos_token=cf.EOS,
        pad_token=cf.PAD,
        model_max_length=4096,
        clean_up_tokenization_spaces=False,
        extra_special_tokens={"image_token": cf.IMAGE_TOKEN, "boi_token": cf.BOI, "eoi_token": cf.EOI},
    )
    tokenizer.chat_template = cf.CHAT_TEMPLATE
    return tokenizer


def _build_config(*, vocab_size: int, ids: dict[str, int], init: float, text: dict[str, Any], vision: dict[str, Any],
                  vq: dict[str, Any]) -> Any:
    from transformers import JanusConfig

    text = {
        **text,
        "vocab_size": vocab_size,
        "initializer_range": init,
        "bos_token_id": ids[cf.BOS],
        "eos_token_id": ids[cf.EOS],
        "pad_token_id": ids[cf.PAD],
        "dtype": "float32",
    }
    config = JanusConfig(
        text_config=text,
        vision_config={**vision, "initializer_range": init},
        vq_config={**vq, "initializer_range": init},
        image_token_id=ids[cf.IMAGE_TOKEN],
        tie_word_embeddings=False,
        dtype="float32",
    )
    config.initializer_range = init
    config.architectures = ["JanusForConditionalGeneration"]
    return config


def _generation_config(ids: dict[str, int]) -> Any:
    from transformers import GenerationConfig

    return GenerationConfig(
        bos_token_id=ids[cf.BOS],
        eos_token_id=ids[cf.EOS],
        pad_token_id=ids[cf.PAD],
        generation_kwargs={"boi_token_id": ids[cf.BOI]},
    )


def _write_processor(out_dir: Path, tokenizer: Any, *, side: int, num_image_tokens: int) -> None:
    from transformers import JanusImageProcessorPil, JanusProcessor

    image_processor = JanusImageProcessorPil(
        size={"height": side, "width": side}, image_mean=_MEAN, image_std=_STD
    )
    processor = JanusProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=cf.CHAT_TEMPLATE,
        num_image_tokens=num_image_tokens,
    )
    processor.save_pretrained(out_dir)  # processor_config.json names JanusImageProcessor (PIL twin without torchvision)
