"""Family (a): Janus-Pro in transformers' ``JanusForConditionalGeneration`` layout.

vLLM serves the checkpoint directory as it is (our out-of-tree model, ``vllm_model.py``):
chat through the vision encoder, images as guided pairs of code sequences (``stage.py``,
``cfg.py``); the flow worker only VQ-decodes the codes (``decode.py``). Janus-Pro generates
at one size (384×384 for the public checkpoints) and cannot edit.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

from diptych.models.base import Capabilities, ChatPrompt, FlowRunner, WeightFiles, safetensors_in
from diptych.models.chat import apply_chat_template
from diptych.models.janus_pro import chat_format as cf
from diptych.models.janus_pro.image_tokens import TokenSpec, conditional_ids
from diptych.models.janus_pro.stage import JanusImageStage
from diptych.types import ChatMessage


class JanusProAdapter:
    family: ClassVar[str] = "janus-pro"

    def __init__(self, model_dir: Path) -> None:
        self.model_dir = model_dir
        self._config = json.loads((model_dir / "config.json").read_text())
        for key in ("text_config", "vision_config", "vq_config"):
            if key not in self._config:
                raise ValueError(f"{model_dir}/config.json lacks {key}")

    @property
    def image_side(self) -> int:
        vq = self._config["vq_config"]
        vision = self._config["vision_config"]
        patches = vision.get("image_size", 384) // vision.get("patch_size", 16)
        return int(patches * 2 ** (len(vq.get("channel_multiplier", [1, 1, 2, 2, 4])) - 1))

    def capabilities(self) -> Capabilities:
        side = self.image_side
        return Capabilities(
            understand=True,
            generate=True,
            edit=False,
            min_side=side,
            max_side=side,
            size_multiple=side,
            default_size=(side, side),
            max_source_images=0,
            supports_mask=False,
            default_steps=1,  # the flow stage is one VQ decode
            default_guidance_scale=5.0,  # the reference's cfg_weight
        )

    def prepare_ar_model(self, staging_root: Path) -> Path:
        return self.model_dir  # vLLM loads the public layout directly

    @cached_property
    def _processor(self) -> Any:
        from diptych import compat

        compat.install()
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(self.model_dir)

    def render_chat(self, messages: tuple[ChatMessage, ...]) -> ChatPrompt:
        return apply_chat_template(self._processor, messages, cf.IMAGE_TOKEN)

    def count_prompt_tokens(self, prompt: ChatPrompt | str) -> int:
        tokenizer = self._processor.tokenizer
        if isinstance(prompt, str):  # an image prompt, as the stage tokenises it
            return len(conditional_ids(tokenizer, prompt))
        per_image = self._processor.num_image_tokens + 2  # <begin_of_image> codes <end_of_image>
        return len(tokenizer(prompt.text)["input_ids"]) + len(prompt.images) * (per_image - 1)

    def ar_image_stage(self) -> JanusImageStage:
        tokenizer = self._processor.tokenizer
        text = self._config["text_config"]
        spec = TokenSpec(
            text_vocab_size=int(text["vocab_size"]),
            num_image_tokens=int(self._config["vision_config"]["num_image_tokens"]),
            bos_id=tokenizer.bos_token_id,
            boi_id=tokenizer.convert_tokens_to_ids(cf.BOI),
            pad_id=tokenizer.pad_token_id,
            eos_id=tokenizer.eos_token_id,
        )
        return JanusImageStage(tokenizer, spec)

    def checkpoint_dtype(self) -> str | None:
        config = json.loads((self.model_dir / "config.json").read_text())
        return config.get("dtype") or config.get("torch_dtype") or config.get("text_config", {}).get("dtype")

    def build_flow_runner(self, device: str, dtype: str, cache_bytes: int = 0) -> FlowRunner[Any]:
        from diptych.models.janus_pro.decode import JanusDecodeRunner

        return JanusDecodeRunner(self.model_dir, device, dtype)

    def weight_files(self) -> Mapping[str, tuple[WeightFiles, ...]]:
        from diptych.models.janus_pro.decode import VQ_PREFIX

        # One set of files for both engines: vLLM loads every tensor but the VQ model's
        # (vllm_model.py ignores them); the flow worker loads only the VQ model's (decode.py).
        files = safetensors_in(self.model_dir)
        return {
            "ar": (WeightFiles("model", files, skip=(VQ_PREFIX,)),),
            "flow": (WeightFiles("vq model", files, only=(VQ_PREFIX,)),),
        }
