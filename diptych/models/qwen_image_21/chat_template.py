"""Qwen3-VL's chat conventions: its added tokens and its chat template (no default system turn).

The tiny-checkpoint writer saves these with its tokenizer. ``QwenImage21Pipeline`` drops the
system turn from the prompt embeddings by a count it derives by rendering a system-only
message with this template, so a system message must render exactly as Qwen3-VL's own
template renders it: ``<|im_start|>system\\n{text}<|im_end|>\\n``, text parts concatenated.
"""

from __future__ import annotations

from diptych.models.qwen_image.chat_template import CONTENT_PARTS
from diptych.models.qwen_image.chat_template import SPECIAL_TOKENS as QWEN2_5_VL_SPECIAL_TOKENS

# Qwen3-VL numbers Qwen2.5-VL's special tokens first (151643 … 151656), then these
# (151657 … 151668): tool and fill-in-the-middle markers and the thinking delimiters.
QWEN3_EXTRA_TOKENS: tuple[str, ...] = (
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
)
SPECIAL_TOKENS: tuple[str, ...] = QWEN2_5_VL_SPECIAL_TOKENS + QWEN3_EXTRA_TOKENS

# The parts of Qwen3-VL-Instruct's template that a prompt encoder meets (tools are left out):
# a leading system message rendered once, with no default system turn when there is none;
# user turns with images / videos (CONTENT_PARTS, as Qwen2.5-VL's); assistant turns; the
# assistant header on request.
CHAT_TEMPLATE = (
    "{%- set image_count = namespace(value=0) -%}"
    "{%- set video_count = namespace(value=0) -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] != 'system' or loop.first -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- set content = message['content'] -%}"
    + CONTENT_PARTS
    + "{{- '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- endif -%}"
)
