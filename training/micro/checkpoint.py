"""The micro model's checkpoint: sizes of its three parts and the Qwen-Image-Edit layout it is saved in.

The layout and conventions are those of ``models/qwen_image/tiny.py`` (diffusers' public
Qwen-Image-Edit layout: ``model_index.json``, ``text_encoder/``, ``tokenizer/``,
``processor/``, ``transformer/``, ``vae/``, ``scheduler/``), so the family adapter serves it
like any public checkpoint. What differs is what is in it: a tokenizer learnt on the
shapes world, a processor that sees every picture at 84×84 (9 vision tokens, one a cell), and
trained weights. Each training stage saves its own part; :func:`write_skeleton` writes the
parts no stage trains.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from diptych.models.qwen_image.adapter import GUIDANCE_SCALE_KEY, IMAGE_SIDE_KEY
from diptych.models.qwen_image.chat_template import CHAT_TEMPLATE
from diptych.models.qwen_image.source import SOURCE_AREA_KEY
from diptych.models.qwen_image.tiny import SCHEDULER_CONFIG, text_hidden_size
from diptych.models.qwen_image.tiny_vlm import special_token_ids
from diptych.models.tiny_files import write_json
from training.micro.tokenizer import build_tokenizer

logger = logging.getLogger(__name__)

SIZE = 64  # the world's pictures; also ShapesBench's default size, and the checkpoint's default image side
# Edits: the source is prepared at this area (64×64 stays 64×64). QwenImageEditPipeline
# brings every source to 1024² pixels; at 8x VAE compression that is 4096 source tokens
# per transformer row, which no 2-core training budget can afford; the checkpoint declares
# its area in model_index.json (SOURCE_AREA_KEY) and the adapter passes it to the runner.
EDIT_SOURCE_AREA = SIZE * SIZE
# The checkpoint's default guidance_scale (model_index.json, GUIDANCE_SCALE_KEY). On run b1's
# transformer (ShapesBench, 105 items of seed 1, which nothing was tuned on), guidance 2 gave
# text-to-image 54% and edit 23% against 48% and 19% at the public default of 4; at 4, prompts
# for one object often came out empty.
GUIDANCE_SCALE = 2.0
MAX_CHECKPOINT_BYTES = 40 * 1000 * 1000
# The VLM sees every picture at 84×84: 6×6 patches of 14 px, merged 2×2 into 3×3 tokens,
# one for each cell of the world's grid, so an object's attributes sit in one token for the
# language model to find (at 112×112 a 4×4 token grid cut every cell, and the centre cell's
# object was split across four tokens).
VISION_PIXELS = 84 * 84
_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


@dataclass(frozen=True)
class Architecture:
    """Configs of the three trained parts (kwargs of the diffusers / transformers classes)."""

    vae: dict[str, Any]
    text: dict[str, Any]
    vision: dict[str, Any]
    transformer: dict[str, Any]
    vocab_size: int = 768


# About 8.1M parameters, 32 MB in float32: VAE 0.83M, VLM 3.53M (vision 0.88M), transformer 3.70M.
FULL = Architecture(
    # Three 2x stages (8x, the size multiple the server expects); z 16 as the real VAE.
    vae={"base_dim": 16, "z_dim": 16, "dim_mult": [1, 2, 2, 2], "num_res_blocks": 1, "attn_scales": [],
         "temperal_downsample": [False, True, True], "dropout": 0.0},
    # head_dim 64 (vLLM's CPU attention supports it); mrope_section sums to head_dim / 2.
    # rope_theta 1e6, as the public Qwen2.5-VL: an answer finds its object by content, and
    # only slowly turning rotary pairs compare a question with picture tokens 20 to 150
    # positions back alike at every distance. Against 1e4, same seed and steps: VQA 74.7%
    # against 60% on 150 held-out items, 82 against 62 of 100 training-split questions.
    text={"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 4,
          "num_key_value_heads": 2, "max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "hidden_act": "silu",
          "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [8, 12, 12]}},
    vision={"depth": 2, "hidden_size": 128, "intermediate_size": 256, "num_heads": 2, "in_channels": 3,
            "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "tokens_per_second": 2,
            "window_size": 112, "fullatt_block_indexes": [1], "hidden_act": "silu"},
    # Width 128 (4 heads of 32), 6 blocks; 16 target tokens (+16 source tokens) per 64×64 picture.
    # zero_cond_t (diffusers' option, as in Qwen-Image-Edit-2511): an edit's source tokens are
    # modulated as at σ 0, so every block can tell the clean source from the noisy target. After
    # 1,000 steps from the same pool and noise, held-out edit flow loss at σ 0.9 fell from 0.210
    # to 0.197, and at σ 0.97 from 0.330 to 0.305; text-to-image is unaffected.
    transformer={"patch_size": 2, "num_layers": 6, "attention_head_dim": 32, "num_attention_heads": 4,
                 "guidance_embeds": False, "axes_dims_rope": [8, 12, 12], "zero_cond_t": True},
)

# For the smoke test: every part as small as the libraries allow, same layout.
SMOKE = Architecture(
    vae={**FULL.vae, "base_dim": 4, "z_dim": 4},
    text={**FULL.text, "hidden_size": 64, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
          "num_key_value_heads": 1, "rope_parameters": {**FULL.text["rope_parameters"], "mrope_section": [4, 6, 6]}},
    vision={**FULL.vision, "depth": 1, "hidden_size": 32, "intermediate_size": 32, "fullatt_block_indexes": [0]},
    transformer={**FULL.transformer, "num_layers": 1, "attention_head_dim": 32, "num_attention_heads": 1,
                 "axes_dims_rope": [8, 12, 12]},
    vocab_size=512,
)
ARCHITECTURES: dict[str, Architecture] = {"full": FULL, "smoke": SMOKE}


def write_skeleton(out: Path, arch: Architecture) -> None:
    """tokenizer/, processor/, scheduler/ and model_index.json: the parts no stage trains."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(arch.vocab_size)
    tokenizer.save_pretrained(out / "tokenizer")
    _write_processor(out / "processor", tokenizer, arch)
    FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG).save_pretrained(out / "scheduler")
    _write_model_index(out)


