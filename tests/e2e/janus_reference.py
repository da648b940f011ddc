"""transformers' own Janus-Pro image generation, the reference the served images are held to."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def janus_reference_image(checkpoint: Path, prompt: str, guidance_scale: float,
                          dtype: torch.dtype = torch.float32) -> np.ndarray:
    """Greedy guided generation with ``JanusForConditionalGeneration`` in ``dtype``, decoded to 8-bit RGB."""
    from transformers import AutoProcessor, JanusForConditionalGeneration

    from diptych.models.janus_pro.chat_format import generation_prompt

    processor = AutoProcessor.from_pretrained(checkpoint)
    model = JanusForConditionalGeneration.from_pretrained(checkpoint, dtype=dtype).eval()
    inputs = processor(text=[generation_prompt(prompt)], generation_mode="image", return_tensors="pt")
    with torch.no_grad():
        tokens = model.generate(**inputs, generation_mode="image", do_sample=False, guidance_scale=guidance_scale)
        pixels = model.decode_image_tokens(tokens)[0].float().numpy()
    # deepseek-ai/Janus's conversion (the tiny checkpoint normalises with mean = std = 0.5, as the real one).
    return np.clip((pixels + 1) / 2 * 255, 0, 255).astype(np.uint8)
