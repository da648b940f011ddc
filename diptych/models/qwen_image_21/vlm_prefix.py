"""Prefix reuse for Qwen-Image 2.1's prompt encoder, a Qwen3-VL.

``QwenImage21Pipeline._get_qwen_prompt_embeds`` runs the VLM over a templated prompt (system
turn, then the user turn: each reference image as ``<imageN><|vision_start|>`` pads
``<|vision_end|>``, then the instruction) and keeps the last decoder layer's output *before*
the final norm. Requests that share the images share every token up to the last
``<|vision_end|>``; only the instruction after it differs. :class:`VLMPrefixEncoder` runs the
whole prompt once and keeps a :class:`VLMPrefix` (the language model's per-layer keys and
values for those tokens); later prompts that extend the prefix run only their own tail through
the language model, over the cached keys and values, and never the vision tower.

Positions. Qwen3-VL rotates by three position axes (frame, row, column). Image tokens take
grid positions, and the text after an image resumes at ``start + max(rows, cols)`` (merged
cells), not at ``start + number of image tokens``; so from there on a text token at index ``i``
sits at position ``i + rope_delta`` on all three axes, with ``rope_delta`` fixed by the images
before it (``get_rope_index`` returns it). That is how transformers continues generation, with
``rope_deltas`` stored on the model; here the delta is kept in the prefix and the positions
are passed explicitly, because the model's stored value belongs to whichever prompt it ran
last.

Deepstack. Qwen3-VL adds vision-tower features to the hidden states at image positions in
its first layers. A tail holds no image tokens (checked), so it runs with no pixel values,
and transformers then adds nothing: the image positions' contribution reaches the tail only
through the cached keys and values, exactly as in a full run.

The prefix must end with one of the tokenizer's added tokens (``<|vision_end|>`` for image
prompts): the tokenizer splits text at those before anything else, so the tokens after the
prefix do not depend on what came before it, and a tail can be tokenized on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

VISION_END = "<|vision_end|>"
# The pipeline's system turn; its tokens are dropped by the caller (``_drop_idx``).
SYSTEM_PROMPT = "Comprehend and analyze the provided prompt."


def render_prompt(prompt: str, num_images: int) -> str:
    """The templated text ``QwenImage21Pipeline`` encodes for ``prompt`` and ``num_images`` references."""
    # The pipeline's substitution: Qwen has no BOS, so an empty prompt would leave nothing to read.
    prompt = prompt or " "
    images = " ".join(f"<image{i}><|vision_start|><|image_pad|>{VISION_END}" for i in range(1, num_images + 1))
    return (f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n"
            f"<|im_start|>user\n{images}{prompt}<|im_end|>\n<|im_start|>assistant\n")


def vision_prefix_end(text: str) -> int | None:
    """The character offset just after the last ``<|vision_end|>`` of ``text``; ``None`` without images."""
    index = text.rfind(VISION_END)
    return None if index < 0 else index + len(VISION_END)


@dataclass(frozen=True, eq=False)
class VLMPrefix:
    """The Qwen3-VL state after the first ``num_tokens`` tokens of a prompt, enough to continue it.

    Treat the tensors as read-only: a prefix may be shared by several requests (continuing one
    concatenates new tensors and leaves these alone). They are cloned, not views of the full
    run's, so :attr:`nbytes` is what the prefix keeps alive.
    """

    text: str  # the templated text the prefix covers; a continuation must start with it
    token_ids: tuple[int, ...]  # its tokens, image pads expanded
    # Per decoder layer, [kv_heads, num_tokens, head_dim]; keys already rotated.
    keys: tuple[torch.Tensor, ...] = field(repr=False)
    values: tuple[torch.Tensor, ...] = field(repr=False)
    hidden_states: torch.Tensor = field(repr=False)  # [num_tokens, hidden]: last layer, before the final norm
    rope_delta: int  # a later token at index i has position i + rope_delta on all three axes

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def nbytes(self) -> int:
        tensors = (*self.keys, *self.values, self.hidden_states)
        return sum(t.numel() * t.element_size() for t in tensors)


class VLMPrefixEncoder:
    """Pre-norm last-layer hidden states of one templated prompt at a time, with prefix reuse.

    ``text_encoder`` is a ``Qwen3VLForConditionalGeneration`` and ``processor`` its
    ``Qwen3VLProcessor``. No per-request state is kept; the final norm carries a forward hook
    while a call runs (as in the pipeline), so calls on one model must not overlap with other
    users of it.
    """

    def __init__(self, text_encoder: Any, processor: Any) -> None:
        self._text_encoder = text_encoder
        # The base model: the pipeline's forward also computes logits that nobody reads.
        self._model = text_encoder.model
        self._processor = processor
        config = text_encoder.config
        self._vision_ids = frozenset({config.image_token_id, config.video_token_id, config.vision_start_token_id})
        self._added_tokens = tuple(processor.tokenizer.get_added_vocab())

    @property
    def device(self) -> torch.device:
        return next(self._text_encoder.parameters()).device

    def tokenize(self, text: str, images: Sequence[Image.Image] = ()) -> list[int]:
        """``text``'s token ids as the encoder sees them: each ``<|image_pad|>`` expanded to its image's tokens."""
        inputs = self._processor(text=[text], images=list(images) or None, return_tensors="pt")
        return inputs["input_ids"][0].tolist()

    @torch.inference_mode()
    def encode(self, text: str, images: Sequence[Image.Image] = (),
               prefix_end: int | None = None) -> tuple[torch.Tensor, VLMPrefix | None]:
        """Hidden states ``[L, D]`` of every token of ``text``, and the prefix ``text[:prefix_end]`` if asked.

        ``images`` are RGB, one per ``<|image_pad|>``, already resized (and composited onto
        white) as the pipeline does. ``prefix_end`` is a character offset, usually
        :func:`vision_prefix_end`; the text after it must hold no image.
        """
        inputs = self._processor(text=[text], images=list(images) or None, return_tensors="pt").to(self.device)
        input_ids = inputs["input_ids"]
        # get_rope_index, not the forward's own position logic: that one stores rope_deltas on the model.
        position_ids, rope_deltas = self._model.get_rope_index(
            input_ids, inputs["mm_token_type_ids"], image_grid_thw=inputs.get("image_grid_thw"))
        cache = _new_cache(self._text_encoder.config) if prefix_end is not None else None
        hidden = self._pre_norm_hidden(
            input_ids=input_ids, attention_mask=inputs["attention_mask"], position_ids=position_ids,
            pixel_values=inputs.get("pixel_values"), image_grid_thw=inputs.get("image_grid_thw"),
            past_key_values=cache, use_cache=cache is not None,
        )
        if prefix_end is None:
            return hidden, None
        ids = input_ids[0].tolist()
        num_tokens = self._prefix_length(text, prefix_end, ids)
        prefix = VLMPrefix(
            text=text[:prefix_end],
            token_ids=tuple(ids[:num_tokens]),
            keys=tuple(layer.keys[0, :, :num_tokens].clone() for layer in cache.layers),
            values=tuple(layer.values[0, :, :num_tokens].clone() for layer in cache.layers),
            hidden_states=hidden[:num_tokens].clone(),
            # The whole prompt's delta is the prefix's: the tail is text only (checked), and
            # text adds as many positions as tokens.
            rope_delta=int(rope_deltas[0, 0]),
        )
        return hidden, prefix

    @torch.inference_mode()
    def encode_suffix(self, text: str, prefix: VLMPrefix) -> torch.Tensor:
        """Hidden states ``[L - prefix.num_tokens, D]`` of the tokens of ``text`` after ``prefix``.

        ``text`` must start with ``prefix.text`` and come with the same images (the caller keys
        prefixes by their images as well as their text). Runs the language model on the tail
        only: no vision tower, no prefix tokens.
        """
        if not text.startswith(prefix.text):
            raise ValueError(f"text {text[:80]!r}... does not start with the prefix's text {prefix.text[-80:]!r}")
        tail = self._tail_ids(text[len(prefix.text):])
        start = prefix.num_tokens
        if not tail:
            return prefix.hidden_states.new_zeros(0, prefix.hidden_states.shape[-1])
        device = self.device
        input_ids = torch.tensor([tail], device=device)
        positions = torch.arange(start, start + len(tail), device=device) + prefix.rope_delta
        cache = _new_cache(self._text_encoder.config,
                           [(k[None].to(device), v[None].to(device)) for k, v in zip(prefix.keys, prefix.values)])
        return self._pre_norm_hidden(
            input_ids=input_ids, position_ids=positions.view(1, 1, -1).expand(3, 1, -1),
            past_key_values=cache, use_cache=True,
        )

    def _prefix_length(self, text: str, prefix_end: int, ids: list[int]) -> int:
        """How many of ``ids`` (``text``'s tokens) belong to ``text[:prefix_end]``."""
        prefix_text = text[:prefix_end]
        if not 0 < prefix_end <= len(text) or not prefix_text.endswith(self._added_tokens):
            raise ValueError(f"prefix_end {prefix_end} of a {len(text)}-character text must end with one of the "
                             f"tokenizer's added tokens, such as {VISION_END}; the prefix ends {prefix_text[-40:]!r}")
        tail = self._tail_ids(text[prefix_end:])
        num_tokens = len(ids) - len(tail)
        if ids[num_tokens:] != tail:
            # Cannot happen after an added token with a well-formed tokenizer; checked, not assumed.
            raise ValueError(f"the text after prefix_end {prefix_end} tokenizes to {tail} alone but to "
                             f"{ids[num_tokens:]} within the prompt")
        return num_tokens

    def _tail_ids(self, tail: str) -> list[int]:
        ids = self._processor.tokenizer(tail, add_special_tokens=False)["input_ids"]
        if self._vision_ids.intersection(ids):
            raise ValueError(f"the text after the prefix holds an image or video ({tail[:80]!r}); "
                             f"the prefix must end after the last {VISION_END}")
        return ids

    def _pre_norm_hidden(self, **inputs: Any) -> torch.Tensor:
        # The pipeline reads hidden_states[-1], which transformers 5 ties to the normed output;
        # the transformer was trained on the last layer *before* the final norm. As in the
        # pipeline, a hook returning the norm's input cancels the norm for this call.
        norm = self._model.language_model.norm
        handle = norm.register_forward_hook(_return_input)
        try:
            return self._model(**inputs).last_hidden_state[0]
        finally:
            handle.remove()


def _return_input(module: torch.nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
    return args[0]


def _new_cache(config: Any, layers: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None) -> Any:
    from transformers import DynamicCache

    # DynamicCache concatenates on update, so seeding it with a prefix's tensors leaves them as they are.
    return DynamicCache(layers, config=config)

