"""The ``diptych`` command: serve, make-tiny, bench.

Subcommands import their modules lazily so that ``diptych --help`` stays fast: a bench
module is imported only when it runs. Each exposes ``add_arguments(parser)`` and
``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Bench name → module; each module exposes add_arguments(parser) and run(args) -> int. The
# tiny checkpoints that make-tiny writes are listed by the model registry.
BENCHES: dict[str, str] = {
    # one line per bench, sorted by name
    "ar-image": "diptych.bench.ar_image",
    "attention": "diptych.bench.attention",
    "flow": "diptych.bench.flow",
    "load": "diptych.bench.load",
    "quality": "diptych.bench.quality",
    "startup": "diptych.bench.startup",
}

def _serve(args: argparse.Namespace) -> int:
    from diptych.server.main import serve

    overrides = {k: v for k, v in vars(args).items() if k not in {"command", "func"} and v is not None}
    return serve(overrides)


def _make_tiny(args: argparse.Namespace) -> int:
    from pathlib import Path

    from diptych.models.registry import TINY_FACTORIES, load_target

    factory = load_target(TINY_FACTORIES[args.family])
    path = factory(Path(args.out_dir), seed=args.seed)
    sys.stdout.write(f"{path}\n")
    return 0


def _bench(args: argparse.Namespace) -> int:
    module = importlib.import_module(BENCHES[args.bench])
    parser = argparse.ArgumentParser(prog=f"diptych bench {args.bench}", description=module.__doc__)
    module.add_arguments(parser)
    return int(module.run(parser.parse_args(args.bench_args)))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diptych", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="start the OpenAI-compatible server")
    serve.add_argument("--model", help="checkpoint directory (default: the embedded default model)")
    serve.add_argument("--served-model-name", dest="served_model_name")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--device", choices=["cpu", "cuda"])
    serve.add_argument(
        "--api-key", dest="api_keys", action="append", help="bearer key (repeatable); also DIPTYCH_API_KEYS"
    )
    serve.add_argument("--cache-dir", dest="cache_dir")
    serve.add_argument("--queue-depth", dest="queue_depth", type=int)
    serve.add_argument("--request-timeout", dest="request_timeout_s", type=float)
    serve.add_argument("--kv-cache-gib", dest="kv_cache_gib", type=float)
    serve.add_argument("--max-num-seqs", dest="max_num_seqs", type=int, help="vLLM sequences per step (a guided image is two)")
    serve.add_argument("--max-image-side", dest="max_image_side", type=int)
    serve.add_argument("--max-steps", dest="max_steps", type=int)
    serve.add_argument("--max-n", dest="max_n", type=int)
    serve.add_argument("--max-prompt-tokens", dest="max_prompt_tokens", type=int)
    serve.add_argument("--max-body-bytes", dest="max_body_bytes", type=int)
    serve.add_argument("--shutdown-timeout", dest="shutdown_timeout_s", type=float,
                       help="seconds requests in flight get to finish on SIGTERM/SIGINT")
    serve.add_argument("--remote-image-host", dest="remote_image_hosts", action="append",
                       help="host http(s) image URLs may name (repeatable; '*.example.com' for subdomains); "
                       "also DIPTYCH_REMOTE_IMAGE_HOSTS")
    serve.add_argument("--remote-image-max-bytes", dest="remote_image_max_bytes", type=int)
    serve.add_argument("--remote-image-timeout", dest="remote_image_timeout_s", type=float)
    serve.add_argument("--remote-image-max-redirects", dest="remote_image_max_redirects", type=int)
    serve.add_argument("--log-level", dest="log_level", choices=["debug", "info", "warning", "error"])
    serve.set_defaults(func=_serve)

    tiny = sub.add_parser("make-tiny", help="write a tiny random checkpoint in a family's public layout")
    from diptych.models.registry import TINY_FACTORIES

    tiny.add_argument("family", choices=sorted(TINY_FACTORIES))
    tiny.add_argument("out_dir")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=_make_tiny)

    bench = sub.add_parser("bench", help="benchmarks (ratios measured side by side in one run)")
    bench.add_argument("bench", choices=sorted(BENCHES), help="which benchmark; its own --help lists its options")
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)
    bench.set_defaults(func=_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
