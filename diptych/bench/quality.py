"""``diptych bench quality``: ShapesBench, run over HTTP against a Diptych server.

Three tasks on held-out scenes of the shapes world (``diptych.bench.shapes``), each through
the public API, so any OpenAI-compatible server with the capabilities can be measured:

* VQA — ``POST /v1/chat/completions`` with the picture as a PNG ``data:`` URL and the
  question; accuracy per question kind (color, shape, count, position, exist). Replies are
  normalised before matching: lowercased, punctuation dropped, "centre"/"colour" spelled
  the American way, number words turned into digits ("two" → "2"), leading "the", "a",
  "it is" dropped; the reply must then *begin* with the canonical answer's words
  ("Red." and "red circle" answer "red"), and a position answer may not run on into
  another position word ("top left" does not answer "top").
* text-to-image — ``POST /v1/images/generations``; GenEval-style: the analyser reads the
  picture and every check of the prompt (object present, colour, count, relative position,
  cell) must hold. Accuracy per prompt kind and per check kind.
* edit — ``POST /v1/images/edits`` with the source picture and the instruction; correct
  when the touched cells hold the target's objects and all other cells are unchanged.

Items depend on ``--seed`` and their index only, so runs with the same seed ask the same
things of any server; each image request carries its own seed, derived from both
(``shapes.bench.noise_seed``), so a score averages over independent draws of the noise.
A request that fails (HTTP error, unreadable reply) counts as wrong and is counted in
``errors``. Prints a table, or one JSON object with ``--json`` (failures included).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import logging
import sys
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import httpx
from PIL import Image

from diptych.bench.shapes import bench as sb

logger = logging.getLogger(__name__)
MAX_FAILURES_REPORTED = 5  # per task, in --json output


@dataclass(frozen=True)
class QualityConfig:
    url: str
    model: str | None = None  # None: the first model the server lists
    api_key: str | None = None
    vqa: int = 100
    t2i: int = 70
    edit: int = 40
    seed: int = 0  # the window of held-out scenes, and with each item's index its request's seed
    size: int = 64
    concurrency: int = 4
    timeout_s: float = 600.0
    steps: int | None = None  # num_inference_steps; None: the server's default
    guidance: float | None = None  # guidance_scale; None: the server's default
    max_tokens: int = 16


@dataclass(frozen=True)
class Outcome:
    """One item's result: its kind, whether it was right, and what was seen (for failures)."""

    kind: str
    correct: bool
    detail: dict[str, Any]
    error: bool = False
    checks: tuple[tuple[str, bool], ...] = ()  # t2i: (check kind, held)
    parts: tuple[tuple[str, bool], ...] = ()  # edit: ("changed", …), ("kept", …)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", required=True, help="the server, e.g. http://127.0.0.1:8000")
    parser.add_argument("--model", help="model name (default: the first of /v1/models)")
    parser.add_argument("--api-key", dest="api_key", help="bearer key, if the server wants one")
    parser.add_argument("--vqa", type=int, default=100, help="VQA questions (default 100; 0 skips)")
    parser.add_argument("--t2i", type=int, default=70, help="text-to-image prompts (default 70; 0 skips)")
    parser.add_argument("--edit", type=int, default=40, help="edits (default 40; 0 skips)")
    parser.add_argument("--seed", type=int, default=0,
                        help="which window of held-out scenes; image requests are seeded from it and their index (default 0)")
    parser.add_argument("--size", type=int, default=64, help="side of pictures sent and asked for (default 64)")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    parser.add_argument("--timeout", dest="timeout_s", type=float, default=600.0, help="per request, s (default 600)")
    parser.add_argument("--steps", type=int, help="num_inference_steps for images (default: the server's)")
    parser.add_argument("--guidance", type=float, help="guidance_scale for images (default: the server's)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s bench-quality %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    counts = {"vqa": args.vqa, "t2i": args.t2i, "edit": args.edit, "concurrency": args.concurrency}
    if any(value < 0 for value in counts.values()) or args.concurrency < 1 or args.size < 32:
        raise SystemExit(f"bad arguments: {counts}, size {args.size} (counts ≥ 0, concurrency ≥ 1, size ≥ 32)")
    config = QualityConfig(
        url=args.url.rstrip("/"), model=args.model, api_key=args.api_key, vqa=args.vqa, t2i=args.t2i, edit=args.edit,
        seed=args.seed, size=args.size, concurrency=args.concurrency, timeout_s=args.timeout_s, steps=args.steps,
        guidance=args.guidance,
    )
    report = asyncio.run(run_bench(config))
    sys.stdout.write(json.dumps(report) + "\n" if args.json else format_table(report))
    return 0


async def run_bench(config: QualityConfig, transport: httpx.AsyncBaseTransport | None = None) -> dict[str, Any]:
    """Every task of ``config`` against its server (through ``transport`` if given: tests); the report."""
    headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
    async with httpx.AsyncClient(base_url=config.url, headers=headers, timeout=config.timeout_s,
                                 transport=transport) as client:
        model = config.model or await _first_model(client)
        gate = asyncio.Semaphore(config.concurrency)
        runner = _Runner(client, model, config)
        tasks = {
            "vqa": (sb.vqa_items(config.vqa, config.seed, config.size), runner.vqa),
            "t2i": (sb.t2i_items(config.t2i, config.seed), runner.t2i),
            "edit": (sb.edit_items(config.edit, config.seed, config.size), runner.edit),
        }

        async def guarded(ask: Callable[[Any], Awaitable[Outcome]], item: Any) -> Outcome:
            async with gate:
                return await ask(item)

        results = await asyncio.gather(*(
            asyncio.gather(*(guarded(ask, item) for item in items)) for items, ask in tasks.values()))
    report: dict[str, Any] = {"url": config.url, "model": model, "config": asdict(config) | {"api_key": None}}
    for name, outcomes in zip(tasks, results, strict=True):
        if outcomes:
            report[name] = summarise(outcomes)
    return report


async def _first_model(client: httpx.AsyncClient) -> str:
    response = await client.get("/v1/models")
    response.raise_for_status()
    return str(response.json()["data"][0]["id"])


class _Runner:
    """Sends one item and judges the reply; failures of the request become wrong outcomes."""

    def __init__(self, client: httpx.AsyncClient, model: str, config: QualityConfig) -> None:
        self._client, self._model, self._config = client, model, config

    def _image_options(self, seed: int) -> dict[str, Any]:
        options: dict[str, Any] = {"model": self._model, "n": 1, "size": f"{self._config.size}x{self._config.size}",
                                   "response_format": "b64_json", "output_format": "png", "seed": seed}
        if self._config.steps is not None:
            options["num_inference_steps"] = self._config.steps
        if self._config.guidance is not None:
            options["guidance_scale"] = self._config.guidance
        return options

    async def vqa(self, item: sb.VQAItem) -> Outcome:
        detail = {"question": item.question, "answer": item.answer}
        url = "data:image/png;base64," + base64.b64encode(item.image_png).decode()
        body = {"model": self._model, "max_tokens": self._config.max_tokens, "temperature": 0.0, "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": item.question}]}]}
        try:
            response = await self._client.post("/v1/chat/completions", json=body)
            response.raise_for_status()
            reply = str(response.json()["choices"][0]["message"]["content"] or "")
        except (httpx.HTTPError, KeyError, IndexError, TypeError, ValueError) as exc:
            return Outcome(item.kind, False, detail | {"error": _error_text(exc)}, error=True)
        return Outcome(item.kind, sb.answer_matches(reply, item.answer), detail | {"reply": reply})

    async def t2i(self, item: sb.T2IItem) -> Outcome:
        detail = {"prompt": item.prompt}
        try:
            response = await self._client.post("/v1/images/generations",
                                               json={"prompt": item.prompt, **self._image_options(item.noise_seed)})
            image = _first_image(response)
        except (httpx.HTTPError, KeyError, IndexError, TypeError, ValueError, OSError) as exc:
            return Outcome(item.kind, False, detail | {"error": _error_text(exc)}, error=True,
                           checks=tuple((r.kind, False) for r in item.requirements))
        verdict = await asyncio.to_thread(sb.judge_t2i, item, image)
        return Outcome(item.kind, verdict.correct, detail | {"found": verdict.found}, checks=verdict.checks)

    async def edit(self, item: sb.EditItem) -> Outcome:
        detail = {"instruction": item.instruction, "source": sb.describe(item.triplet.source.objects),
                  "target": sb.describe(item.triplet.target.objects)}
        fields = {key: str(value) for key, value in self._image_options(item.noise_seed).items()}
        try:
            response = await self._client.post("/v1/images/edits", data={"prompt": item.instruction, **fields},
                                               files={"image": ("source.png", item.source_png, "image/png")})
            image = _first_image(response)
        except (httpx.HTTPError, KeyError, IndexError, TypeError, ValueError, OSError) as exc:
            return Outcome(item.kind, False, detail | {"error": _error_text(exc)}, error=True,
                           parts=(("changed", False), ("kept", False)))
        verdict = await asyncio.to_thread(sb.judge_edit, item.triplet, image)
        return Outcome(item.kind, verdict.correct, detail | {"found": verdict.found},
                       parts=(("changed", verdict.changed), ("kept", verdict.kept)))


