"""Prompt encoding for Qwen-Image: the VLM's last hidden states of a chat-templated prompt.

Follows diffusers' ``QwenImagePipeline._get_qwen_prompt_embeds`` (text only, through the
tokenizer) and ``QwenImageEditPipeline._get_qwen_prompt_embeds`` (text and source image,
through the processor), with one deliberate difference: the number of template tokens
dropped from the front is computed from the tokenizer instead of being the hard-coded
34 / 64 that only holds for the real Qwen2.5-VL tokenizer.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

logger = logging.getLogger(__name__)

GENERATE_TEMPLATE = (
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, "
    "spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n"
    "<|im_start|>assistant\n"
)
EDIT_TEMPLATE = (
    "<|im_start|>system\nDescribe the key features of the input image (color, shape, size, texture, objects, "
    "background), then explain how the user's text instruction should alter or modify the image. Generate a new "
    "image that meets the user's requirements while maintaining consistency with the original input where "
    "appropriate.<|im_end|>\n<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{}<|im_end|>\n"
    "<|im_start|>assistant\n"
)
# The dropped prefix is the system turn and the user header; the user content (the source
# image's vision tokens, then the text) is what conditions the transformer.
_USER_HEADER = "<|im_start|>user\n"
# Text-to-image: the pipeline's tokenizer_max_length and max_sequence_length defaults.
TOKENIZER_MAX_LENGTH = 1024
MAX_SEQUENCE_LENGTH = 512


def template_prefix(template: str) -> str:
    """The part of ``template`` that is dropped from the embeddings: everything up to the user content."""
    end = template.index(_USER_HEADER) + len(_USER_HEADER)
    return template[:end]


def prefix_token_count(tokenizer: Any, template: str) -> int:
    """How many tokens the template's prefix takes, checked against a tokenised full prompt.

    Raises ``ValueError`` if the prefix does not tokenise to a prefix of the full prompt's ids
    (a tokenizer that merges across the boundary would make any fixed drop count wrong).
    """
    # Tokenise exactly as the encoder does (special tokens included), so a BOS would be counted too.
    prefix_ids = tokenizer(template_prefix(template))["input_ids"]
    full_ids = tokenizer(template.format("a probe prompt"))["input_ids"]
    if list(full_ids[: len(prefix_ids)]) != list(prefix_ids):
        raise ValueError(
            f"the template prefix tokenises to {prefix_ids} but the full prompt starts with "
            f"{full_ids[: len(prefix_ids)]}; cannot drop a fixed number of prefix tokens"
        )
    return len(prefix_ids)


@dataclass(frozen=True)
class PromptEmbedding:
    """One prompt's conditioning: ``[1, L, D]`` hidden states of the user content (no padding)."""

    embeds: torch.Tensor

    @property
    def num_tokens(self) -> int:
        return int(self.embeds.shape[1])


class PromptEncoder:
    """Runs the VLM over templated prompts; stateless between calls."""

    def __init__(self, text_encoder: Any, tokenizer: Any, processor: Any | None, dtype: torch.dtype) -> None:
        self._text_encoder = text_encoder
        self._tokenizer = tokenizer
        self._processor = processor
        self._dtype = dtype
        self.generate_prefix_len = prefix_token_count(tokenizer, GENERATE_TEMPLATE)
        # The processor tokenises with its own tokenizer; count with that one when there is one.
        edit_tokenizer = processor.tokenizer if processor is not None else tokenizer
        self.edit_prefix_len = prefix_token_count(edit_tokenizer, EDIT_TEMPLATE)
        logger.debug("template prefixes: generate %d tokens, edit %d tokens", self.generate_prefix_len, self.edit_prefix_len)

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def processor(self) -> Any | None:
        return self._processor

    @property
    def device(self) -> torch.device:
        return next(self._text_encoder.parameters()).device

    def encode_text(self, prompt: str) -> PromptEmbedding:
        return self.encode_texts([prompt])[0]

    def encode_with_image(self, prompt: str, image: Image.Image) -> PromptEmbedding:
        return self.encode_with_images([(prompt, image)])[0]

    @torch.inference_mode()
    def encode_texts(self, prompts: Sequence[str]) -> list[PromptEmbedding]:
        """Text-to-image conditioning of each prompt, in one VLM forward, truncated as the pipeline truncates."""
        if not prompts:
            return []
        drop = self.generate_prefix_len
        tokens = self._tokenizer(
            [GENERATE_TEMPLATE.format(prompt) for prompt in prompts],
            max_length=TOKENIZER_MAX_LENGTH + drop,
            padding=True,
            padding_side="right",
            truncation=True,
            return_tensors="pt",
        ).to(self.device)
        hidden = self._last_hidden(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
        # clone: a view would keep the whole batch's hidden states alive in the prompt cache.
        return [
            PromptEmbedding(embeds=row[drop:length][:MAX_SEQUENCE_LENGTH][None].to(self._dtype).clone())
            for row, length in zip(hidden, _lengths(tokens.attention_mask), strict=True)
        ]

    @torch.inference_mode()
    def encode_with_images(self, pairs: Sequence[tuple[str, Image.Image]]) -> list[PromptEmbedding]:
        """Edit conditioning of each (instruction, source image), in one VLM forward (no truncation, as the pipeline)."""
        if not pairs:
            return []
        if self._processor is None:
            raise ValueError("this checkpoint has no processor/ and cannot encode a source image")
        inputs = self._processor(
            text=[EDIT_TEMPLATE.format(prompt) for prompt, _ in pairs],
            images=[image for _, image in pairs],
            padding=True,
            padding_side="right",
            return_tensors="pt",
        ).to(self.device)
        # Not the processor's mm_token_type_ids: the pipeline does not pass them, and with them
        # transformers computes other rotary positions (the embeddings change).
        hidden = self._last_hidden(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            pixel_values=inputs.get("pixel_values"),
            image_grid_thw=inputs.get("image_grid_thw"),
        )
        drop = self.edit_prefix_len
        return [
            PromptEmbedding(embeds=row[drop:length][None].to(self._dtype).clone())
            for row, length in zip(hidden, _lengths(inputs["attention_mask"]), strict=True)
        ]

    def _last_hidden(self, **inputs: Any) -> torch.Tensor:
        # Right padding: each prompt's tokens keep the positions they have alone, and causal
        # attention keeps the padding after them out of their hidden states.
        outputs = self._text_encoder(**inputs, output_hidden_states=True)
        return outputs.hidden_states[-1]


def _lengths(attention_mask: torch.Tensor) -> list[int]:
    return [int(n) for n in attention_mask.sum(dim=1).tolist()]
