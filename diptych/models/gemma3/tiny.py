"""A tiny random ``Gemma3ForConditionalGeneration`` checkpoint: the prefix-LM VLM of tests.

Gemma3's image tokens attend to each other bidirectionally in transformers (given
``token_type_ids``), which makes it the test model for Diptych's vLLM attention backend
(``diptych.kernels.vllm_backend``). Written in the public layout (``config.json``,
safetensors, tokenizer with Gemma3's special tokens and a chat template, processor
configs), deterministic from ``seed``, with no model hub involved.

Two things vLLM expects that a plain ``save_pretrained`` does not give: "\\n" to "\\n\\n\\n\\n"
as single tokens (vLLM's Gemma3 processor looks them up in the vocabulary), and vision
weights under ``vision_tower.vision_model.`` (transformers 5.19 saves them without the
``vision_model.`` part, and loads either form).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from diptych.models.tiny_files import write_json
from diptych.models.tiny_tokenizer import token_ids, train_byte_level_bpe

logger = logging.getLogger(__name__)

BOI_TOKEN = "<start_of_image>"
EOI_TOKEN = "<end_of_image>"
IMAGE_TOKEN = "<image_soft_token>"
# Gemma3's specials, in the order the tokenizer gets them (ids are read back, never assumed).
_SPECIAL_TOKENS = (
    "<pad>",
    "<eos>",
    "<bos>",
    "<unk>",
    "<start_of_turn>",
    "<end_of_turn>",
    BOI_TOKEN,
    EOI_TOKEN,
    IMAGE_TOKEN,
)
_NEWLINES = ("\n", "\n\n", "\n\n\n", "\n\n\n\n")

# Gemma3's chat template, reduced to what tests use: turns, string or list content, images
# as the begin-of-image placeholder that the processor expands.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "<start_of_turn>{{ role }}\n"
    "{% if message['content'] is string %}{{ message['content'] | trim }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<start_of_image>"
    "{% elif item['type'] == 'text' %}{{ item['text'] | trim }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)

_CORPUS: tuple[str, ...] = (
    "Describe the image in detail. What is in this picture?",
    "The picture shows a red circle on a white background.",
    "A blue square sits next to a green triangle in the middle of the image.",
    "There is a yellow star above a black line, and an orange cross below it.",
    "What colour is the shape on the left? It is purple. The one on the right is pink.",
    "The quick brown fox jumps over the lazy dog. 0 1 2 3 4 5 6 7 8 9",
    "Answer the question about the image with a short sentence. Yes, no, maybe.",
)
_BPE_VOCAB_SIZE = 512

# head_dim 32: vLLM's stock CPU attention (the comparison run) needs >= 32.
_TEXT = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "query_pre_attn_scalar": 32,
    "max_position_embeddings": 4096,
    # Shorter than a prompt with an image and its answer, so the sliding layer's window
    # matters; longer than an image (16 tokens), whose bidirectional range vLLM would
    # otherwise skip.
    "sliding_window": 32,
    "layer_types": ["sliding_attention", "full_attention"],
}
_IMAGE_SIZE = 64
_VISION = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": _IMAGE_SIZE,
    "patch_size": 8,
    "vision_use_head": False,
}
# 8 x 8 patches pooled to 4 x 4 soft tokens per image.
MM_TOKENS_PER_IMAGE = 16
_INITIALIZER_RANGE = 0.02
# transformers initialises Gemma's RMSNorm weights (the output scale is 1 + w) and the
# image projection to zero: then the image contributes nothing and the greedy output is
# the same with a causal or a bidirectional mask. Random ones (found by probing seeds and
# spreads) give a model whose answer depends on both the image and the mask.
_NORM_STD = 1.0
_PROJECTION_STD = 1.0 / 8


def write_tiny_gemma3(out_dir: Path, seed: int = 0) -> Path:
    """Write a tiny random Gemma3 VLM checkpoint directory; returns it."""
    out_dir = Path(out_dir)
    tokenizer = build_tokenizer()
    ids = _special_token_ids(tokenizer)
    model = _build_model(vocab_size=len(tokenizer), ids=ids, seed=seed)
    _check_reacts_to_image_and_mask(model, build_processor(tokenizer))
    model.save_pretrained(out_dir)
    _prefix_vision_weights(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    write_json(
        out_dir / "preprocessor_config.json",
        {
            "image_processor_type": "Gemma3ImageProcessor",
            "processor_class": "Gemma3Processor",
            "size": {"height": _IMAGE_SIZE, "width": _IMAGE_SIZE},
            "do_resize": True,
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": [0.5, 0.5, 0.5],
            "image_std": [0.5, 0.5, 0.5],
            "do_convert_rgb": True,
            "do_pan_and_scan": False,
            "resample": 2,
        },
    )
    write_json(
        out_dir / "processor_config.json",
        {"processor_class": "Gemma3Processor", "image_seq_length": MM_TOKENS_PER_IMAGE},
    )
    write_json(
        out_dir / "generation_config.json",
        {
            "bos_token_id": ids["<bos>"],
            "eos_token_id": [ids["<eos>"], ids["<end_of_turn>"]],
            "pad_token_id": ids["<pad>"],
        },
    )
    logger.info("wrote tiny Gemma3 (vocab %d, seed %d) to %s", len(tokenizer), seed, out_dir)
    return out_dir


def build_tokenizer() -> Any:
    """A byte-level BPE trained on the built-in corpus, carrying Gemma3's special tokens."""
    from transformers import AddedToken, PreTrainedTokenizerFast

    bpe = train_byte_level_bpe(_CORPUS, _BPE_VOCAB_SIZE, split_regex=None)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        # Read by Gemma3Processor (and vLLM's Gemma3 processing) as tokenizer attributes.
        extra_special_tokens={"boi_token": BOI_TOKEN, "eoi_token": EOI_TOKEN, "image_token": IMAGE_TOKEN},
        model_max_length=_TEXT["max_position_embeddings"],
        clean_up_tokenization_spaces=False,
    )
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [AddedToken(t, special=True, normalized=False) for t in _SPECIAL_TOKENS[4:]]}
    )
    # Gemma's vocabulary has these runs as single tokens, and vLLM's Gemma3 processor relies on it.
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in _NEWLINES])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_processor(tokenizer: Any) -> Any:
    """The checkpoint's ``Gemma3Processor``, built directly (PIL image processor: no torchvision needed)."""
    from transformers import Gemma3ImageProcessorPil, Gemma3Processor

    image_processor = Gemma3ImageProcessorPil(
        size={"height": _IMAGE_SIZE, "width": _IMAGE_SIZE}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    return Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
        image_seq_length=MM_TOKENS_PER_IMAGE,
    )


