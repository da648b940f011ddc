"""Janus-Pro's conversation format and special tokens (deepseek-ai/Janus, ``sft_format``).

A turn is ``<|User|>: text\\n\\n<|Assistant|>:``; an image in a user turn is the
``<image_placeholder>`` that the processor expands to ``<begin_of_image>`` + N image
tokens + ``<end_of_image>``. Image generation uses the same format with an empty system
prompt and appends ``<begin_of_image>``; its unconditional twin replaces every token but
the leading BOS and the trailing ``<begin_of_image>`` with the pad token.
"""

from __future__ import annotations

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
PAD = "<｜▁pad▁｜>"
IMAGE_TOKEN = "<image_placeholder>"
BOI = "<begin_of_image>"
EOI = "<end_of_image>"
USER = "<|User|>"
ASSISTANT = "<|Assistant|>"

# In the order the public tokenizer numbers its added tokens relative to each other.
SPECIAL_TOKENS: tuple[str, ...] = (BOS, EOS, PAD, USER, ASSISTANT, IMAGE_TOKEN, BOI, EOI)

# Renders like the published Janus-Pro processor template: "<|User|>: …\n\n<|Assistant|>: …<eos>",
# images as <image_placeholder> on their own line, a system turn as plain text first.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{%- for part in message['content'] -%}{%- if part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}{%- endfor -%}"
    "{{ '\\n\\n' }}"
    "{%- elif message['role'] == 'user' -%}"
    "{{ '<|User|>: ' }}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}<image_placeholder>{{ '\\n' }}"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
    "{%- endfor -%}"
    "{{ '\\n\\n' }}"
    "{%- else -%}"
    "{{ '<|Assistant|>: ' }}"
    "{%- for part in message['content'] -%}{%- if part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}{%- endfor -%}"
    "<｜end▁of▁sentence｜>"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|Assistant|>:{%- endif -%}"
)


def generation_prompt(prompt: str) -> str:
    """The text of an image-generation prompt, before ``<begin_of_image>`` (the reference's format).

    BOS is added by the tokenizer; the reference's empty system prompt contributes nothing.
    """
    return f"{USER}: {prompt}\n\n{ASSISTANT}:"