def load_tokenizer(out: Path) -> Any:
    from transformers import Qwen2Tokenizer

    return Qwen2Tokenizer.from_pretrained(out / "tokenizer")


def load_processor(out: Path) -> Any:
    from transformers import Qwen2VLProcessor

    from diptych import compat

    compat.install()  # the processor's video slot wants torchvision otherwise
    return Qwen2VLProcessor.from_pretrained(out / "processor")


def build_vae(arch: Architecture) -> Any:
    from diffusers import AutoencoderKLQwenImage

    z_dim = arch.vae["z_dim"]
    # Statistics are measured after training (train_vae.latent_statistics); identity until then.
    return AutoencoderKLQwenImage(**arch.vae, latents_mean=[0.0] * z_dim, latents_std=[1.0] * z_dim)


def build_vlm(arch: Architecture, tokenizer: Any) -> Any:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = special_token_ids(tokenizer)
    text_config = {**arch.text, "vocab_size": len(tokenizer), "initializer_range": 0.02,
                   "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
                   "pad_token_id": ids["<|endoftext|>"]}
    vision_config = {**arch.vision, "out_hidden_size": arch.text["hidden_size"], "initializer_range": 0.02}
    config = Qwen2_5_VLConfig(
        text_config=text_config, vision_config=vision_config, image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False, dtype="float32",
    )
    config.architectures = ["Qwen2_5_VLForConditionalGeneration"]
    return Qwen2_5_VLForConditionalGeneration(config)


def save_vlm(model: Any, tokenizer: Any, out: Path) -> None:
    ids = special_token_ids(tokenizer)
    model.save_pretrained(out / "text_encoder")
    # vLLM and transformers stop generating at <|im_end|>: an answer ends its turn.
    (out / "text_encoder" / "generation_config.json").write_text(json.dumps({
        "bos_token_id": ids["<|endoftext|>"], "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
        "pad_token_id": ids["<|endoftext|>"]}, indent=2, sort_keys=True) + "\n")


def build_transformer(arch: Architecture, out: Path) -> Any:
    """A fresh transformer whose input width is the saved VLM's and whose channels are the saved VAE's."""
    from diffusers import QwenImageTransformer2DModel

    z_dim = json.loads((out / "vae" / "config.json").read_text())["z_dim"]
    return QwenImageTransformer2DModel(**arch.transformer, in_channels=z_dim * 4, out_channels=z_dim,
                                       joint_attention_dim=text_hidden_size(out / "text_encoder"))


def weights_bytes(out: Path) -> int:
    return sum(path.stat().st_size for path in out.rglob("*.safetensors"))


def check_size(out: Path, limit: int = MAX_CHECKPOINT_BYTES) -> int:
    """Total bytes of the checkpoint's safetensors; ``ValueError`` past ``limit`` (the repository's budget)."""
    total = weights_bytes(out)
    if total > limit:
        raise ValueError(f"checkpoint {out} has {total} bytes of weights, over the limit of {limit}")
    return total


def _write_processor(processor_dir: Path, tokenizer: Any, arch: Architecture) -> None:
    tokenizer.save_pretrained(processor_dir)
    # min = max pixels: every picture (a 64×64 scene, a chat image, an edit source) is seen
    # at 84×84, so training and serving give the VLM the same 9 tokens.
    shared = {
        "min_pixels": VISION_PIXELS, "max_pixels": VISION_PIXELS,
        "size": {"shortest_edge": VISION_PIXELS, "longest_edge": VISION_PIXELS},
        "patch_size": arch.vision["patch_size"], "temporal_patch_size": arch.vision["temporal_patch_size"],
        "merge_size": arch.vision["spatial_merge_size"], "image_mean": _CLIP_MEAN, "image_std": _CLIP_STD,
        "do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "do_convert_rgb": True, "resample": 3, "processor_class": "Qwen2_5_VLProcessor",
    }
    write_json(processor_dir / "preprocessor_config.json", {**shared, "image_processor_type": "Qwen2VLImageProcessor"})
    write_json(processor_dir / "video_preprocessor_config.json",
                {**shared, "video_processor_type": "Qwen2VLVideoProcessor", "fps": 2.0, "do_sample_frames": False})
    (processor_dir / "chat_template.jinja").write_text(CHAT_TEMPLATE)


def _write_model_index(out: Path) -> None:
    import diffusers

    index = {
        "_class_name": "QwenImageEditPipeline", "_diffusers_version": diffusers.__version__,
        SOURCE_AREA_KEY: EDIT_SOURCE_AREA,
        GUIDANCE_SCALE_KEY: GUIDANCE_SCALE,
        IMAGE_SIDE_KEY: SIZE,
        "processor": ["transformers", "Qwen2VLProcessor"],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "Qwen2_5_VLForConditionalGeneration"],
        "tokenizer": ["transformers", "Qwen2Tokenizer"],
        "transformer": ["diffusers", "QwenImageTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKLQwenImage"],
    }
    write_json(out / "model_index.json", index)



def module_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
