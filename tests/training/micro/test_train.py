"""The micro model's training script: every stage runs and writes a loadable checkpoint, and
what it trains on is what the server computes (loss masks, conditions, noise levels)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diptych import compat
from training.micro import train_dit, train_vlm
from training.micro.checkpoint import (
    EDIT_SOURCE_AREA,
    GUIDANCE_SCALE,
    SIZE,
    SMOKE,
    check_size,
    load_processor,
)
from training.micro.train import (
    SMOKE_BUDGETS,
    STAGES,
    TrainConfig,
    main,
    parse_overrides,
    train,
)
from training.micro.training import Budget, OptimizerSet, learning_rate, make_optimizer
from diptych.bench.shapes.world import Split
from diptych.models.qwen_image.adapter import DEFAULT_GUIDANCE_SCALE, QwenImageAdapter
from diptych.models.qwen_image.conditioning import PromptSpec, image_digest
from diptych.models.qwen_image.flow import QwenImageFlowRunner
from diptych.models.qwen_image.schedule import ShiftConfig, flow_schedule
from diptych.models.qwen_image.source import (
    SOURCE_AREA_KEY,
    prepare_source,
)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("micro") / "ckpt"
    config = TrainConfig(out=out, seed=0, architecture="smoke", budgets=tuple(SMOKE_BUDGETS.items()), threads=1,
                         eval_items=2, show_progress=False)
    return out, train(config)


@pytest.fixture(scope="module")
def runner(smoke: tuple[Path, dict[str, Any]]) -> QwenImageFlowRunner:
    # The runner the server builds: through the family adapter, which reads the source area.
    built = QwenImageAdapter(smoke[0]).build_flow_runner("cpu", "float32")
    assert isinstance(built, QwenImageFlowRunner)
    return built


def test_every_stage_runs_logs_and_writes_its_part(smoke: tuple[Path, dict[str, Any]]) -> None:
    out, summary = smoke
    for stage in STAGES:
        assert summary[stage]["steps"] == SMOKE_BUDGETS[stage].steps, stage  # type: ignore[index]
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    losses = [r for r in records if "step" in r and "loss" in r]
    assert {r["stage"] for r in losses} == set(STAGES)
    assert all(np.isfinite(r["loss"]) for r in losses)
    # The vision probe trains the tower beside the language model, and is logged with it.
    # (A batch of text-only examples has no pictures and no probe loss.)
    probed = [r for r in losses if r["stage"] == "vlm" and "probe_cell" in r]
    assert probed and all(np.isfinite(r["probe_cell"]) and np.isfinite(r["probe_place"]) for r in probed)
    # So does the change probe beside the transformer, at every logged step.
    transformer_steps = [r for r in losses if r["stage"] == "dit"]
    assert transformer_steps and all(np.isfinite(r["change"]) for r in transformer_steps)
    assert records[-1]["event"] == "done" and records[-1]["weights_bytes"] == check_size(out)
    for part in ("vae/diffusion_pytorch_model.safetensors", "transformer/diffusion_pytorch_model.safetensors",
                 "text_encoder/model.safetensors"):
        assert (out / part).is_file(), part
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "QwenImageEditPipeline" and index[SOURCE_AREA_KEY] == EDIT_SOURCE_AREA
    capabilities = QwenImageAdapter(out).capabilities()
    assert capabilities.default_guidance_scale == GUIDANCE_SCALE != DEFAULT_GUIDANCE_SCALE
    assert capabilities.default_size == (SIZE, SIZE)  # what it was trained to draw
    vae = json.loads((out / "vae/config.json").read_text())
    assert min(vae["latents_std"]) > 0 and vae["latents_std"] != [1.0] * vae["z_dim"]  # measured, not the init


def test_checkpoint_loads_in_diffusers_and_transformers(smoke: tuple[Path, dict[str, Any]]) -> None:
    compat.install()
    from diffusers import QwenImageEditPipeline
    from transformers import Qwen2_5_VLForConditionalGeneration

    out, _ = smoke
    pipe = QwenImageEditPipeline.from_pretrained(out)
    assert pipe.transformer.config.joint_attention_dim == pipe.text_encoder.config.text_config.hidden_size
    vlm = Qwen2_5_VLForConditionalGeneration.from_pretrained(out / "text_encoder")
    assert vlm.config.image_token_id == pipe.tokenizer.convert_tokens_to_ids("<|image_pad|>")


def test_size_limit_is_enforced(smoke: tuple[Path, dict[str, Any]]) -> None:
    out, _ = smoke
    with pytest.raises(ValueError, match="over the limit"):
        check_size(out, limit=1000)


def test_answer_tokens_alone_carry_the_loss() -> None:
    ids, labels = train_vlm.target_labels([5, 6, 7], [8, 9])
    assert ids == [5, 6, 7, 8, 9] and labels == [-100, -100, -100, 8, 9]
    torch.manual_seed(0)
    logits = torch.randn(1, 5, 12)
    label_tensor = torch.tensor([labels])

    def loss(values: torch.Tensor) -> torch.Tensor:
        return train_vlm.task_losses(values, label_tensor, ["vqa"])["vqa"]

    base = loss(logits)
    # Position t predicts token t+1: positions 0 and 1 predict prompt tokens and must not count,
    # positions 2 and 3 predict the answer, position 4 predicts nothing.
    for position, counts in ((0, False), (1, False), (2, True), (3, True), (4, False)):
        changed = logits.clone()
        changed[0, position] += torch.randn(12) * 5
        assert bool(loss(changed) != base) is counts, position
    expected = torch.nn.functional.cross_entropy(logits[0, 2:4], torch.tensor([8, 9]))
    assert torch.allclose(base, expected)


def test_task_losses_average_each_tasks_answer_tokens() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 12)
    labels = torch.tensor([[-100, -100, 3, 4, -100], [-100, 7, -100, -100, -100], [-100, 5, 6, 1, 2]])
    losses = train_vlm.task_losses(logits, labels, ["vqa", "edit", "vqa"])
    assert float(losses["edit"]) == pytest.approx(float(torch.nn.functional.cross_entropy(logits[1, 0:1], labels[1, 1:2])))
    # vqa: the mean over its six answer tokens, not the mean of its two rows' means.
    tokens = torch.cat([logits[0, 1:3], logits[2, 0:4]]), torch.cat([labels[0, 2:4], labels[2, 1:5]])
    assert float(losses["vqa"]) == pytest.approx(float(torch.nn.functional.cross_entropy(*tokens)), rel=1e-5)


def test_the_token_probe_reads_the_text_of_condition_rows() -> None:
    image = 9
    batch = {"input_ids": torch.tensor([[1, image, image, 2, 0], [3, 4, image, 5, 6], [7, 8, 0, 0, 0]]),
             "attention_mask": torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])}
    read = train_vlm.condition_text(batch, ["edit", "vqa", "prompt"], image)
    assert read.tolist() == [[True, False, False, True, False], [False] * 5, [True, True, False, False, False]]
    probe = train_vlm.TokenProbe(4, 10)
    hidden = torch.randn(3, 5, 4)
    logits = probe.head(hidden[read])
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor([1, 2, 7, 8]))
    assert torch.allclose(probe.loss(hidden, batch["input_ids"], read), expected)


def test_tasks_weigh_by_their_share_not_their_token_count() -> None:
    losses = {"vqa": torch.tensor(1.0), "describe": torch.tensor(0.0)}
    share = train_vlm.TASK_WEIGHTS["vqa"] / (train_vlm.TASK_WEIGHTS["vqa"] + train_vlm.TASK_WEIGHTS["describe"])
    assert float(train_vlm.weighted_loss(losses)) == pytest.approx(share)


@pytest.fixture(scope="module")
def vlm(smoke: tuple[Path, dict[str, Any]]) -> Any:
    from transformers import Qwen2_5_VLForConditionalGeneration

    return Qwen2_5_VLForConditionalGeneration.from_pretrained(smoke[0] / "text_encoder").eval()


@pytest.mark.parametrize("task", sorted(train_vlm.TASK_WEIGHTS))
def test_prompt_and_target_tokenise_as_the_whole_text(smoke: tuple[Path, dict[str, Any]], vlm: Any,
                                                       task: str) -> None:
    processor = load_processor(smoke[0])
    example = train_vlm.make_example(processor, task, 3)
    batch = train_vlm.collate(processor, [example], vlm)
    end = train_vlm.END_OF_TURN
    later = "".join(text + answer + end for text, answer in example.follow_ups)
    whole = processor(text=[example.prompt + example.target + end + later],
                      images=list(example.images) or None, return_tensors="pt")
    assert batch["input_ids"].tolist() == whole["input_ids"].tolist()
    answer = batch["input_ids"][0][batch["labels"][0] != train_vlm.IGNORE]
    answers = "".join(answer + end for _, answer in example.follow_ups)
    assert processor.tokenizer.decode(answer) == example.target + end + answers


def test_a_vqa_example_is_a_conversation_about_one_picture(smoke: tuple[Path, dict[str, Any]]) -> None:
    from diptych.types import ChatMessage, ImagePart, TextPart
    from diptych.bench.shapes.data import vqa_example
    from diptych.models.qwen_image.chat import render_chat

    processor = load_processor(smoke[0])
    example = train_vlm.make_example(processor, "vqa", 5)
    vqa = vqa_example(Split.TRAIN, 5)
    pairs = train_vlm.conversation_pairs(vqa.scene, vqa.pair, 5)
    assert len(example.follow_ups) == len(pairs) - 1 >= 2
    assert len({pair.kind for pair in pairs}) == len(pairs)  # a different kind of question each turn
    # Every answer is the scene's, and the text is what the chat template makes of the whole conversation.
    messages = [ChatMessage("user", (ImagePart(vqa.image), TextPart(pairs[0].question)))]
    for previous, pair in zip(pairs, pairs[1:]):
        messages += [ChatMessage("assistant", (TextPart(previous.answer),)), ChatMessage("user", (TextPart(pair.question),))]
    rendered = render_chat(processor, tuple(messages)).text + pairs[-1].answer + train_vlm.END_OF_TURN
    later = "".join(text + answer + train_vlm.END_OF_TURN for text, answer in example.follow_ups)
    assert example.prompt + example.target + train_vlm.END_OF_TURN + later == rendered


def test_grounding_reads_the_state_before_each_answer(smoke: tuple[Path, dict[str, Any]], vlm: Any) -> None:
    from training.micro.grounding_probe import GroundingProbe, cell_targets

    processor = load_processor(smoke[0])
    chat, caption = train_vlm.make_example(processor, "vqa", 5), train_vlm.make_example(processor, "describe", 6)
    batch = train_vlm.collate(processor, [chat, caption], vlm)
    labels = batch["labels"]
    starts = train_vlm.answer_starts(labels)
    tokenizer = processor.tokenizer
    answers = [chat.target] + [answer for _, answer in chat.follow_ups]
    assert len(starts[0]) == len(answers) == len(chat.grounding) and len(starts[1]) == 1
    for position, answer in zip(starts[0], answers):  # the next label is the answer's first token
        assert labels[0, position] == train_vlm.IGNORE
        assert labels[0, position + 1] == tokenizer(answer, add_special_tokens=False)["input_ids"][0]
    # Only the VQA row's answers are read: the loss is the probe's on exactly those states.
    probe, hidden = GroundingProbe(8), torch.randn(*labels.shape, 8)
    loss = train_vlm.grounding_loss(probe, hidden, labels, [chat, caption])
    expected = F.binary_cross_entropy_with_logits(probe.head(hidden[0, starts[0]]), cell_targets(chat.grounding))
    assert loss is not None and torch.allclose(loss, expected)
    assert train_vlm.grounding_loss(probe, hidden, labels, [caption, caption]) is None


@torch.no_grad()
def test_positions_are_those_of_serving(smoke: tuple[Path, dict[str, Any]], vlm: Any,
                                        runner: QwenImageFlowRunner) -> None:
    processor = load_processor(smoke[0])
    chat, edit = train_vlm.make_example(processor, "vqa", 1), train_vlm.make_example(processor, "edit", 2)
    batch = train_vlm.collate(processor, [chat, edit], vlm)
    batch.pop("labels")
    logits = vlm(**batch).logits
    # Chat: transformers with the processor's token types, i.e. 3-D image positions, as vLLM computes them.
    whole = processor(text=[chat.prompt + chat.target + train_vlm.END_OF_TURN], images=list(chat.images),
                      return_tensors="pt")
    reference = vlm(**whole).logits[0]
    assert torch.allclose(logits[0, : reference.shape[0]], reference, atol=1e-4)
    without_types = {k: v for k, v in whole.items() if k != "mm_token_type_ids"}
    assert not torch.allclose(vlm(**without_types).logits[0], reference, atol=1e-4)  # the positions matter
    # Edit template: the hidden states the server's prompt encoder conditions the transformer on.
    hidden = vlm(**batch, output_hidden_states=True).hidden_states[-1][1]
    instruction = train_dit.edit_example(Split.TRAIN, 2).triplet.instruction  # make_example's edit 2
    served = runner.prompt_encoder.encode_with_image(instruction, edit.images[0])
    drop = runner.prompt_encoder.edit_prefix_len
    assert torch.allclose(hidden[drop: drop + served.num_tokens], served.embeds[0], atol=1e-4)


def test_vqa_prompt_is_the_servers_chat(smoke: tuple[Path, dict[str, Any]]) -> None:
    processor = load_processor(smoke[0])
    example = train_vlm.make_example(processor, "vqa", 0)
    assert example.prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert "<|vision_start|><|image_pad|><|vision_end|>" in example.prompt and len(example.images) == 1


class _Keep(random.Random):
    """An rng under which no prompt is dropped."""

    def random(self) -> float:
        return 0.99


def test_conditions_are_the_servers(smoke: tuple[Path, dict[str, Any]], runner: QwenImageFlowRunner) -> None:
    frozen = train_dit.load_frozen(smoke[0])
    clean, text, mask, _ = train_dit.stack(train_dit.t2i_examples(frozen, 0, 3, _Keep()))
    captions = [train_dit.drawing_example(Split.TRAIN, j).caption.text for j in range(3)]
    served = runner.conditioner.prompts([PromptSpec(caption) for caption in captions])
    for row, embedding in enumerate(served):
        length = embedding.num_tokens
        assert torch.equal(text[row, :length], embedding.embeds[0])
        assert mask is None or (mask[row, :length].all() and not mask[row, length:].any())
    assert clean.shape[1] == (64 // 16) ** 2

    _, text, mask, source = train_dit.stack(train_dit.edit_examples(frozen, 0, 2, _Keep()))
    assert source is not None
    for row in range(2):
        example = train_dit.edit_example(Split.TRAIN, row)
        image = prepare_source(example.source_image, EDIT_SOURCE_AREA)
        key = image_digest(image)
        embedding = runner.conditioner.prompts([PromptSpec(example.triplet.instruction, image, key)])[0]
        assert torch.equal(text[row, : embedding.num_tokens], embedding.embeds[0])
        assert torch.allclose(source[row], runner.conditioner.source_latents(image, key)[0], atol=1e-4)


def test_the_pool_encodes_each_example_once_and_batches_half_of_each_kind(smoke: tuple[Path, dict[str, Any]]) -> None:
    frozen = train_dit.load_frozen(smoke[0])
    pool = train_dit.build_pool(frozen, seed=0, size=6, edit_share=0.5, chunk=2, show_progress=False)
    assert len(pool.t2i) == len(pool.edit) == 3
    # Example 2 sits in the second chunk; alone it encodes (and drops its prompt or not) the same.
    rng = random.Random("diptych-micro/dit-pool/0/2")
    alone_t2i = train_dit.t2i_examples(frozen, 2, 1, rng)[0]
    alone_edit = train_dit.edit_examples(frozen, 2, 1, rng)[0]
    assert torch.equal(pool.t2i[2].text, alone_t2i.text) and torch.allclose(pool.t2i[2].clean, alone_t2i.clean, atol=1e-5)
    assert torch.equal(pool.edit[2].text, alone_edit.text) and alone_edit.source is not None
    assert torch.allclose(pool.edit[2].source, alone_edit.source, atol=1e-5)  # type: ignore[arg-type]
    t2i, edits = pool.batch(random.Random(0), 4, edit_share=0.5)
    assert len(t2i) == len(edits) == 2
    assert len({id(example) for example in t2i}) == 2  # no example twice in a batch
    assert all(example.source is None for example in t2i) and all(example.source is not None for example in edits)


def test_an_edit_heavy_pool_holds_and_batches_edits_in_their_share(smoke: tuple[Path, dict[str, Any]]) -> None:
    frozen = train_dit.load_frozen(smoke[0])
    pool = train_dit.build_pool(frozen, seed=0, size=8, edit_share=0.75, chunk=4, show_progress=False)
    assert (len(pool.t2i), len(pool.edit)) == (2, 6)
    # The chunk past the last drawing still encodes edits 4 and 5, with that chunk's own dropout.
    alone_edit = train_dit.edit_examples(frozen, 4, 1, random.Random("diptych-micro/dit-pool/0/4"))[0]
    assert torch.equal(pool.edit[4].text, alone_edit.text)
    t2i, edits = pool.batch(random.Random(0), 4, edit_share=0.75)
    assert (len(t2i), len(edits)) == (1, 3)
    assert len({id(example) for example in edits}) == 3
    assert train_dit.split(64, 0.625) == (24, 40)
    assert train_dit.split(2, 0.9) == (1, 1)  # at least one of each kind


def test_prompt_dropout_uses_the_unconditional_prompt() -> None:
    prompts = train_dit.dropped(["a red circle"] * 2000, random.Random(0))
    assert set(prompts) == {"a red circle", " "}
    assert 0.08 < prompts.count(" ") / len(prompts) < 0.12


def test_noise_levels_are_shifted_as_the_scheduler_shifts() -> None:
    shift = ShiftConfig(use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9, base_image_seq_len=256,
                        max_image_seq_len=8192)
    sigmas, _ = flow_schedule(10, 16, shift)
    t = torch.from_numpy(np.linspace(1.0, 0.1, 10).astype(np.float32))
    assert torch.allclose(train_dit.shifted_sigmas(t, 16, shift), sigmas[:-1], atol=1e-6)


def test_flow_loss_targets_velocity_on_target_tokens_only() -> None:
    class Zero(torch.nn.Module):
        def forward(self, hidden_states: torch.Tensor, **_: Any) -> tuple[torch.Tensor]:
            return (torch.zeros_like(hidden_states),)

    clean, source = torch.randn(2, 16, 8), torch.randn(2, 16, 8) * 100
    frozen = train_dit.Frozen(vae=None, encoder=None, shift=ShiftConfig())  # type: ignore[arg-type]
    loss = train_dit.flow_loss(Zero(), frozen, clean, torch.zeros(2, 3, 4), None, torch.Generator().manual_seed(1),
                               source)
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(1))
    # A zero prediction costs the squared velocity ε - x0 of the 16 target tokens; source tokens do not count.
    assert torch.allclose(loss, (noise - clean).pow(2).mean())


def test_zero_init_makes_every_block_the_identity_and_the_output_zero() -> None:
    from diffusers import QwenImageTransformer2DModel

    transformer = QwenImageTransformer2DModel(**SMOKE.transformer, in_channels=16, out_channels=4,
                                              joint_attention_dim=8)
    train_dit.zero_init_modulation(transformer)
    seen: list[tuple[dict[str, Any], tuple[torch.Tensor, torch.Tensor]]] = []
    for block in transformer.transformer_blocks:
        block.register_forward_hook(lambda _m, _args, kwargs, out: seen.append((kwargs, out)), with_kwargs=True)
    output = transformer(hidden_states=torch.randn(2, 16, 16), timestep=torch.tensor([0.5, 0.9]),
                         encoder_hidden_states=torch.randn(2, 3, 8), img_shapes=[[(1, 4, 4)]] * 2, return_dict=False)[0]
    assert len(seen) == len(transformer.transformer_blocks)
    for kwargs, (text_out, image_out) in seen:  # each block hands its streams on unchanged
        assert torch.equal(image_out, kwargs["hidden_states"]) and torch.equal(text_out, kwargs["encoder_hidden_states"])
    assert torch.count_nonzero(output) == 0


def test_learning_rate_warms_up_and_decays_to_a_tenth() -> None:
    budget = Budget(steps=1000, batch_size=1, lr=1.0, warmup_steps=100)
    assert learning_rate(0, budget) == pytest.approx(0.01)
    assert learning_rate(99, budget) == pytest.approx(1.0)
    assert learning_rate(999, budget) == pytest.approx(0.1, abs=1e-3)
    assert all(learning_rate(s, budget) >= learning_rate(s + 1, budget) for s in range(100, 999))


def test_stage_overrides_parse() -> None:
    assert parse_overrides("vae=300,dit=5", int, "--steps") == {"vae": 300, "dit": 5}
    assert parse_overrides("7", int, "--steps") == dict.fromkeys(STAGES, 7)
    assert parse_overrides(None, int, "--steps") == {}


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown stages"):
        TrainConfig(out=tmp_path, stages=("vae", "gan"))
    with pytest.raises(SystemExit, match="unknown stage"):
        main(["--out", str(tmp_path), "--steps", "vae=3,gan=4"])
    with pytest.raises(SystemExit, match="optimizer 'sgd'"):
        main(["--out", str(tmp_path), "--optimizer", "vlm=sgd"])


def test_muon_takes_the_hidden_layers_matrices_and_adamw_the_rest() -> None:
    torch.manual_seed(0)
    body = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 8))
    model = torch.nn.ModuleDict({"embed": torch.nn.Embedding(5, 8), "body": body, "head": torch.nn.Linear(8, 5)})
    optimizer = make_optimizer(model, Budget(steps=1, batch_size=1, lr=1e-2, optimizer="muon"), hidden=body)
    assert isinstance(optimizer, OptimizerSet)
    muon, adamw = optimizer.optimizers
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    in_muon = {id(p) for group in muon.param_groups for p in group["params"]}
    assert in_muon == {id(body[0].weight), id(body[2].weight)}
    in_adamw = {id(p) for group in adamw.param_groups for p in group["params"]}
    assert in_adamw == {id(p) for p in model.parameters()} - in_muon  # embedding, head, biases, norm
    for group in optimizer.param_groups:  # the schedule reaches both optimisers
        group["lr"] = 5e-3
    assert muon.param_groups[0]["lr"] == adamw.param_groups[0]["lr"] == 5e-3
    before = [p.detach().clone() for p in model.parameters()]
    model["head"](body(model["embed"](torch.arange(5)))).logsumexp(-1).sum().backward()
    optimizer.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    optimizer.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    assert isinstance(make_optimizer(model, Budget(steps=1, batch_size=1, lr=1e-2)), torch.optim.AdamW)


def test_a_rerun_with_the_same_seed_reproduces_the_weights(tmp_path: Path) -> None:
    budgets = tuple((name, Budget(steps=2, batch_size=2, lr=1e-3, warmup_steps=1, log_every=1))
                    for name in STAGES)
    weights = []
    for run, seed in (("a", 0), ("b", 0), ("c", 1)):
        config = TrainConfig(out=tmp_path / run, seed=seed, stages=("vae",), architecture="smoke", budgets=budgets,
                             threads=1, eval_items=0, show_progress=False)
        train(config)
        weights.append((tmp_path / run / "vae/diffusion_pytorch_model.safetensors").read_bytes())
    assert weights[0] == weights[1]
    assert weights[0] != weights[2]


def test_the_vlm_stage_trains_with_muon(tmp_path: Path) -> None:
    budgets = tuple((name, Budget(steps=2, batch_size=2, lr=1e-3, warmup_steps=1, log_every=1, optimizer="muon"))
                    for name in STAGES)
    config = TrainConfig(out=tmp_path, stages=("vlm",), architecture="smoke", budgets=budgets, threads=1,
                         eval_items=0, show_progress=False)
    before = (tmp_path / "text_encoder").exists()
    summary = train(config)
    records = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert records[0]["budgets"]["vlm"]["optimizer"] == "muon"
    assert not before and summary["vlm"]["steps"] == 2 and np.isfinite(summary["vlm"]["loss"])
