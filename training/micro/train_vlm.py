"""Stage 2: the Qwen2.5-VL, trained on what it is asked at serving time.

Every example is a prompt exactly as the server builds it, followed by a target whose
tokens (and the closing ``<|im_end|>``) carry the loss; prompt and padding tokens do not:

* ``vqa`` — a chat as vLLM receives it (``qwen_image.chat.render_chat``): picture and
  question in, the one- or two-word answer out;
* ``describe`` — a chat asking for a description; the answer is the scene's full caption
  (every object with size, colour and cell), so the image tokens must carry the scene;
* ``edit`` — Qwen-Image-Edit's prompt template with the source picture and the
  instruction (what the transformer is conditioned on); the answer is the full caption of
  the *target* scene. The conditioning ends at the assistant header, whose hidden state
  is then trained to know what the edited picture holds;
* ``prompt`` — Qwen-Image's text-to-image template, loss on the prompt text itself, so
  the hidden states the transformer reads are those of a model that has learnt the
  world's language.

Alongside, ``vision_probe.VisionProbe`` reads the vision tokens of every picture whose
scene is known and trains the tower directly (what fills each token's cell, where it is),
``token_probe.TokenProbe`` keeps each text token of the ``edit`` and ``prompt`` rows
readable from its last hidden state, which is what the transformer attends to, and
``grounding_probe.GroundingProbe`` makes the state each VQA answer is generated from
know which cells the question is about; the probes are discarded when the model is saved.

The language-model loss is the mean over each task's answer tokens, weighted by the
task's share of the stream (``weighted_loss``).

Prompts are tokenised by the processor (images expanded as the server expands them) and
targets separately, then concatenated: the same ids as tokenising the whole text (tested),
and what generation produces token by token.
"""

from __future__ import annotations

import io
import itertools
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from diptych.bench.shapes.bench import answer_matches, vqa_items
from diptych.types import ChatMessage, ImagePart, TextPart
from training.micro.checkpoint import (
    EDIT_SOURCE_AREA,
    Architecture,
    build_vlm,
    load_processor,
    save_vlm,
)
from diptych.bench.shapes.data import (
    caption_example,
    drawing_example,
    edit_example,
    vqa_example,
)
from training.micro.grounding_probe import GroundingProbe
from diptych.bench.shapes.language import caption_of_kind
from training.micro.token_probe import TokenProbe
from training.micro.tokenizer import DESCRIBE_QUESTIONS
from training.micro.training import (
    Budget,
    LossLog,
    StageResult,
    make_optimizer,
    run_stage,
)
from training.micro.vision_probe import VisionProbe
from diptych.bench.shapes.vqa import QUESTION_KINDS, VQAPair, sample_question
from diptych.bench.shapes.world import Scene, Split
from diptych.models.qwen_image.chat import render_chat
from diptych.models.qwen_image.prompt import (
    EDIT_TEMPLATE,
    GENERATE_TEMPLATE,
    template_prefix,
)
from diptych.models.qwen_image.source import prepare_source

logger = logging.getLogger(__name__)

# Share of each task in the stream: answering is what is judged; the others shape the
# hidden states the transformer reads. Describing is also what teaches answering fastest:
# a caption names every object, so each picture gives a dozen supervised tokens that all
# need the image (a VQA answer gives one or two). In probe runs of batch 16, VQA plus a
# quarter captions reached 57% held-out VQA by step 2,500 (colours 60%); VQA alone, four
# questions a picture, stayed at 41–47% through step 2,000 (colours 7–23%).
TASK_WEIGHTS: dict[str, float] = {"vqa": 0.4, "describe": 0.3, "edit": 0.15, "prompt": 0.15}
PROBE_WEIGHT = 1.0  # of the probes' losses against the language-model loss
# Tasks whose prompts are the transformer's conditions (the token probe reads their text).
CONDITION_TASKS = frozenset({"edit", "prompt"})
# Questions per VQA picture: one chat of several turns multiplies the answers a forward pass
# trains on (answers are a token or two, the prompt around them ~90) for ~30% more tokens.
VQA_TURNS = 4
IGNORE = -100  # label of tokens without loss (F.cross_entropy's ignore_index)
SEED_STRIDE = 10_000_000
END_OF_TURN = "<|im_end|>"


