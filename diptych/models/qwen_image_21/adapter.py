"""Family (b'): Qwen-Image 2.1 in diffusers' ``QwenImage21Pipeline`` layout.

The Qwen3-VL in ``text_encoder/`` (with its processor in ``processor/``) answers questions,
served by vLLM's own Qwen3-VL from a staged directory (``vlm_staging.py``). Generation and
editing with up to :data:`MAX_REFERENCES` reference images run in the flow worker
(``flow.py``), which loads the Qwen3-VL again to encode prompts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

from diptych.models.base import Capabilities, ChatPrompt, FlowRunner, WeightFiles, diffusers_vlm_weight_files
from diptych.types import ChatMessage, Tool

# Declared in model_index.json (diffusers ignores keys starting with "_"); the pipeline takes it
# as its ``output_resolution`` argument.
OUTPUT_RESOLUTION_KEY = "_diptych_output_resolution"
# The pipeline's default: reference images are resized to about this side squared (for both
# the VLM and the VAE), and it is the side drawn when no size is asked for.
DEFAULT_OUTPUT_RESOLUTION = 1024
# The pipeline rounds sizes to 32 px (16x VAE, 2x2 patches).
_SIZE_MULTIPLE = 32
# Reference images an edit takes, as Qwen-Image 2.1 is documented to.
MAX_REFERENCES = 10


class QwenImage21Adapter:
    family: ClassVar[str] = "qwen-image-2.1"

    def __init__(self, model_dir: Path) -> None:
        self.model_dir = model_dir
        index = json.loads((model_dir / "model_index.json").read_text())
        missing = [c for c in ("text_encoder", "processor", "transformer", "vae", "scheduler") if c not in index]
        if missing:
            raise ValueError(f"{model_dir}/model_index.json lacks components {missing}")
        self.output_resolution = _declared_resolution(index, model_dir)
        self._staged: Path | None = None

    def capabilities(self) -> Capabilities:
        side = self.output_resolution
        return Capabilities(
            understand=True,
            generate=True,
            edit=True,
            min_side=_SIZE_MULTIPLE,
            max_side=2 * side,
            size_multiple=_SIZE_MULTIPLE,
            default_size=(side, side),
            max_source_images=MAX_REFERENCES,
            supports_mask=False,
            reference_alpha=True,
            output_resolution=side,
            default_steps=20,
            default_guidance_scale=4.0,
            # Qwen3-VL writes its calls in the hermes format, when its template teaches tools.
            tool_parser="hermes" if _template_renders_tools(self.model_dir / "processor") else None,
        )

    def prepare_ar_model(self, staging_root: Path) -> Path:
        from diptych.models.qwen_image_21.vlm_staging import stage_for_vllm

        self._staged = stage_for_vllm(self.model_dir, staging_root)
        return self._staged

    @cached_property
    def _processor(self) -> Any:
        from diptych import compat

        compat.install()
        from transformers import AutoProcessor

        # The staged directory links processor/: the files vLLM renders with, so prompts count alike.
        return AutoProcessor.from_pretrained(self._staged or self.model_dir / "processor")

    def render_chat(self, messages: tuple[ChatMessage, ...], tools: tuple[Tool, ...] = ()) -> ChatPrompt:
        from diptych.models.qwen_image.chat import render_chat
        from diptych.models.qwen_image_21.chat_template import CHAT_TEMPLATE

        return render_chat(self._processor, messages, fallback_template=CHAT_TEMPLATE, tools=tools)

    def chat_tokenizer(self) -> Any:
        return self._processor.tokenizer

    def count_prompt_tokens(self, prompt: ChatPrompt | str) -> int:
        from diptych.models.qwen_image.chat import count_tokens

        return count_tokens(self._processor, prompt)

    def checkpoint_dtype(self) -> str | None:
        config = json.loads((self.model_dir / "text_encoder" / "config.json").read_text())
        text = config.get("text_config", {})
        return config.get("dtype") or config.get("torch_dtype") or text.get("dtype") or text.get("torch_dtype")

    def build_flow_runner(self, device: str, dtype: str, cache_bytes: int = 0) -> FlowRunner[Any]:
        import torch

        from diptych.models.qwen_image_21.flow import QwenImage21FlowRunner

        return QwenImage21FlowRunner(self.model_dir, device, dtype=getattr(torch, dtype),
                                     output_resolution=self.output_resolution, max_references=MAX_REFERENCES,
                                     cache_bytes=cache_bytes)

    def weight_files(self) -> Mapping[str, tuple[WeightFiles, ...]]:
        return diffusers_vlm_weight_files(self.model_dir)  # the Qwen3-VL twice: vLLM's, and the prompts'


def _declared_resolution(index: dict[str, Any], model_dir: Path) -> int:
    value = index.get(OUTPUT_RESOLUTION_KEY, DEFAULT_OUTPUT_RESOLUTION)
    # bool is an int to Python, and true is no side.
    if isinstance(value, bool) or not isinstance(value, int) or value < _SIZE_MULTIPLE or value % _SIZE_MULTIPLE:
        raise ValueError(f"{model_dir}/model_index.json: {OUTPUT_RESOLUTION_KEY} must be a multiple of "
                         f"{_SIZE_MULTIPLE} of at least {_SIZE_MULTIPLE}, got {value!r}")
    return value


def _template_renders_tools(processor_dir: Path) -> bool:
    """Whether the checkpoint's chat template uses the ``tools`` variable (wherever the files keep it)."""
    texts = [(processor_dir / "chat_template.jinja")]
    texts += [processor_dir / name for name in ("chat_template.json", "tokenizer_config.json")]
    return any("tools" in path.read_text() for path in texts if path.is_file())