def greedy_reference(
    model: Any, processor: Any, image: Any | None, question: str, *, bidirectional: bool, max_new_tokens: int
) -> tuple[list[int], list[int]]:
    """transformers' greedy answer to a question about an image (or none): (prompt ids, generated ids).

    ``bidirectional=True`` passes ``token_type_ids`` (1 on the image soft tokens), which
    is how transformers gives Gemma3's image tokens their bidirectional mask; without
    them every token attends causally. Generation runs to ``max_new_tokens`` (no EOS stop).
    """
    content = ([{"type": "image"}] if image is not None else []) + [{"type": "text", "text": question}]
    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    inputs = processor(images=[image] if image is not None else None, text=text, return_tensors="pt")
    input_ids = inputs["input_ids"]
    extra = {}
    if image is not None:
        extra["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        if bidirectional:
            extra["token_type_ids"] = (input_ids == model.config.image_token_index).long()
    with torch.no_grad():
        generated = model.generate(
            input_ids=input_ids,
            attention_mask=inputs["attention_mask"],
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens,
            do_sample=False,
            **extra,
        )
    return input_ids[0].tolist(), generated[0, input_ids.shape[1] :].tolist()


def probe_images() -> tuple[Any, Any]:
    """Two images the tiny model must tell apart."""
    from PIL import Image

    return Image.new("RGB", (_IMAGE_SIZE, _IMAGE_SIZE), (200, 30, 30)), Image.new(
        "RGB", (_IMAGE_SIZE, _IMAGE_SIZE), (30, 30, 200)
    )


def _check_reacts_to_image_and_mask(model: Any, processor: Any) -> None:
    """Refuse to write a model whose greedy answer ignores the image or the image mask."""
    answers = {
        (index, bidirectional): greedy_reference(
            model, processor, image, "What is in this picture?", bidirectional=bidirectional, max_new_tokens=8
        )[1]
        for index, image in enumerate(probe_images())
        for bidirectional in (True, False)
    }
    if answers[0, True] == answers[1, True]:
        raise RuntimeError(f"tiny Gemma3 is degenerate: the same answer {answers[0, True]} for two images")
    if all(answers[i, True] == answers[i, False] for i in (0, 1)):
        raise RuntimeError("tiny Gemma3 is degenerate: causal and bidirectional image attention answer alike")


def _special_token_ids(tokenizer: Any) -> dict[str, int]:
    ids = token_ids(tokenizer, (*_SPECIAL_TOKENS, *_NEWLINES))
    for run in _NEWLINES:
        if tokenizer.encode(run, add_special_tokens=False) != [ids[run]]:
            raise RuntimeError(f"{run!r} is not encoded as one token")
    return ids


def _build_model(*, vocab_size: int, ids: dict[str, int], seed: int) -> Any:
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    config = Gemma3Config(
        text_config={
            **_TEXT,
            "vocab_size": vocab_size,
            "initializer_range": _INITIALIZER_RANGE,
            "bos_token_id": ids["<bos>"],
            "eos_token_id": ids["<eos>"],
            "pad_token_id": ids["<pad>"],
        },
        vision_config=_VISION,
        mm_tokens_per_image=MM_TOKENS_PER_IMAGE,
        boi_token_index=ids[BOI_TOKEN],
        eoi_token_index=ids[EOI_TOKEN],
        image_token_index=ids[IMAGE_TOKEN],
        initializer_range=_INITIALIZER_RANGE,
        dtype="float32",
    )
    config.architectures = ["Gemma3ForConditionalGeneration"]
    # fork_rng: seeding must not disturb the caller's global random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Gemma3ForConditionalGeneration(config)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("norm.weight"):
                    param.normal_(std=_NORM_STD)
            model.model.multi_modal_projector.mm_input_projection_weight.normal_(std=_PROJECTION_STD)
    return model.eval()


def _prefix_vision_weights(out_dir: Path) -> None:
    """Insert ``vision_model.`` after ``vision_tower.`` in weight names (vLLM's names).

    transformers 5.19 writes ``vision_tower.embeddings...`` (the public checkpoints have
    ``vision_tower.vision_model.embeddings...``) and reads both.
    """
    for path in sorted(out_dir.glob("*.safetensors")):
        tensors = load_file(path)
        save_file({_vllm_name(name): tensor for name, tensor in tensors.items()}, path, metadata={"format": "pt"})
    if (out_dir / "model.safetensors.index.json").exists():  # an index would need renaming too
        raise RuntimeError("tiny Gemma3 unexpectedly saved more than one shard")


def _vllm_name(name: str) -> str:
    head, marker, tail = name.partition("vision_tower.")
    if not marker or head not in ("", "model.") or tail.startswith("vision_model."):
        return name
    return f"{head}vision_tower.vision_model.{tail}"