@dataclass(frozen=True)
class LMExample:
    task: str
    prompt: str  # the full text before the target, as the server renders it
    images: tuple[Image.Image, ...]
    target: str  # what the model must produce (its end-of-turn token is appended)
    # Rotary positions of image tokens: 3-D (row, column) as vLLM computes them for a chat;
    # sequential, as the server's prompt encoder (like diffusers) computes them for the edit
    # template: transformers gives 3-D ones only when handed the processor's mm_token_type_ids.
    vision_positions: bool = False
    scenes: tuple[Scene, ...] = ()  # what each picture shows, for the vision probe
    # Later turns of a conversation: (the text from the previous <|im_end|> to the next
    # answer, that answer). The first turn is exactly the server's one-question chat.
    follow_ups: tuple[tuple[str, str], ...] = ()
    # Per answered turn of a VQA chat, the cells its question is about (the grounding probe's targets).
    grounding: tuple[frozenset[int], ...] = ()


@dataclass(frozen=True)
class VLMReport:
    result: StageResult
    vqa_accuracy: float | None
    vqa_by_kind: dict[str, float]

    def summary(self) -> dict[str, object]:
        return {"steps": self.result.steps, "seconds": round(self.result.seconds, 1), **self.result.final_losses,
                "vqa_accuracy": self.vqa_accuracy, "vqa_by_kind": self.vqa_by_kind}


def full_caption(scene: Scene) -> str:
    caption = caption_of_kind(scene, "full", random.Random(0))  # "full" draws nothing from the rng
    if caption is None:  # cannot happen: every scene has a full caption
        raise RuntimeError(f"no full caption for {scene}")
    return caption.text


def chat_prompt(processor: Any, image: Image.Image, question: str) -> str:
    message = ChatMessage(role="user", content=(ImagePart(image), TextPart(question)))
    return render_chat(processor, (message,)).text


def follow_up_turns(processor: Any, image: Image.Image, pairs: Sequence[VQAPair]) -> tuple[tuple[str, str], ...]:
    """Turns 2… of a chat asking ``pairs`` in order, as the chat template renders them."""
    messages: tuple[ChatMessage, ...] = (ChatMessage("user", (ImagePart(image), TextPart(pairs[0].question))),)
    text, turns = render_chat(processor, messages).text, []
    for previous, pair in itertools.pairwise(pairs):
        messages += (ChatMessage("assistant", (TextPart(previous.answer),)), ChatMessage("user", (TextPart(pair.question),)))
        longer = render_chat(processor, messages).text
        answered = text + previous.answer + END_OF_TURN
        if not longer.startswith(answered):
            raise ValueError("the chat template does not extend a conversation by appending to it")
        turns.append((longer[len(answered):], pair.answer))
        text = longer
    return tuple(turns)


def conversation_pairs(scene: Scene, first: VQAPair, index: int) -> list[VQAPair]:
    """``first``, then questions of the other kinds about the same scene, up to ``VQA_TURNS``."""
    rng = random.Random(f"diptych-micro/vlm-turns/{index}")
    pairs, kinds = [first], [kind for kind in QUESTION_KINDS if kind != first.kind]
    rng.shuffle(kinds)
    for kind in kinds[: VQA_TURNS - 1]:
        try:
            pairs.append(sample_question(scene, rng, kind))
        except ValueError:  # no position question names an object of a scene of identical twins
            continue
    return pairs


