"""The Janus-Pro adapter: registry, capabilities, chat rendering and the image stage's plan."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from diptych.models.janus_pro import chat_format as cf
from diptych.models.janus_pro.adapter import JanusProAdapter
from diptych.models.janus_pro.image_tokens import EXTRA_KEY
from diptych.models.registry import load_adapter
from diptych.types import ChatMessage, ImagePart, ImageRequest, TextPart


def test_registry_and_capabilities(tiny_janus_dir: Path) -> None:
    adapter = load_adapter(tiny_janus_dir)
    assert isinstance(adapter, JanusProAdapter)
    caps = adapter.capabilities()
    assert caps.names() == ("understand", "generate")
    assert (caps.min_side, caps.max_side, caps.default_size) == (64, 64, (64, 64))
    assert adapter.prepare_ar_model(tiny_janus_dir / "unused") == tiny_janus_dir


def test_render_chat_and_count_tokens(tiny_janus_dir: Path) -> None:
    from transformers import AutoProcessor

    adapter = JanusProAdapter(tiny_janus_dir)
    image = Image.new("RGB", (40, 30), (10, 200, 10))
    prompt = adapter.render_chat((ChatMessage("user", (ImagePart(image), TextPart("What is it?"))),))
    assert prompt.text == f"{cf.USER}: {cf.IMAGE_TOKEN}\nWhat is it?\n\n{cf.ASSISTANT}:"
    processor = AutoProcessor.from_pretrained(tiny_janus_dir)
    ids = processor(text=[prompt.text], images=list(prompt.images), return_tensors="pt")["input_ids"]
    assert adapter.count_prompt_tokens(prompt) == ids.shape[1]


def test_plan_pairs_seeds_and_refusals(tiny_janus_dir: Path) -> None:
    stage = JanusProAdapter(tiny_janus_dir).ar_image_stage()
    spec = stage.spec
    jobs = stage.plan(ImageRequest("r", "a red cat", 64, 64, n=2, guidance_scale=5.0, seed=7, temperature=0.5))
    assert len(jobs) == 2
    for index, job in enumerate(jobs):
        cond, uncond = job.sequences
        assert cond.prompt_token_ids[0] == spec.bos_id and cond.prompt_token_ids[-1] == spec.boi_id
        assert uncond.prompt_token_ids == (spec.bos_id,) + (spec.pad_id,) * (len(cond.prompt_token_ids) - 2) + (
            spec.boi_id,
        )
        for seq, role in ((cond, "cond"), (uncond, "uncond")):
            assert seq.sampling["seed"] == 7 + index and seq.sampling["temperature"] == 0.5
            assert seq.sampling["extra_args"][EXTRA_KEY] == {"pair": f"r/{index}", "role": role, "scale": 5.0}
            assert seq.sampling["max_tokens"] == spec.num_image_tokens
    # Without a seed, both halves still share one.
    (job,) = stage.plan(ImageRequest("s", "a red cat", 64, 64))
    assert job.sequences[0].sampling["seed"] == job.sequences[1].sampling["seed"]
    (single,) = stage.plan(ImageRequest("u", "a red cat", 64, 64, guidance_scale=1.0))
    assert len(single.sequences) == 1
    with pytest.raises(ValueError, match="edit"):
        stage.plan(ImageRequest("e", "x", 64, 64, source_images=(Image.new("RGB", (8, 8)),)))
    assert stage.codes([spec.text_vocab_size + 3] * spec.num_image_tokens) == (3,) * spec.num_image_tokens
    assert stage.codes([spec.eos_id]) is None


def test_weight_files_split_one_checkpoint_between_the_engines(tiny_janus_dir: Path) -> None:
    from diptych.engine.memory_plan import read_header

    weights = JanusProAdapter(tiny_janus_dir).weight_files()
    (ar,), (flow,) = weights["ar"], weights["flow"]
    assert ar.files == flow.files == tuple(sorted(tiny_janus_dir.glob("*.safetensors")))
    names = [name for path in ar.files for name in read_header(path)]
    vq = {name for name in names if flow.keeps(name)}
    # vLLM loads every tensor but the VQ model's; the flow worker only those (decode.py).
    assert vq and all(name.startswith("model.vqmodel.") for name in vq)
    assert {name for name in names if ar.keeps(name)} == set(names) - vq
