"""Qwen2.5-VL's chat conventions: its special tokens and its chat template.

The tiny-checkpoint writer saves these with its tokenizer, and staging falls back to them
for a checkpoint whose tokenizer carries no chat template (Qwen-Image text-to-image ships
no ``processor/`` folder).
"""

from __future__ import annotations

# In the order Qwen2.5-VL's tokenizer numbers them (151643 …), so a tiny tokenizer that
# appends them in this order lays them out the same way relative to each other.
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

IMAGE_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"
VIDEO_PLACEHOLDER = "<|vision_start|><|video_pad|><|vision_end|>"
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

# The body of one message, from the Jinja variable ``content``: a string, or parts in which
# each image (or video) is a vision-start / pad / vision-end triple that the processor
# expands, with optional "Picture N: " labels (``add_vision_id``; the template sets the
# ``image_count`` and ``video_count`` namespaces). Qwen2.5-VL's and Qwen3-VL's templates
# render it alike.
CONTENT_PARTS = (
    "{%- if content is string -%}{{- content -}}"
    "{%- else -%}{%- for part in content -%}"
    "{%- if part['type'] == 'image' or 'image' in part or 'image_url' in part -%}"
    "{%- set image_count.value = image_count.value + 1 -%}"
    "{%- if add_vision_id -%}{{- 'Picture ' ~ image_count.value ~ ': ' -}}{%- endif -%}"
    "{{- '" + IMAGE_PLACEHOLDER + "' -}}"
    "{%- elif part['type'] == 'video' or 'video' in part -%}"
    "{%- set video_count.value = video_count.value + 1 -%}"
    "{%- if add_vision_id -%}{{- 'Video ' ~ video_count.value ~ ': ' -}}{%- endif -%}"
    "{{- '" + VIDEO_PLACEHOLDER + "' -}}"
    "{%- elif 'text' in part -%}{{- part['text'] -}}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
)

# Renders like Qwen2.5-VL's published template: a default system turn when the
# conversation has none, one ``<|im_start|>role\n…<|im_end|>\n`` block per message, each
# image (or video) as a vision-start / pad / vision-end triple that the processor expands,
# optional "Picture N: " labels (``add_vision_id``), and the assistant header on request.
CHAT_TEMPLATE = (
    "{%- set image_count = namespace(value=0) -%}"
    "{%- set video_count = namespace(value=0) -%}"
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\n" + DEFAULT_SYSTEM_PROMPT + "<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- set content = message['content'] -%}"
    + CONTENT_PARTS
    + "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- endif -%}"
)
