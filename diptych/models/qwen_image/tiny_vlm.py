"""The VLM half of a tiny random Qwen-Image checkpoint: text encoder, tokenizer, processor.

Writes, in the public Qwen-Image diffusers layout, ``text_encoder/`` (a randomly
initialised ``Qwen2_5_VLForConditionalGeneration``), ``tokenizer/`` (a byte-level BPE
trained here on a small built-in corpus, carrying Qwen2.5-VL's special tokens and chat
template) and ``processor/`` (Qwen2.5-VL processor configs sized for tiny images). No
model hub is involved; everything is deterministic from ``seed``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from diptych.models.qwen_image.chat_template import CHAT_TEMPLATE, IMAGE_PLACEHOLDER, SPECIAL_TOKENS
from diptych.models.tiny_files import write_json
from diptych.models.tiny_tokenizer import QWEN2_PRETOKENIZE_REGEX, token_ids, train_byte_level_bpe

logger = logging.getLogger(__name__)

_BPE_VOCAB_SIZE = 1024

# A few lines about images, shapes and colours: enough for the BPE to learn merges for the
# words prompts in tests use, small enough to train in milliseconds.
CORPUS: tuple[str, ...] = (
    "You are a helpful assistant.",
    "Describe the image in detail. What is in this picture?",
    "The picture shows a red circle on a white background.",
    "A blue square sits next to a green triangle in the middle of the image.",
    "There is a yellow star above a black line, and an orange cross below it.",
    "The image is dark; the shapes are small, large, bright and pale.",
    "What colour is the shape on the left? It is purple. The one on the right is pink.",
    "Generate an image of a cat sitting on a mat under a tree in the sun.",
    "Edit the photo: make the sky blue, remove the car and add a dog.",
    "Count the objects: one, two, three, four, five, six, seven, eight, nine, ten.",
    "The quick brown fox jumps over the lazy dog. 0 1 2 3 4 5 6 7 8 9",
    "Answer the question about the image with a short sentence.",
    "A photo of a house with a garden, a river, mountains and clouds in the distance.",
    "Text, numbers and symbols: (a) [b] {c} <d> e-f g_h i/j k:l m;n o?p q!r s'u v\"w x*y z+",
    "The user asks; the assistant answers. Thank you, please, yes, no, maybe.",
    "Top, bottom, left, right, centre, corner, edge, inside, outside, between, behind.",
)

# Sizes: hidden 128 with two 64-wide heads (vLLM's CPU attention needs head_dim >= 32);
# mrope_section splits the 32 rotary frequency pairs over (time, height, width).
_TEXT = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "hidden_act": "silu",
    "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [8, 12, 12]},
}
_VISION = {
    "depth": 2,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_heads": 2,
    "in_channels": 3,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "tokens_per_second": 2,
    "window_size": 112,
    "fullatt_block_indexes": [1],
    "hidden_act": "silu",
}
# A larger init spread than transformers' 0.02: at 0.02 two layers barely move the
# residual stream and the greedy output ignores the image.
_INITIALIZER_RANGE = 0.2

# Image sizes in pixels: one merged token covers 28 x 28, so 4 to 64 image tokens.
_MIN_PIXELS = 28 * 28 * 4
_MAX_PIXELS = 28 * 28 * 64
_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
_PROCESSOR_CLASS = "Qwen2_5_VLProcessor"


def write_tiny_vlm(out_root: Path, *, seed: int = 0) -> None:
    """Write ``text_encoder/``, ``tokenizer/`` and ``processor/`` of a tiny Qwen-Image checkpoint."""
    out_root = Path(out_root)
    tokenizer = qwen2_tokenizer(CORPUS, _BPE_VOCAB_SIZE)
    ids = special_token_ids(tokenizer)

    tokenizer_dir = out_root / "tokenizer"
    tokenizer.save_pretrained(tokenizer_dir)
    _write_processor(out_root / "processor", tokenizer)

    model = _build_model(vocab_size=len(tokenizer), ids=ids, seed=seed)
    _check_reacts_to_image(model, tokenizer, ids)
    text_encoder_dir = out_root / "text_encoder"
    model.save_pretrained(text_encoder_dir)
    write_json(
        text_encoder_dir / "generation_config.json",
        {
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
            "pad_token_id": ids["<|endoftext|>"],
        },
    )
    logger.info("wrote tiny Qwen2.5-VL (vocab %d, seed %d) under %s", len(tokenizer), seed, out_root)


def qwen2_tokenizer(corpus: Iterable[str], vocab_size: int) -> Any:
    """A byte-level BPE learnt on ``corpus``, wrapped as a Qwen2 tokenizer with Qwen2.5-VL's special tokens."""
    from transformers import AddedToken, Qwen2Tokenizer

    trained = json.loads(train_byte_level_bpe(corpus, vocab_size, QWEN2_PRETOKENIZE_REGEX).to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in trained["merges"]]

    tokenizer = Qwen2Tokenizer(
        vocab=trained["vocab"],
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        errors="replace",
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
    )
    # Appended in Qwen2.5-VL's order; <|endoftext|> is already in, added by the constructor.
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS[1:]]}
    )
    # Qwen2.5-VL-Instruct ends a turn with <|im_end|>; its tokenizer calls that the eos token.
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def special_token_ids(tokenizer: Any) -> dict[str, int]:
    """Every Qwen2.5-VL special token's id, read back from the tokenizer."""
    return token_ids(tokenizer, SPECIAL_TOKENS)


