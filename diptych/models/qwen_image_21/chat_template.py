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

# Tool use in Qwen3's format (what vLLM's "hermes" parser reads): the tools' JSON signatures
# inside <tools></tools> in the system turn, each call the model makes as
# <tool_call>{"name": …, "arguments": {…}}</tool_call>, and each result a <tool_response> in a
# user turn (a run of tool messages shares one turn). The instructions' wording is ours.
_TOOLS_PREAMBLE = (
    "{%- if tools -%}"
    "{{- '<|im_start|>system\\n' -}}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set content = messages[0]['content'] -%}" + CONTENT_PARTS + "{{- '\\n\\n' -}}"
    "{%- endif -%}"
    "{{- '# Tools\\n\\nThese functions may be called to help with the request. Their signatures:\\n<tools>' -}}"
    "{%- for tool in tools -%}{{- '\\n' -}}{{- tool | tojson -}}{%- endfor -%}"
    "{{- '\\n</tools>\\n\\nTo call one, write its name and a JSON object of arguments between tags:\\n"
    "<tool_call>\\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\\n</tool_call><|im_end|>\\n' -}}"
    "{%- endif -%}"
)
_TOOL_CALLS = (
    "{%- for call in message.tool_calls -%}"
    "{%- if not loop.first or content -%}{{- '\\n' -}}{%- endif -%}"
    "{{- '<tool_call>\\n{\"name\": \"' + call.function.name + '\", \"arguments\": ' -}}"
    "{{- call.function.arguments | tojson -}}{{- '}\\n</tool_call>' -}}"
    "{%- endfor -%}"
)
_TOOL_RESPONSE = (
    "{%- if loop.first or messages[loop.index0 - 1]['role'] != 'tool' -%}{{- '<|im_start|>user' -}}{%- endif -%}"
    "{{- '\\n<tool_response>\\n' -}}" + CONTENT_PARTS + "{{- '\\n</tool_response>' -}}"
    "{%- if loop.last or messages[loop.index0 + 1]['role'] != 'tool' -%}{{- '<|im_end|>\\n' -}}{%- endif -%}"
)

# Qwen3-VL-Instruct's conventions as a template: a leading system message rendered once
# (folded into the tools' system turn when there are tools), with no default system turn;
# user turns with images / videos (CONTENT_PARTS, as Qwen2.5-VL's); assistant turns with
# their tool calls; tool results; the assistant header on request.
CHAT_TEMPLATE = (
    "{%- set image_count = namespace(value=0) -%}"
    "{%- set video_count = namespace(value=0) -%}"
    + _TOOLS_PREAMBLE
    + "{%- for message in messages -%}"
    "{%- set content = message['content'] -%}"
    "{%- if message['role'] == 'system' -%}"
    "{%- if loop.first and not tools -%}"
    "{{- '<|im_start|>system\\n' -}}" + CONTENT_PARTS + "{{- '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- elif message['role'] == 'tool' -%}"
    + _TOOL_RESPONSE
    + "{%- else -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    + CONTENT_PARTS
    + "{%- if message.tool_calls -%}" + _TOOL_CALLS + "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- endif -%}"
)
