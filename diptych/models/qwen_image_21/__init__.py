"""Qwen-Image 2.1 (diffusers' ``QwenImage21Pipeline``: a Qwen3-VL prompt encoder, a block-causal transformer, a 16x RGBA VAE)."""
