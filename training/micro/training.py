"""What every training stage of the micro model shares: its budget, the loop, the loss log.

A stage is a step function (one optimiser step on batch ``i``, returning its losses) run
for a fixed number of steps. Steps, not minutes, are the contract: data of step ``i`` is a
pure function of (seed, ``i``) and the learning-rate schedule is laid over the step count,
so a rerun with the same seed and steps reproduces the run. Minutes are only a safety cap
(a stage that overruns stops, saves and says so in the log).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

logger = logging.getLogger(__name__)

OPTIMIZERS = ("adamw", "muon")


@dataclass(frozen=True)
class Budget:
    steps: int
    batch_size: int
    lr: float
    max_minutes: float = 60.0
    warmup_steps: int = 50
    log_every: int = 10  # steps averaged into one log line
    eval_every: int = 0  # steps between held-out evaluations inside the stage (0: only at its end)
    weight_decay: float = 0.01
    optimizer: str = "adamw"  # or "muon": Muon for the hidden matrices, AdamW for the rest

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer {self.optimizer!r} is not one of {OPTIMIZERS}")


def learning_rate(step: int, budget: Budget) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak at the last step."""
    warmup = min(budget.warmup_steps, max(budget.steps // 10, 1))
    if step < warmup:
        return budget.lr * (step + 1) / warmup
    progress = (step - warmup) / max(budget.steps - warmup, 1)
    return budget.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


class LossLog:
    """JSON lines next to the checkpoint: one object per logged window and per evaluation."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")


@dataclass(frozen=True)
class StageResult:
    stage: str
    steps: int
    seconds: float
    final_losses: dict[str, float]
    stopped_by_time: bool


def run_stage(
    stage: str,
    budget: Budget,
    optimizer: torch.optim.Optimizer | OptimizerSet,
    step_fn: Callable[[int], dict[str, float]],
    log: LossLog,
    *,
    show_progress: bool = True,
) -> StageResult:
    """``step_fn(i)`` for i in 0..steps-1 with the scheduled learning rate; losses averaged and logged."""
    start, cpu_start = time.monotonic(), time.process_time()
    window: dict[str, list[float]] = {}
    last: dict[str, float] = {}
    stopped_by_time = False
    done = 0
    bar = tqdm(total=budget.steps, desc=stage, unit="step", disable=not show_progress, dynamic_ncols=True)
    try:
        for step in range(budget.steps):
            if time.monotonic() - start > budget.max_minutes * 60:
                stopped_by_time = True
                logger.warning("%s: time cap of %.1f min reached at step %d of %d", stage, budget.max_minutes, step,
                               budget.steps)
                break
            lr = learning_rate(step, budget)
            for group in optimizer.param_groups:
                group["lr"] = lr
            losses = step_fn(step)
            done = step + 1
            for name, value in losses.items():
                if not math.isfinite(value):
                    raise FloatingPointError(f"{stage}: loss {name} is {value} at step {step}")
                window.setdefault(name, []).append(value)
            bar.update(1)
            if done % budget.log_every == 0 or done == budget.steps:
                last = {name: sum(values) / len(values) for name, values in window.items()}
                window.clear()
                bar.set_postfix({name: f"{value:.4f}" for name, value in last.items()})
                # CPU seconds beside wall seconds: on a shared machine they tell what a quiet one would take.
                log.write({"stage": stage, "step": done, "lr": lr, "elapsed_s": round(time.monotonic() - start, 1),
                           "cpu_s": round(time.process_time() - cpu_start, 1), **last})
    finally:
        bar.close()
    if window:  # a time-capped stage's partial window
        last = {name: sum(values) / len(values) for name, values in window.items()}
    seconds = time.monotonic() - start
    log.write({"stage": stage, "event": "end", "steps": done, "seconds": round(seconds, 1),
               "cpu_s": round(time.process_time() - cpu_start, 1),
               "stopped_by_time": stopped_by_time, **last})
    return StageResult(stage, done, seconds, last, stopped_by_time)


class OptimizerSet:
    """Several optimisers over disjoint parameters, stepped as one (``param_groups`` spans them all)."""

    def __init__(self, *optimizers: torch.optim.Optimizer) -> None:
        self.optimizers = optimizers
        self.param_groups = [group for optimizer in optimizers for group in optimizer.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for optimizer in self.optimizers:
            optimizer.step()


def make_optimizer(module: torch.nn.Module, budget: Budget, *,
                   hidden: torch.nn.Module | None = None) -> torch.optim.Optimizer | OptimizerSet:
    """AdamW over ``module``; with ``budget.optimizer == "muon"``, Muon takes the weight matrices
    of the linear layers inside ``hidden`` (default: all of ``module``).

    Muon orthogonalises each update, which suits a layer's weight matrix, not an embedding
    table, an output head or a norm scale: those stay with AdamW, as in Muon's own recipe.
    Its learning rate is scaled to match AdamW's update size (``match_rms_adamw``), so both
    optimisers share the stage's schedule.
    """
    trainable = [p for p in module.parameters() if p.requires_grad]
    matrices: list[torch.nn.Parameter] = []
    if budget.optimizer == "muon":
        owned = {id(p) for p in trainable}
        matrices = [layer.weight for layer in (hidden or module).modules()
                    if isinstance(layer, torch.nn.Linear) and id(layer.weight) in owned]
    in_muon = {id(p) for p in matrices}
    rest = [p for p in trainable if id(p) not in in_muon]
    # No decay on biases and norm scales (1-D tensors), as usual for transformers.
    adamw = torch.optim.AdamW([{"params": [p for p in rest if p.ndim >= 2], "weight_decay": budget.weight_decay},
                               {"params": [p for p in rest if p.ndim < 2], "weight_decay": 0.0}],
                              lr=budget.lr, betas=(0.9, 0.98))
    if not matrices:
        return adamw
    muon = torch.optim.Muon(matrices, lr=budget.lr, weight_decay=budget.weight_decay, adjust_lr_fn="match_rms_adamw")
    return OptimizerSet(muon, adamw)


def step_generator(seed: int, stage: str, step: int) -> torch.Generator:
    """The noise of step ``step`` of ``stage``: a function of (seed, stage, step) alone."""
    offset = sum(ord(c) * 31**i for i, c in enumerate(stage)) % (1 << 20)
    return torch.Generator().manual_seed(seed * 1_000_003 + offset * 65_537 + step)
