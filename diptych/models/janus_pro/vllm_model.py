"""Janus-Pro (transformers' ``JanusForConditionalGeneration`` layout) as a vLLM model.

Registered out of tree by :mod:`diptych.engine.vllm_plugin`. One model serves both panels:

- **understanding**: the SigLIP-style ``vision_model`` and its ``aligner`` turn each image
  into ``num_image_tokens`` embeddings at the ``<image_placeholder>`` positions; the Llama
  language model (vLLM's own) answers through ``lm_head``.
- **generation**: image codes live in the token space *after* the text vocabulary (code
  ``c`` is token ``V + c``). Their input embedding is ``generation_aligner(generation_embeddings(c))``
  and their logits come from ``generation_head``. :meth:`compute_logits` returns both heads
  side by side (``V`` text columns, then the codebook); which half a request may sample is
  decided per row by :class:`diptych.models.janus_pro.cfg.JanusLogitsProcessor`, which also
  applies classifier-free guidance across the rows of a pair.

The vision tower and the generation modules are transformers' own modules (plain PyTorch),
so their arithmetic is the reference's; the VQ decoder is not loaded here (the flow worker
decodes image codes).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from transformers import BatchFeature
from vllm.config import VllmConfig
from vllm.config.multimodal import MultiModalDummyOptions
from vllm.model_executor.models.interfaces import (
    MultiModalEmbeddings,
    SupportsMultiModal,
)
from vllm.model_executor.models.utils import (
    AutoWeightsLoader,
    WeightsMapper,
    init_vllm_registered_model,
    maybe_prefix,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import MultiModalDataItems
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    BaseProcessingInfo,
    PromptReplacement,
    PromptUpdate,
    PromptUpdateDetails,
)
from vllm.sequence import IntermediateTensors

from diptych.compat.vllm_internals import merge_multimodal_embeddings

ARCHITECTURE = "JanusForConditionalGeneration"


class JanusProcessingInfo(BaseProcessingInfo):
    def get_hf_config(self) -> Any:
        from transformers import JanusConfig

        return self.ctx.get_hf_config(JanusConfig)

    def get_hf_processor(self, **kwargs: object) -> Any:
        from transformers import JanusProcessor

        return self.ctx.get_hf_processor(JanusProcessor, **kwargs)

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {"image": None}

    def num_image_tokens(self) -> int:
        return int(self.get_hf_config().vision_config.num_image_tokens)


class JanusDummyInputsBuilder(BaseDummyInputsBuilder[JanusProcessingInfo]):
    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return self.info.get_hf_processor().image_token * mm_counts.get("image", 0)

    def get_dummy_mm_data(
        self, seq_len: int, mm_counts: Mapping[str, int], mm_options: MultiModalDummyOptions
    ) -> Any:
        side = self.info.get_hf_config().vision_config.image_size
        return {
            "image": self._get_dummy_images(
                width=side, height=side, num_images=mm_counts.get("image", 0), overrides=mm_options.get("image")
            )
        }


class JanusMultiModalProcessor(BaseMultiModalProcessor[JanusProcessingInfo]):
    def _get_mm_fields_config(
        self, hf_inputs: BatchFeature, hf_processor_mm_kwargs: Mapping[str, object]
    ) -> Mapping[str, MultiModalFieldConfig]:
        return {"pixel_values": MultiModalFieldConfig.batched("image")}

    def _get_prompt_updates(
        self,
        mm_items: MultiModalDataItems,
        hf_processor_mm_kwargs: Mapping[str, object],
        out_mm_kwargs: MultiModalKwargsItems,
    ) -> Sequence[PromptUpdate]:
        # JanusProcessor expands each <image_placeholder> to <begin_of_image>, N placeholders, <end_of_image>.
        tokenizer = self.info.get_tokenizer()
        processor = self.info.get_hf_processor(**hf_processor_mm_kwargs)
        image_id = self.info.get_hf_config().image_token_id
        boi = tokenizer.convert_tokens_to_ids(processor.image_start_token)
        eoi = tokenizer.convert_tokens_to_ids(processor.image_end_token)
        tokens = [boi] + [image_id] * self.info.num_image_tokens() + [eoi]
        return [
            PromptReplacement(
                modality="image",
                target=[image_id],
                replacement=PromptUpdateDetails.select_token_id(tokens, embed_token_id=image_id),
            )
        ]


@MULTIMODAL_REGISTRY.register_processor(
    JanusMultiModalProcessor, info=JanusProcessingInfo, dummy_inputs=JanusDummyInputsBuilder
)
class JanusForConditionalGeneration(nn.Module, SupportsMultiModal):
    hf_to_vllm_mapper = WeightsMapper(
        orig_to_new_prefix={
            "model.language_model.": "language_model.model.",
            "lm_head.": "language_model.lm_head.",
            "model.": "",
        }
    )

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        if modality.startswith("image"):
            return "<image_placeholder>"
        raise ValueError("Only image modality is supported")

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        from transformers.models.janus import modeling_janus as hf

        config = vllm_config.model_config.hf_config
        self.config = config
        self.text_vocab_size = int(config.text_config.vocab_size)
        self.num_image_codes = int(config.vq_config.num_embeddings)
        vision_config = config.vision_config
        vision_config._attn_implementation = "sdpa"
        with self._mark_tower_model(vllm_config, "image"):
            self.vision_model = hf.JanusVisionModel(vision_config)
            self.aligner = hf.JanusVisionAlignerMLP(vision_config)
        vq = config.vq_config
        self.generation_embeddings = nn.Embedding(vq.num_embeddings, vq.embed_dim)
        self.generation_aligner = hf.JanusVQVAEAlignerMLP(vq)
        self.generation_head = hf.JanusVQVAEHead(vq)
        config.text_config.architectures = ["LlamaForCausalLM"]
        with self._mark_language_model(vllm_config):
            self.language_model = init_vllm_registered_model(
                vllm_config=vllm_config,
                hf_config=config.text_config,
                prefix=maybe_prefix(prefix, "language_model"),
            )
        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors

    # -- inputs -----------------------------------------------------------------------------
    def embed_multimodal(self, **kwargs: object) -> MultiModalEmbeddings:
        pixel_values = kwargs.get("pixel_values")
        if pixel_values is None:
            return []
        if isinstance(pixel_values, (list, tuple)):
            pixel_values = torch.stack(list(pixel_values))
        dtype = self.vision_model.embeddings.patch_embedding.weight.dtype
        hidden = self.vision_model(pixel_values.to(dtype)).last_hidden_state
        return list(self.aligner(hidden))

    def embed_input_ids(
        self,
        input_ids: torch.Tensor,
        multimodal_embeddings: MultiModalEmbeddings | None = None,
        *,
        is_multimodal: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Text tokens through the text embedding, image codes (ids ≥ V) through the generation path.

        Branch-free over the whole batch: every token takes both paths and ``where`` picks one.
        """
        is_code = input_ids >= self.text_vocab_size
        text_ids = torch.where(is_code, torch.zeros_like(input_ids), input_ids)
        codes = torch.where(is_code, input_ids - self.text_vocab_size, torch.zeros_like(input_ids))
        embeds = self.language_model.embed_input_ids(text_ids)
        generated = self.generation_aligner(self.generation_embeddings(codes)).to(embeds.dtype)
        embeds = torch.where(is_code.unsqueeze(-1), generated, embeds)
        if multimodal_embeddings is None or len(multimodal_embeddings) == 0:
            return embeds
        assert is_multimodal is not None
        return merge_multimodal_embeddings(embeds, multimodal_embeddings, is_multimodal)

    # -- forward ----------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: object,
    ) -> torch.Tensor | IntermediateTensors:
        if inputs_embeds is None and input_ids is not None:
            inputs_embeds = self.embed_input_ids(input_ids)
        return self.language_model.model(None, positions, intermediate_tensors, inputs_embeds=inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        """Text logits (``V`` columns) then image-code logits (the codebook), per row."""
        text = self.language_model.compute_logits(hidden_states)
        if text is None:
            return None
        codes = self.generation_head(hidden_states).to(text.dtype)
        return torch.cat([text, codes], dim=-1)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        loader = AutoWeightsLoader(self, ignore_unexpected_prefixes=["vqmodel."])
        return loader.load_weights(weights, mapper=self.hf_to_vllm_mapper)
