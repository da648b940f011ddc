"""A torchvision-free stand-in for transformers' ``Qwen2VLVideoProcessor``.

Qwen2-VL / Qwen2.5-VL processors have a video slot, and transformers fills it with a
torchvision-backed class whenever it loads the processor, even for image-only use. This
placeholder carries the same name, configuration and defaults, loads and saves the same
``video_preprocessor_config.json``, and reports how many tokens a video would take; only
processing a video raises, naming the missing library. Diptych serves no video input.

Imported only by the post-import hook in :mod:`diptych.compat.torchvision_free`, after
transformers is loaded.
"""

from __future__ import annotations

from typing import Any

from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling
from transformers.processing_utils import VideosKwargs
from transformers.video_processing_utils import BaseVideoProcessor


class Qwen2VLVideoProcessorKwargs(VideosKwargs, total=False):
    """The keyword arguments Qwen2-VL's video processor accepts (so callers' kwargs validate)."""

    min_pixels: int
    max_pixels: int
    patch_size: int
    temporal_patch_size: int
    merge_size: int
    min_frames: int
    max_frames: int
    cap_pixels_per_frame: bool
    max_video_tokens: int


class VideoInputUnavailableError(NotImplementedError):
    """Raised when a video reaches the placeholder."""


class Qwen2VLVideoProcessor(BaseVideoProcessor):
    """Same name as transformers' class: that is how ``AutoVideoProcessor`` finds it from a config."""

    resample = PILImageResampling.BICUBIC
    size = {"shortest_edge": 128 * 28 * 28, "longest_edge": 28 * 28 * 768}
    image_mean = OPENAI_CLIP_MEAN
    image_std = OPENAI_CLIP_STD
    do_resize = True
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True
    patch_size = 14
    temporal_patch_size = 2
    merge_size = 2
    min_frames = 4
    max_frames = 768
    do_sample_frames = False
    valid_kwargs = Qwen2VLVideoProcessorKwargs
    model_input_names = ["pixel_values_videos", "video_grid_thw"]

    def __init__(self, **kwargs: Any) -> None:
        # Configs written for the real class give the pixel budget as min/max_pixels.
        size = dict(kwargs.pop("size", None) or self.size)
        if (min_pixels := kwargs.pop("min_pixels", None)) is not None:
            size["shortest_edge"] = min_pixels
        if (max_pixels := kwargs.pop("max_pixels", None)) is not None:
            size["longest_edge"] = max_pixels
        super().__init__(size=size, **kwargs)

    def preprocess(self, videos: Any, **kwargs: Any) -> Any:
        raise VideoInputUnavailableError(
            "video input needs torchvision, which is not installed; "
            "Qwen2-VL's video processor is a placeholder here (images work)"
        )
