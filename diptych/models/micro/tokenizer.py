"""The micro model's tokenizer: a byte-level BPE trained on the shapes world's own language.

A Qwen2 tokenizer in every respect the server relies on (Qwen2.5-VL's special tokens in
their order, its chat template, Qwen2's pre-tokenisation split), but with merges learnt
from what the micro model reads and writes: captions, questions, answers, instructions and
the fixed system prompts of the chat and of Qwen-Image's two prompt templates. Words of the
world then are single tokens, so a prompt is short and an answer is one or two tokens.
Deterministic: the corpus is a fixed range of training examples.
"""

from __future__ import annotations

import json
from typing import Any

from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

from diptych.models.micro.data import caption_example, edit_example, vqa_example
from diptych.models.micro.world import Split
from diptych.models.qwen_image.chat_template import (
    CHAT_TEMPLATE,
    DEFAULT_SYSTEM_PROMPT,
    SPECIAL_TOKENS,
)
from diptych.models.qwen_image.prompt import EDIT_TEMPLATE, GENERATE_TEMPLATE

# Qwen2's pre-tokenisation split (contractions, letter runs, single digits, punctuation,
# newlines, spaces): the published regex, so text is segmented as the real tokenizer does.
_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
VOCAB_SIZE = 768  # the world's ~100 words plus the templates' words; the rest are byte merges
_CORPUS_EXAMPLES = 400  # per kind; the grammar is small, so a few hundred sentences cover it

# Ways of asking for a description in chat; the VLM is trained to answer them with the
# full caption (diptych.models.micro.train_vlm), and users may ask so.
DESCRIBE_QUESTIONS: tuple[str, ...] = (
    "describe the picture.", "what is in the picture?", "describe the image.", "what do you see?",
)


def corpus() -> list[str]:
    """Sentences the model will see: fixed, so the merges (and the token ids) are reproducible."""
    lines = [DEFAULT_SYSTEM_PROMPT, *DESCRIBE_QUESTIONS]
    for template in (GENERATE_TEMPLATE, EDIT_TEMPLATE):
        lines.append(template.split("<|im_end|>")[0].removeprefix("<|im_start|>system\n"))
    for index in range(_CORPUS_EXAMPLES):
        lines.append(caption_example(Split.TRAIN, index).caption.text)
        vqa = vqa_example(Split.TRAIN, index).pair
        lines.extend((vqa.question, vqa.answer))
        lines.append(edit_example(Split.TRAIN, index).triplet.instruction)
    return lines


def build_tokenizer(vocab_size: int = VOCAB_SIZE) -> Any:
    """Train the BPE on :func:`corpus` and wrap it as a ``Qwen2Tokenizer`` with the chat template."""
    from transformers import AddedToken, Qwen2Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    bpe.train_from_iterator(corpus(), trainer=trainer)
    trained = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in trained["merges"]]
    tokenizer = Qwen2Tokenizer(
        vocab=trained["vocab"], merges=merges, unk_token=None, bos_token=None, eos_token="<|endoftext|>",
        pad_token="<|endoftext|>", errors="replace", model_max_length=32768, clean_up_tokenization_spaces=False,
        split_special_tokens=False,
    )
    # Appended in Qwen2.5-VL's order (<|endoftext|> is already in); ids are read back, never assumed.
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS[1:]]}
    )
    tokenizer.eos_token = "<|im_end|>"  # Qwen2.5-VL-Instruct ends a turn with it
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def special_token_ids(tokenizer: Any) -> dict[str, int]:
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    for token, token_id in ids.items():
        if not isinstance(token_id, int) or tokenizer.convert_ids_to_tokens(token_id) != token:
            raise RuntimeError(f"special token {token!r} did not get its own id (got {token_id!r})")
    return ids
