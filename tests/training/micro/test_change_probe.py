"""The change probe marks the tokens an edit changes, and reads the transformer's middle block."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from training.micro.change_probe import ChangeProbe, changed_tokens
from training.micro.checkpoint import FULL
from diptych.bench.shapes.world import Scene, ShapeObject, render
from diptych.models.qwen_image import latents as lat


def test_only_the_patches_an_edit_touches_are_marked() -> None:
    kept = ShapeObject(8, "square", "blue", "large")  # bottom right: the last 2×2 patches of a 4×4 grid
    before = Scene((ShapeObject(0, "circle", "red", "small"), kept))
    after = Scene((ShapeObject(0, "circle", "green", "small"), kept))
    changed = changed_tokens(render(before), render(after), 4).view(4, 4)
    # A small circle centred in the top-left cell (x, y ≈ 10.7 ± 4.8 px) lies inside the first 16×16 patch.
    expected = torch.zeros(4, 4)
    expected[0, 0] = 1
    assert torch.equal(changed, expected)
    assert not changed_tokens(render(before), render(before), 4).any()


def test_patches_are_ordered_as_packed_tokens() -> None:
    # A picture whose only difference is one pixel: the token holding it, in packing order.
    pixels = torch.zeros(64, 64, 3, dtype=torch.uint8)
    moved = pixels.clone()
    moved[40, 9] = 255  # row 40 → patch row 2, column 9 → patch column 0
    changed = changed_tokens(_image(pixels), _image(moved), 4)
    marker = torch.zeros(1, 1, 1, 8, 8)
    marker[..., 40 // 8, 9 // 8] = 1  # the same spot on the 8×8 latent grid, packed 2×2 as the runner packs
    assert torch.equal(changed, (lat.pack(marker).sum(-1) > 0).float()[0])


def test_the_loss_reads_the_middle_blocks_target_tokens() -> None:
    from diffusers import QwenImageTransformer2DModel

    transformer = QwenImageTransformer2DModel(**FULL.transformer, in_channels=16, out_channels=4,
                                              joint_attention_dim=8)
    seen: list[torch.Tensor] = []
    transformer.transformer_blocks[2].register_forward_hook(lambda _m, _args, out: seen.append(out[1]))
    probe = ChangeProbe(transformer.inner_dim)
    changed = torch.tensor([[1.0] * 4 + [0.0] * 12, [0.0] * 16])
    with probe.reading(transformer):  # 16 target tokens, then 16 source tokens
        transformer(hidden_states=torch.randn(2, 32, 16), timestep=torch.tensor([0.5, 0.9]),
                    encoder_hidden_states=torch.randn(2, 3, 8), img_shapes=[[(1, 4, 4), (1, 4, 4)]] * 2,
                    return_dict=False)
    expected = F.binary_cross_entropy_with_logits(probe.head(seen[0][:, :16]).squeeze(-1), changed)
    assert torch.allclose(probe.loss(changed), expected)
    # Outside `reading`, forwards are not captured, and a loss without a captured forward is refused.
    transformer(hidden_states=torch.randn(1, 16, 16), timestep=torch.tensor([0.5]),
                encoder_hidden_states=torch.randn(1, 3, 8), img_shapes=[[(1, 4, 4)]], return_dict=False)
    with pytest.raises(RuntimeError, match="no forward"):
        probe.loss(changed)


def _image(pixels: torch.Tensor) -> Image.Image:
    return Image.fromarray(pixels.numpy())