def make_example(processor: Any, task: str, index: int) -> LMExample:
    if task == "vqa":
        vqa = vqa_example(Split.TRAIN, index)
        pairs = conversation_pairs(vqa.scene, vqa.pair, index)
        return LMExample(task, chat_prompt(processor, vqa.image, vqa.pair.question), (vqa.image,), vqa.pair.answer,
                         vision_positions=True, scenes=(vqa.scene,),
                         follow_ups=follow_up_turns(processor, vqa.image, pairs),
                         grounding=tuple(pair.cells for pair in pairs))
    if task == "describe":
        described = caption_example(Split.TRAIN, index, kind="full")
        question = DESCRIBE_QUESTIONS[index % len(DESCRIBE_QUESTIONS)]
        return LMExample(task, chat_prompt(processor, described.image, question), (described.image,),
                         described.caption.text, vision_positions=True, scenes=(described.scene,))
    if task == "edit":
        edit = edit_example(Split.TRAIN, index)
        source = prepare_source(edit.source_image, EDIT_SOURCE_AREA)
        prompt = EDIT_TEMPLATE.format(edit.triplet.instruction)
        return LMExample(task, prompt, (source,), full_caption(edit.triplet.target), scenes=(edit.triplet.source,))
    if task == "prompt":
        caption = drawing_example(Split.TRAIN, index).caption  # the prompts the transformer learns to draw
        return LMExample(task, template_prefix(GENERATE_TEMPLATE), (), caption.text)
    raise ValueError(f"unknown task {task!r}; tasks are {sorted(TASK_WEIGHTS)}")


def batch_examples(processor: Any, seed: int, step: int, batch_size: int) -> list[LMExample]:
    """Batch ``step``: tasks drawn by weight, example indices unique to (seed, step, position)."""
    rng = random.Random(f"diptych-micro/vlm/{seed}/{step}")
    tasks = rng.choices(list(TASK_WEIGHTS), weights=list(TASK_WEIGHTS.values()), k=batch_size)
    base = seed * SEED_STRIDE + step * batch_size
    return [make_example(processor, task, base + j) for j, task in enumerate(tasks)]


def target_labels(prompt_ids: Sequence[int], target_ids: Sequence[int]) -> tuple[list[int], list[int]]:
    """Input ids of prompt + target and their labels: the target's own ids, ``IGNORE`` over the prompt."""
    return [*prompt_ids, *target_ids], [IGNORE] * len(prompt_ids) + list(target_ids)


def collate(processor: Any, examples: Sequence[LMExample], model: Any) -> dict[str, torch.Tensor]:
    """Right-padded ids, attention mask, labels, rotary positions, and the images' patches in example order."""
    tokenizer = processor.tokenizer
    rows, labels, positions, pixel_values, grids = [], [], [], [], []
    for example in examples:
        encoded = processor(text=[example.prompt], images=list(example.images) or None, return_tensors="pt")
        target = tokenizer(example.target + END_OF_TURN, add_special_tokens=False)["input_ids"]
        ids, row_labels = target_labels(encoded["input_ids"][0].tolist(), target)
        for text, answer in example.follow_ups:
            turn_ids, turn_labels = target_labels(tokenizer(text, add_special_tokens=False)["input_ids"],
                                                  tokenizer(answer + END_OF_TURN, add_special_tokens=False)["input_ids"])
            ids, row_labels = ids + turn_ids, row_labels + turn_labels
        rows.append(ids)
        labels.append(row_labels)
        if example.vision_positions and example.images:
            text_tokens = len(ids) - encoded["input_ids"].shape[1]
            types = torch.cat([encoded["mm_token_type_ids"][0], torch.zeros(text_tokens, dtype=torch.long)])
            row_positions, _ = model.model.get_rope_index(torch.tensor([ids]), image_grid_thw=encoded["image_grid_thw"],
                                                          mm_token_type_ids=types[None])
            positions.append(row_positions[:, 0])
        else:
            positions.append(torch.arange(len(ids)).expand(3, -1))
        if example.images:
            pixel_values.append(encoded["pixel_values"])
            grids.append(encoded["image_grid_thw"])
    longest = max(len(ids) for ids in rows)
    pad = tokenizer.pad_token_id
    position_ids = torch.zeros(3, len(rows), longest, dtype=torch.long)
    for row, row_positions in enumerate(positions):
        position_ids[:, row, : row_positions.shape[1]] = row_positions
    batch = {
        "input_ids": torch.tensor([ids + [pad] * (longest - len(ids)) for ids in rows]),
        "attention_mask": torch.tensor([[1] * len(ids) + [0] * (longest - len(ids)) for ids in rows]),
        "position_ids": position_ids,
        "labels": torch.tensor([row + [IGNORE] * (longest - len(row)) for row in labels]),
    }
    if pixel_values:
        batch["pixel_values"] = torch.cat(pixel_values)
        batch["image_grid_thw"] = torch.cat(grids)
    return batch


