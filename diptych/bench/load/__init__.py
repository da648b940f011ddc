"""``diptych bench load``: drive load into a Diptych (or any OpenAI-compatible) server with httpx and report it.

Scenarios: ``vqa`` (chat about a picture, streamed tokens), ``generate`` (text to image,
streamed partial images), ``edit`` (multipart edits of a picture), ``mixed`` (the three in
turn). Load is a closed loop at each ``--concurrency`` (a sweep: ``--concurrency 1 2 4``) or
an open loop with Poisson arrivals at each ``--rate`` (requests/s); each point stops
issuing after ``--requests`` requests or ``--duration`` seconds, whichever comes first,
then waits for the requests in flight. Errors (HTTP statuses, connection failures, error
events in a stream) are counted, never fatal.

Figures per point: requests/s, images/s and output tokens/s; latency p50/p90/p99; time to
first output (first token for chat, first partial image for images) and inter-token
latency; errors by status; goodput under ``--slo-ttft-ms`` / ``--slo-latency-ms``. Writes
``report.json``, ``report.md`` and ``latency-<scenario>.png`` into ``--out``, and prints the
markdown (or, with ``--json``, the JSON object) on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import logging
import sys
from pathlib import Path
from typing import Any

import httpx

from diptych.bench.load.driver import LoadPlan, run_load
from diptych.bench.load.inputs import InputImage, builtin_images, folder_images
from diptych.bench.load.plots import plot_scenarios
from diptych.bench.load.report import Point, build_report, markdown, write_json
from diptych.bench.load.scenarios import SCENARIOS, RequestOptions, Scenario
from diptych.bench.load.stats import Slo, summarize

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--scenario", nargs="+", choices=sorted(SCENARIOS), default=["mixed"],
                        help="one or more scenarios, run one after another (default: mixed)")
    load = parser.add_mutually_exclusive_group()
    load.add_argument("--concurrency", nargs="+", type=int, help="closed loop: requests in flight, one point "
                      "per value (default: 1)")
    load.add_argument("--rate", nargs="+", type=float, help="open loop: Poisson arrivals per second, one point "
                      "per value")
    parser.add_argument("--requests", type=int, help="requests per point (default 32 when --duration is not given)")
    parser.add_argument("--duration", type=float, help="seconds per point: no new request after it")
    parser.add_argument("--model", help="model to ask for (default: the first of GET /v1/models)")
    parser.add_argument("--api-key", help="sent as 'Authorization: Bearer KEY'")
    parser.add_argument("--images", type=Path, help="folder of PNG/JPEG/WebP inputs for vqa and edit "
                        "(default: a built-in set of generated pictures)")
    parser.add_argument("--size", default="64x64", help="generate/edit output size (default 64x64)")
    parser.add_argument("--steps", type=int, default=4, help="denoising steps (default 4)")
    parser.add_argument("--guidance-scale", type=float, help="generate/edit guidance (default: the server's)")
    parser.add_argument("--partial-images", type=int, default=1, help="streamed partial images (0-3, default 1)")
    parser.add_argument("--max-tokens", type=int, default=32, help="chat completion tokens (default 32)")
    parser.add_argument("--no-stream", dest="stream", action="store_false", help="ask for whole answers")
    parser.add_argument("--slo-ttft-ms", type=float, help="goodput objective: time to first output")
    parser.add_argument("--slo-latency-ms", type=float, help="goodput objective: end-to-end latency")
    parser.add_argument("--warmup", type=int, default=0, help="requests per scenario before measuring, not "
                        "counted (default 0)")
    parser.add_argument("--timeout", type=float, default=600, help="httpx timeout in seconds: to connect, and for "
                        "each read of an answer (default 600)")
    parser.add_argument("--seed", type=int, default=0, help="seeds of the requests and of the arrivals")
    parser.add_argument("--out", type=Path, default=Path("load-report"), help="report folder (default load-report)")
    parser.add_argument("--json", action="store_true", help="print the JSON report instead of markdown")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def _check(args: argparse.Namespace) -> None:
    problems = []
    if args.requests is not None and args.requests < 1:
        problems.append(f"--requests {args.requests} must be >= 1")
    if args.duration is not None and args.duration <= 0:
        problems.append(f"--duration {args.duration} must be > 0")
    if any(c < 1 for c in args.concurrency or ()) or any(r <= 0 for r in args.rate or ()):
        problems.append(f"--concurrency {args.concurrency} / --rate {args.rate} must be positive")
    if not 0 <= args.partial_images <= 3:
        problems.append(f"--partial-images {args.partial_images} must be 0..3")
    if args.warmup < 0 or args.steps < 1 or args.max_tokens < 1:
        problems.append(f"--warmup {args.warmup}, --steps {args.steps}, --max-tokens {args.max_tokens}")
    if problems:
        raise SystemExit("bench load: " + "; ".join(problems))


def _plans(args: argparse.Namespace) -> list[LoadPlan]:
    requests = args.requests if args.requests is not None or args.duration is not None else 32
    if args.rate:
        return [LoadPlan("open", rate, requests, args.duration, args.seed) for rate in args.rate]
    return [LoadPlan("closed", c, requests, args.duration, args.seed) for c in args.concurrency or [1]]


def _discover_model(client: httpx.Client) -> str:
    try:
        response = client.get("/v1/models")
        response.raise_for_status()
        return str(response.json()["data"][0]["id"])
    except (httpx.HTTPError, KeyError, IndexError, ValueError) as exc:
        raise SystemExit(f"bench load: cannot read the model from {client.base_url}/v1/models ({exc!r}); "
                         "pass --model") from exc


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s bench-load %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    _check(args)
    url = args.url.rstrip("/").removesuffix("/v1")
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    try:
        images = folder_images(args.images) if args.images else builtin_images()
    except ValueError as exc:
        raise SystemExit(f"bench load: {exc}") from exc
    if args.model is None:
        with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
            args.model = _discover_model(client)
    options = RequestOptions(model=args.model, size=args.size, steps=args.steps, guidance_scale=args.guidance_scale,
                             partial_images=args.partial_images, max_tokens=args.max_tokens, stream=args.stream,
                             seed=args.seed)
    slo = Slo(ttft_s=None if args.slo_ttft_ms is None else args.slo_ttft_ms / 1000,
              latency_s=None if args.slo_latency_ms is None else args.slo_latency_ms / 1000)
    plans = _plans(args)
    config = _config(args, url, plans)
    points = asyncio.run(_run_all(args, url, headers, options, images, plans, slo))
    report = build_report(config, points)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(report, args.out / "report.json")
    table = markdown(report)
    (args.out / "report.md").write_text(table)
    plots = plot_scenarios(report, args.out)
    logger.info("wrote %s, %s and %s", args.out / "report.json", args.out / "report.md",
                ", ".join(str(p) for p in plots))
    sys.stdout.write(json.dumps(report, indent=2) + "\n" if args.json else table)
    return 0


def _config(args: argparse.Namespace, url: str, plans: list[LoadPlan]) -> dict[str, Any]:
    return {
        "url": url, "model": args.model, "scenarios": args.scenario, "mode": plans[0].mode,
        "levels": [p.level for p in plans], "requests": plans[0].requests, "duration_s": args.duration,
        "size": args.size, "steps": args.steps, "guidance_scale": args.guidance_scale,
        "partial_images": args.partial_images, "max_tokens": args.max_tokens, "stream": args.stream,
        "images": str(args.images) if args.images else "built-in", "warmup": args.warmup, "seed": args.seed,
        "timeout_s": args.timeout, "slo": {"ttft_ms": args.slo_ttft_ms, "latency_ms": args.slo_latency_ms},
        "started_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


async def _run_all(args: argparse.Namespace, url: str, headers: dict[str, str], options: RequestOptions,
                   images: tuple[InputImage, ...], plans: list[LoadPlan], slo: Slo) -> list[Point]:
    from tqdm import tqdm

    widest = max(int(p.level) for p in plans) if plans[0].mode == "closed" else None
    # Open loop: no cap, requests pile up as they would on a public endpoint.
    limits = httpx.Limits(max_connections=widest, max_keepalive_connections=widest or 64)
    points = []
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=args.timeout, limits=limits) as client:
        for name in args.scenario:
            scenario = Scenario(name, options, images)
            sent = 0  # request numbers go on across points: no point reuses an earlier one's inputs
            if args.warmup:
                # One at a time, so first-request costs (vLLM's first multimodal request, lazy
                # imports) land here and not in the first point's tail latency.
                sent += len((await run_load(client, scenario, LoadPlan("closed", 1, args.warmup))).results)
            for plan in plans:
                with tqdm(total=plan.requests, desc=f"{name} {plan.label}", unit="req", file=sys.stderr,
                          disable=not args.progress, leave=True) as bar:
                    run = await run_load(client, scenario, plan, on_done=lambda _: bar.update(), first_index=sent)
                sent += len(run.results)
                summary = summarize(run, slo)
                logger.info("%s %s: %d sent, %d ok, errors %s, %.2f req/s", name, plan.label, summary.requests,
                            summary.ok, summary.errors or "none", summary.requests_per_s)
                points.append(Point(name, plan, summary))
    return points
