"""The micro model's tokenizer: a byte-level BPE trained on the shapes world's own language.

A Qwen2 tokenizer in every respect the server relies on (Qwen2.5-VL's special tokens in
their order, its chat template, Qwen2's pre-tokenisation split), but with merges learnt
from what the micro model reads and writes: captions, questions, answers, instructions and
the fixed system prompts of the chat and of Qwen-Image's two prompt templates. Words of the
world then are single tokens, so a prompt is short and an answer is one or two tokens.
Deterministic: the corpus is a fixed range of training examples.
"""

from __future__ import annotations

from typing import Any

from diptych.bench.shapes.data import caption_example, edit_example, vqa_example
from diptych.bench.shapes.world import Split
from diptych.models.qwen_image.chat_template import DEFAULT_SYSTEM_PROMPT
from diptych.models.qwen_image.prompt import EDIT_TEMPLATE, GENERATE_TEMPLATE
from diptych.models.qwen_image.tiny_vlm import qwen2_tokenizer

VOCAB_SIZE = 768  # the world's ~100 words plus the templates' words; the rest are byte merges
_CORPUS_EXAMPLES = 400  # per kind; the grammar is small, so a few hundred sentences cover it

# Ways of asking for a description in chat; the VLM is trained to answer them with the
# full caption (training.micro.train_vlm), and users may ask so.
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
    return qwen2_tokenizer(corpus(), vocab_size)