def answer_starts(labels: torch.Tensor) -> list[list[int]]:
    """Per row, the positions whose next-token prediction is the first token of an answer."""
    answered = labels != IGNORE
    starts = answered[:, 1:] & ~answered[:, :-1]
    return [row.nonzero().flatten().tolist() for row in starts]


def grounding_loss(probe: GroundingProbe, hidden: torch.Tensor, labels: torch.Tensor,
                   examples: Sequence[LMExample]) -> torch.Tensor | None:
    """The grounding probe's loss over every answered turn that has cells to find; None if none has."""
    rows, positions, cells = [], [], []
    for row, (starts, example) in enumerate(zip(answer_starts(labels), examples, strict=True)):
        if not example.grounding:
            continue
        if len(starts) != len(example.grounding):
            raise ValueError(f"{len(starts)} answers in row {row} for {len(example.grounding)} grounded turns")
        rows += [row] * len(starts)
        positions += starts
        cells += example.grounding
    return probe.loss(hidden, rows, positions, cells) if rows else None


def task_losses(logits: torch.Tensor, labels: torch.Tensor, tasks: Sequence[str]) -> dict[str, torch.Tensor]:
    """Mean next-token cross-entropy over the answer tokens of each task in the batch.

    Position t predicts label t+1; ``IGNORE`` labels add nothing.
    """
    shifted = labels[:, 1:]
    per_token = F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), shifted, ignore_index=IGNORE, reduction="none")
    answered = shifted != IGNORE
    losses = {}
    for task in sorted(set(tasks)):
        mask = answered & torch.tensor([name == task for name in tasks])[:, None]
        losses[task] = per_token[mask].sum() / mask.sum().clamp(min=1)
    return losses


def weighted_loss(losses: dict[str, torch.Tensor]) -> torch.Tensor:
    """The tasks of a batch weighted by ``TASK_WEIGHTS``.

    A plain mean over answer tokens would hand the gradient to the tasks with long targets
    (a caption is ~20 tokens, a VQA answer one or two plus its ``<|im_end|>``): counted over
    30 batches of 16, VQA had 23% of the tokens with a loss and captions 46%.
    """
    weights = {task: TASK_WEIGHTS[task] for task in losses}
    return sum((weights[task] * loss for task, loss in losses.items()), torch.zeros(())) / sum(weights.values())


def condition_text(batch: dict[str, torch.Tensor], tasks: Sequence[str], image_token_id: int) -> torch.Tensor:
    """Text positions of the rows whose prompt conditions the transformer (``[batch, seq]`` bool)."""
    rows = torch.tensor([task in CONDITION_TASKS for task in tasks])[:, None]
    return rows & batch["attention_mask"].bool() & (batch["input_ids"] != image_token_id)