def _first_image(response: httpx.Response) -> Image.Image:
    response.raise_for_status()
    data = base64.b64decode(response.json()["data"][0]["b64_json"])
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def _error_text(exc: Exception) -> str:
    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code}: {exc.response.text[:300]}"
    return f"{type(exc).__name__}: {exc}"[:300]


# -- report -----------------------------------------------------------------------------


def _rate(values: Sequence[bool]) -> dict[str, Any]:
    return {"n": len(values), "accuracy": sum(values) / len(values) if values else None}


def summarise(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    by_kind: dict[str, list[bool]] = defaultdict(list)
    by_check: dict[str, list[bool]] = defaultdict(list)
    for outcome in outcomes:
        by_kind[outcome.kind].append(outcome.correct)
        for name, held in (*outcome.checks, *outcome.parts):
            by_check[name].append(held)
    summary: dict[str, Any] = {
        **_rate([o.correct for o in outcomes]), "errors": sum(o.error for o in outcomes),
        "by_kind": {kind: _rate(values) for kind, values in by_kind.items()},
        "failures": [o.detail | {"kind": o.kind} for o in outcomes if not o.correct][:MAX_FAILURES_REPORTED],
    }
    if by_check:
        summary["by_check"] = {name: _rate(values) for name, values in sorted(by_check.items())}
    return summary


_TITLES = {"vqa": "VQA", "t2i": "text-to-image", "edit": "edit"}


def format_table(report: dict[str, Any]) -> str:
    config = report["config"]
    title_line = (f"ShapesBench: model {report['model']} at {report['url']} (held-out scenes, seed {config['seed']}, "
                  f"{config['size']}x{config['size']})")
    lines = [title_line, f"{'task':<15}{'kind':<20}{'n':>6}{'accuracy':>10}"]
    for task, title in _TITLES.items():
        if task not in report:
            continue
        summary = report[task]
        rows = [(kind, value) for kind, value in summary["by_kind"].items()]
        rows += [(f"check: {name}", value) for name, value in summary.get("by_check", {}).items()]
        for label, value in rows:
            lines.append(f"{title:<15}{label:<20}{value['n']:>6}{value['accuracy']:>10.1%}")
        lines.append(f"{title:<15}{'OVERALL':<20}{summary['n']:>6}{summary['accuracy']:>10.1%}"
                     + (f"   ({summary['errors']} failed requests)" if summary["errors"] else ""))
    return "\n".join(lines) + "\n"