def _write_processor(processor_dir: Path, tokenizer: Any) -> None:
    """Processor files: image and video preprocessor configs, tokenizer files, chat template."""
    tokenizer.save_pretrained(processor_dir)
    shared = {
        "min_pixels": _MIN_PIXELS,
        "max_pixels": _MAX_PIXELS,
        "size": {"shortest_edge": _MIN_PIXELS, "longest_edge": _MAX_PIXELS},
        "patch_size": _VISION["patch_size"],
        "temporal_patch_size": _VISION["temporal_patch_size"],
        "merge_size": _VISION["spatial_merge_size"],
        "image_mean": _CLIP_MEAN,
        "image_std": _CLIP_STD,
        "do_resize": True,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "do_convert_rgb": True,
        "resample": 3,  # bicubic, as Qwen2.5-VL
        "processor_class": _PROCESSOR_CLASS,
    }
    # The public class names: with torchvision installed they resolve to the torchvision
    # processors, without it diptych.compat routes them to PIL-based equivalents.
    write_json(processor_dir / "preprocessor_config.json", {**shared, "image_processor_type": "Qwen2VLImageProcessor"})
    write_json(
        processor_dir / "video_preprocessor_config.json",
        {**shared, "video_processor_type": "Qwen2VLVideoProcessor", "fps": 2.0, "do_sample_frames": False},
    )
    (processor_dir / "chat_template.jinja").write_text(CHAT_TEMPLATE)


def _build_model(*, vocab_size: int, ids: dict[str, int], seed: int) -> Any:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    return build_qwen_vl(Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, text=_TEXT, vision=_VISION,
                         vocab_size=vocab_size, ids=ids, seed=seed, initializer_range=_INITIALIZER_RANGE)


def build_qwen_vl(config_class: Any, model_class: Any, *, text: dict[str, Any], vision: dict[str, Any],
                  vocab_size: int, ids: dict[str, int], seed: int, initializer_range: float) -> Any:
    """A random Qwen-VL (2.5 or 3) of ``model_class``, its special-token ids those of our tokenizer.

    The configs' defaults are the real vocabulary's ids (151655 …); every one is taken from ``ids``.
    """
    text_config = {
        **text,
        "vocab_size": vocab_size,
        "initializer_range": initializer_range,
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }
    vision_config = {**vision, "out_hidden_size": text["hidden_size"], "initializer_range": initializer_range}
    config = config_class(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
        dtype="float32",
    )
    config.architectures = [model_class.__name__]
    # fork_rng: seeding must not disturb the caller's global random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config)
    return model.eval()


def _check_reacts_to_image(model: Any, tokenizer: Any, ids: dict[str, int]) -> None:
    """Refuse to write a model whose greedy answer ignores the image: tests would prove nothing."""
    from transformers import Qwen2VLImageProcessorPil
    from PIL import Image

    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=_MIN_PIXELS,
        max_pixels=_MAX_PIXELS,
        patch_size=_VISION["patch_size"],
        temporal_patch_size=_VISION["temporal_patch_size"],
        merge_size=_VISION["spatial_merge_size"],
        image_mean=_CLIP_MEAN,
        image_std=_CLIP_STD,
    )
    outputs = []
    for colour in ((220, 30, 30), (30, 30, 220)):
        pixels = image_processor(images=[Image.new("RGB", (56, 56), colour)], return_tensors="pt")
        num_image_tokens = int(pixels["image_grid_thw"].prod()) // _VISION["spatial_merge_size"] ** 2
        text = f"<|im_start|>user\n{IMAGE_PLACEHOLDER}What is this?<|im_end|>\n<|im_start|>assistant\n"
        text = text.replace("<|image_pad|>", "<|image_pad|>" * num_image_tokens)
        input_ids = tokenizer(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            generated = model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                pixel_values=pixels["pixel_values"],
                image_grid_thw=pixels["image_grid_thw"],
                max_new_tokens=6,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=ids["<|endoftext|>"],
            )
        outputs.append(generated[0, input_ids.shape[1] :].tolist())
    if outputs[0] == outputs[1]:
        raise RuntimeError(f"tiny VLM is degenerate: the same greedy tokens {outputs[0]} for two different images")