def train_vlm(out: Path, arch: Architecture, budget: Budget, seed: int, log: LossLog, *, eval_items: int = 40,
              show_progress: bool = True) -> VLMReport:
    processor = load_processor(out)
    torch.manual_seed(seed)
    model = build_vlm(arch, processor.tokenizer)
    model.train()
    probe = VisionProbe(arch.text["hidden_size"])
    token_probe = TokenProbe(arch.text["hidden_size"], model.config.text_config.vocab_size)
    grounding_probe = GroundingProbe(arch.text["hidden_size"])
    # Muon, when chosen, for the language model's and vision tower's layers, not its head or the probes.
    optimizer = make_optimizer(torch.nn.ModuleList([model, probe, token_probe, grounding_probe]), budget,
                               hidden=model.model)
    vision_tokens: list[torch.Tensor] = []
    # The merged vision tokens of the batch's pictures, as the language model receives them.
    hook = model.model.visual.register_forward_hook(
        lambda _module, _args, output: vision_tokens.append(output.pooler_output))

    def step_fn(step: int) -> dict[str, float]:
        examples = batch_examples(processor, seed, step, budget.batch_size)
        batch = collate(processor, examples, model)
        labels = batch.pop("labels")
        tasks = [example.task for example in examples]
        vision_tokens.clear()
        outputs = model(**batch, output_hidden_states=True)
        logits = outputs.logits
        losses = task_losses(logits, labels, tasks)
        lm = weighted_loss(losses)
        scenes = [scene for example in examples for scene in example.scenes]
        probe_losses = probe.loss(vision_tokens[0], scenes) if scenes else {}
        read = condition_text(batch, tasks, model.config.image_token_id)
        if read.any():
            probe_losses["token"] = token_probe.loss(outputs.hidden_states[-1], batch["input_ids"], read)
        grounding = grounding_loss(grounding_probe, outputs.hidden_states[-1], labels, examples)
        if grounding is not None:
            probe_losses["grounding"] = grounding
        loss = lm + PROBE_WEIGHT * sum(probe_losses.values(), torch.zeros(()))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if eval_items and budget.eval_every and (step + 1) % budget.eval_every == 0 and step + 1 < budget.steps:
            accuracy, by_kind = evaluate_vqa(model, processor, eval_items)
            log.write({"stage": "vlm", "event": "eval", "step": step + 1, "vqa_accuracy": accuracy, "by_kind": by_kind})
            logger.info("vlm step %d: held-out VQA %.0f%% %s", step + 1, 100 * accuracy, by_kind)
            model.train()
        return {"loss": lm.item(), **{f"probe_{name}": value.item() for name, value in probe_losses.items()},
                **{f"loss_{task}": value.item() for task, value in losses.items()}}

    result = run_stage("vlm", budget, optimizer, step_fn, log, show_progress=show_progress)
    hook.remove()
    model.eval()
    save_vlm(model, processor.tokenizer, out)
    accuracy, by_kind = evaluate_vqa(model, processor, eval_items) if eval_items else (None, {})
    log.write({"stage": "vlm", "event": "eval", "step": result.steps, "vqa_accuracy": accuracy, "by_kind": by_kind})
    logger.info("vlm: %d steps in %.0f s; held-out VQA %s %s", result.steps, result.seconds, accuracy, by_kind)
    return VLMReport(result, accuracy, by_kind)


@torch.no_grad()
def answer(model: Any, processor: Any, image: Image.Image, question: str, max_new_tokens: int = 8) -> str:
    """Greedy answer to a chat question, as the server asks it (temperature 0)."""
    inputs = processor(text=[chat_prompt(processor, image, question)], images=[image], return_tensors="pt")
    generated = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                               pad_token_id=processor.tokenizer.pad_token_id)
    return str(processor.tokenizer.decode(generated[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))


def evaluate_vqa(model: Any, processor: Any, count: int) -> tuple[float, dict[str, float]]:
    """ShapesBench's VQA items (held-out scenes) and judge, answered by greedy decoding."""
    model.eval()
    by_kind: dict[str, list[bool]] = {}
    for item in vqa_items(count, seed=0):
        image = Image.open(io.BytesIO(item.image_png)).convert("RGB")
        by_kind.setdefault(item.kind, []).append(answer_matches(answer(model, processor, image, item.question),
                                                                item.answer))
    total = [ok for values in by_kind.values() for ok in values]
    return sum(total) / len(total), {kind: round(sum(v) / len(v), 3) for kind, v in by_kind.items()}
