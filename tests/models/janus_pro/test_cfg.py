"""The CFG logits processor on hand-made batches: head masking, guidance mix, split pairs, row moves."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality

from diptych.models.janus_pro.cfg import JanusLogitsProcessor
from diptych.models.janus_pro.image_tokens import EXTRA_KEY

V, CODES, EOS = 6, 4, 2


def _processor() -> JanusLogitsProcessor:
    text = SimpleNamespace(vocab_size=V, eos_token_id=EOS)
    config = SimpleNamespace(model_config=SimpleNamespace(hf_config=SimpleNamespace(text_config=text)))
    return JanusLogitsProcessor(config, torch.device("cpu"), False)  # type: ignore[arg-type]


def _params(role: str | None, pair: str = "p", scale: float = 3.0) -> SamplingParams:
    extra = None if role is None else {EXTRA_KEY: {"pair": pair, "role": role, "scale": scale}}
    return SamplingParams(extra_args=extra)


def _update(size: int, added: list[tuple[int, SamplingParams, list[int]]], removed: list[int] = (),  # type: ignore[assignment]
            moved: list[tuple[int, int, MoveDirectionality]] = ()) -> BatchUpdate:  # type: ignore[assignment]
    return BatchUpdate(size, list(removed), [(i, p, [], out) for i, p, out in added], list(moved))


def test_guidance_mix_masks_and_split_pairs() -> None:
    proc = _processor()
    cond_out, uncond_out = [V + 1], [V + 1]
    proc.update_state(_update(4, [(0, _params("cond"), cond_out), (1, _params(None), []),
                                  (2, _params("uncond"), uncond_out), (3, _params("cond", pair="lonely"), [])]))
    logits = torch.randn(4, V + CODES)
    original = logits.clone()
    out = proc.apply(logits)
    mixed = original[2, V:] + 3.0 * (original[0, V:] - original[2, V:])
    assert torch.equal(out[0, V:], mixed) and torch.equal(out[2, V:], mixed)
    assert torch.isinf(out[0, :V]).all() and torch.isinf(out[2, :V]).all()
    assert torch.equal(out[1, :V], original[1, :V]) and torch.isinf(out[1, V:]).all()  # text row: text head only
    assert out[3].argmax() == EOS and torch.isinf(out[3]).sum() == V + CODES - 1  # partner missing: stopped

    cond_out.append(V + 2)  # the pair falls out of step: both halves are stopped
    out = proc.apply(original.clone())
    assert out[0].argmax() == EOS and out[2].argmax() == EOS


def test_rows_follow_vllm_batch_moves() -> None:
    proc = _processor()
    proc.update_state(_update(3, [(0, _params("cond"), []), (1, _params(None), []), (2, _params("uncond"), [])]))
    proc.update_state(_update(2, [], removed=[1], moved=[(2, 1, MoveDirectionality.UNIDIRECTIONAL)]))
    logits = torch.randn(2, V + CODES)
    original = logits.clone()
    out = proc.apply(logits)
    mixed = original[1, V:] + 3.0 * (original[0, V:] - original[1, V:])
    assert torch.equal(out[0, V:], mixed) and torch.equal(out[1, V:], mixed)
    proc.update_state(_update(2, [], moved=[(0, 1, MoveDirectionality.SWAP)]))
    out = proc.apply(original.clone())
    mixed = original[0, V:] + 3.0 * (original[1, V:] - original[0, V:])  # cond is row 1 now
    assert torch.equal(out[1, V:], mixed)
