"""Train the embedded micro model: ``python -m training.micro.train --out DIR``.

Three stages, each saving its part of a Qwen-Image-Edit checkpoint in ``DIR`` so that a
later stage (or a rerun of one stage) starts from what is on disk:

1. ``vae`` — the VAE on 64×64 renders (``train_vae.py``);
2. ``vlm`` — the Qwen2.5-VL on answers, descriptions, edit outcomes and prompts (``train_vlm.py``);
3. ``dit`` — the transformer, flow matching on VAE latents conditioned as the server
   conditions it, for text-to-image and edits (``train_dit.py``).

Losses go to ``DIR/train_log.jsonl``; weights are checked against the 40 MB budget.
Budgets and the design: docs/architecture.md, "Training the micro model".
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from training.micro.checkpoint import (
    ARCHITECTURES,
    Architecture,
    check_size,
    write_skeleton,
)
from training.micro.training import Budget, LossLog

logger = logging.getLogger(__name__)

STAGES: tuple[str, ...] = ("vae", "vlm", "dit")

# The full run's budgets: the recipe of the shipped diptych-micro (--seed 1). With the
# transformer's edit share at 0.5 (now 0.625: the same batch, so the same step cost), a run of
# this script with nothing overridden but the seed, alone on a 2-core machine at two threads
# (torch 2.13), took 58.6 minutes end to end: VAE 4.3, VLM 23.5 (0.40 s a step at batch 16,
# Muon), transformer 28.6 plus 1.9 encoding its pool (0.36 s a step at batch 64).
# An earlier machine of the same kind was slower: VAE 9.9, VLM 33.2, transformer about 44
# minutes alone (0.51 s a step, pool 3.0), about 87 in all. The minute caps (90 in all) only
# stop a stage on a machine slower than that.
FULL_BUDGETS: dict[str, Budget] = {
    # 1,200 steps: held-out scenes read back 95% correct (2,000 steps: 100%, at 1.7× the time).
    "vae": Budget(steps=1200, batch_size=16, lr=2e-3, max_minutes=11, warmup_steps=50),
    # Muon: VQA loss 0.051 against AdamW's 0.346 over steps 1,500-1,830 (runs m0, s0, same seed);
    # held-out VQA 100% after 3,500 steps, against AdamW's 84.7% after 8,000 (docs/architecture.md).
    "vlm": Budget(steps=3500, batch_size=16, lr=1e-3, max_minutes=35, warmup_steps=100, optimizer="muon"),
    # lr 4e-3: against 2e-3 on one VAE and VLM, edit 39% against 26% and text-to-image 45% against 42%
    # (ShapesBench seeds 0 and 1, 210 items each), training loss lower throughout (docs/architecture.md, r2).
    # 4,800 steps (training seed 0, edit share 0.5): edit 71.4% / 68.6% (ShapesBench seeds 0 / 1) against
    # 67.6% / 64.8% after 4,000. The edit share: train_dit.EDIT_SHARE.
    "dit": Budget(steps=4800, batch_size=64, lr=4e-3, max_minutes=44, warmup_steps=200),
}
SMOKE_BUDGETS: dict[str, Budget] = {
    name: Budget(steps=3, batch_size=2, lr=1e-3, warmup_steps=1, log_every=1) for name in STAGES
}


@dataclass(frozen=True)
class TrainConfig:
    out: Path
    seed: int = 0
    stages: tuple[str, ...] = STAGES
    architecture: str = "full"
    budgets: tuple[tuple[str, Budget], ...] = tuple(FULL_BUDGETS.items())
    threads: int = 2
    eval_items: int = 40  # held-out items per task in each stage's closing evaluation (0: none)
    show_progress: bool = True

    def __post_init__(self) -> None:
        unknown = [stage for stage in self.stages if stage not in STAGES]
        if unknown:
            raise ValueError(f"unknown stages {unknown}; choose from {STAGES}")
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture {self.architecture!r} is not one of {sorted(ARCHITECTURES)}")

    def budget(self, stage: str) -> Budget:
        return dict(self.budgets)[stage]

    @property
    def arch(self) -> Architecture:
        return ARCHITECTURES[self.architecture]


def train(config: TrainConfig) -> dict[str, object]:
    """Run the chosen stages in order; returns a summary (also the log's last line)."""
    # Imported here: each stage pulls in transformers / diffusers, and --help should be instant.
    from training.micro.train_dit import train_dit
    from training.micro.train_vae import train_vae
    from training.micro.train_vlm import train_vlm

    torch.set_num_threads(config.threads)
    out = config.out
    log = LossLog(out / "train_log.jsonl")
    if not (out / "model_index.json").is_file():
        write_skeleton(out, config.arch)
    log.write({"event": "start", "seed": config.seed, "stages": list(config.stages), "threads": config.threads,
               "architecture": config.architecture,
               "budgets": {name: vars(budget) for name, budget in config.budgets}})
    summary: dict[str, object] = {}
    start = time.monotonic()
    runners = {"vae": train_vae, "vlm": train_vlm, "dit": train_dit}
    for stage in config.stages:
        report = runners[stage](out, config.arch, config.budget(stage), config.seed, log,
                                eval_items=config.eval_items, show_progress=config.show_progress)
        summary[stage] = report.summary()
    summary["weights_bytes"] = check_size(out)
    summary["seconds"] = round(time.monotonic() - start, 1)
    log.write({"event": "done", **summary})
    return summary


def parse_overrides(text: str | None, kind: type, flag: str) -> dict[str, float | int | str]:
    """``"vae=300,dit=50"`` → {"vae": 300, "dit": 50}; a bare number applies to every stage."""
    if not text:
        return {}
    if "=" not in text:
        return {stage: kind(text) for stage in STAGES}
    values = {}
    for part in text.split(","):
        stage, _, value = part.partition("=")
        if stage not in STAGES:
            raise SystemExit(f"{flag}: unknown stage {stage!r} in {text!r}; choose from {STAGES}")
        values[stage] = kind(value)
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.micro.train", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="checkpoint directory (created; stages resume from it)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset of vae,vlm,dit, run in order")
    parser.add_argument("--steps", help="steps per stage: N, or vae=N,vlm=N,dit=N")
    parser.add_argument("--batch-size", help="batch size per stage: N, or vae=N,...")
    parser.add_argument("--minutes-per-stage", help="time cap per stage in minutes: M, or vae=M,...")
    parser.add_argument("--lr", help="peak learning rate per stage: X, or vae=X,...")
    parser.add_argument("--optimizer", help="adamw or muon, per stage: NAME, or vlm=NAME,... (default adamw)")
    parser.add_argument("--eval-every", help="steps between in-stage held-out evaluations: N, or vlm=N,... (0: at the end)")
    parser.add_argument("--architecture", default="full", choices=sorted(ARCHITECTURES))
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2: the whole machine)")
    parser.add_argument("--eval-items", type=int, default=40, help="held-out items per task in stage evaluations")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)

    stages = tuple(s for s in args.stages.split(",") if s)
    steps = parse_overrides(args.steps, int, "--steps")
    batches = parse_overrides(args.batch_size, int, "--batch-size")
    minutes = parse_overrides(args.minutes_per_stage, float, "--minutes-per-stage")
    rates = parse_overrides(args.lr, float, "--lr")
    evals = parse_overrides(args.eval_every, int, "--eval-every")
    optimizers = parse_overrides(args.optimizer, str, "--optimizer")
    base = SMOKE_BUDGETS if args.architecture == "smoke" else FULL_BUDGETS
    try:
        budgets = tuple(
            (name, replace(budget, steps=int(steps.get(name, budget.steps)),
                           batch_size=int(batches.get(name, budget.batch_size)),
                           max_minutes=float(minutes.get(name, budget.max_minutes)),
                           lr=float(rates.get(name, budget.lr)), eval_every=int(evals.get(name, budget.eval_every)),
                           optimizer=str(optimizers.get(name, budget.optimizer))))
            for name, budget in base.items()
        )
        config = TrainConfig(out=args.out, seed=args.seed, stages=stages, architecture=args.architecture,
                             budgets=budgets, threads=args.threads, eval_items=args.eval_items,
                             show_progress=not args.no_progress)
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc
    summary = train(config)
    sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
