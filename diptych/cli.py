"""The ``diptych`` command: serve, make-tiny, bench.

Subcommands import their modules lazily so that ``diptych --help`` stays fast: a bench
module is imported only when it runs. Each exposes ``add_arguments(parser)`` and
``run(args) -> int``.

``serve``'s flags are generated from the fields of :class:`~diptych.settings.Settings`, one
per field, so a new setting has its flag, help and choices without an edit here.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import sys
import types
from collections.abc import Mapping, Sequence
from pathlib import PurePath
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import SecretStr, ValidationError
from pydantic.fields import FieldInfo

from diptych.settings import Settings, env_var

# Bench name → module; each module exposes add_arguments(parser) and run(args) -> int. The
# tiny checkpoints that make-tiny writes are listed by the model registry.
BENCHES: dict[str, str] = {
    # one line per bench, sorted by name
    "ar-image": "diptych.bench.ar_image",
    "attention": "diptych.bench.attention",
    "dtype": "diptych.bench.dtype",
    "flow": "diptych.bench.flow",
    "flow-pool": "diptych.bench.flow_pool",
    "load": "diptych.bench.load",
    "quality": "diptych.bench.quality",
    "startup": "diptych.bench.startup",
}


def setting_flag(name: str, field: FieldInfo) -> str:
    """The flag of setting ``name``: ``--`` and the name with ``-`` for ``_``, less two suffixes.

    A trailing ``_s`` (the unit, seconds) is dropped, and a repeatable (tuple) setting's
    flag names one item, so drops its plural ``s``: the spellings the flags had before they
    were generated (``--request-timeout``, ``--api-key``).
    """
    stem = name.removesuffix("_s")
    if get_origin(_without_none(field.annotation)) is tuple:
        stem = stem.removesuffix("s")
    return "--" + stem.replace("_", "-")


def _without_none(annotation: Any) -> Any:
    # `X | None` takes None as its default only; a flag always carries an X.
    if get_origin(annotation) in (Union, types.UnionType):
        rest = [a for a in get_args(annotation) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return annotation


def _value_options(name: str, annotation: Any) -> dict[str, Any]:
    """How argparse reads one value of ``annotation``."""
    if get_origin(annotation) is Literal:
        choices = get_args(annotation)
        return {"choices": list(choices), "type": type(choices[0])}
    if annotation in (int, float):
        # Checked here so that `--port x` is an error that names the flag; ranges are the
        # settings' to check.
        return {"type": annotation}
    if isinstance(annotation, type) and issubclass(annotation, (str, PurePath, SecretStr)):
        # pydantic converts the string, as it does the environment's.
        return {"type": str}
    raise TypeError(f"setting {name}: no flag for values of type {annotation!r}")


def add_setting_flags(parser: argparse.ArgumentParser, fields: Mapping[str, FieldInfo]) -> None:
    """One flag per field; each defaults to None, so a flag not given leaves the environment's value."""
    for name, field in fields.items():
        flag = setting_flag(name, field)
        annotation = _without_none(field.annotation)
        default = field.get_default(call_default_factory=True)
        shown = "" if default in (None, ()) else f"; default {default}"
        options: dict[str, Any]
        if annotation is bool:
            options = {"action": argparse.BooleanOptionalAction}
        else:
            repeatable = get_origin(annotation) is tuple
            options = _value_options(name, get_args(annotation)[0] if repeatable else annotation)
            if repeatable:
                options["action"] = "append"
                shown += "; repeatable"
            if "choices" not in options:  # argparse shows the choices where a metavar would be
                options["metavar"] = flag.removeprefix("--").replace("-", "_").upper()
        # argparse formats help with %; a description's own % must survive that.
        description = (field.description or "").replace("%", "%%")
        # A repeatable setting also answers to its plural (--flow-devices cpu,cpu).
        aliases = [flag + "s"] if options.get("action") == "append" else []
        parser.add_argument(flag, *aliases, dest=name, default=None, help=f"{description} [{env_var(name)}{shown}]",
                            **options)


def serve_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings ``serve``'s flags set; a flag not given leaves the environment's value or the default."""
    return {name: value for name in Settings.model_fields if (value := getattr(args, name, None)) is not None}


def _describe(error: Mapping[str, Any], overrides: Mapping[str, Any]) -> str:
    # Names where the value came from: the flag when one was given, else the environment.
    if not error["loc"]:  # the whole object's, such as an unknown DIPTYCH_* variable
        return str(error["msg"])
    name = str(error["loc"][0])
    field = Settings.model_fields.get(name)
    if field is None:
        return f"{name}: {error['msg']}"
    source = f"argument {setting_flag(name, field)}" if name in overrides else env_var(name)
    return f"{source}: {error['msg']} (got {error['input']!r})"


def _serve(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    overrides = serve_overrides(args)
    # Validated here, before the server's imports, so that a bad value is a usage error
    # naming its flag or variable, not a traceback naming a field.
    try:
        Settings(**overrides)
    except ValidationError as exc:
        parser.error("; ".join(_describe(error, overrides) for error in exc.errors()))
    except ValueError as exc:  # pydantic-settings' SettingsError: a variable it could not parse
        parser.error(str(exc))
    from diptych.server.main import serve

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

    serve = sub.add_parser("serve", help="start the OpenAI-compatible server",
                           description="Each flag is also an environment variable, named in its help; flags win.")
    add_setting_flags(serve, Settings.model_fields)
    serve.set_defaults(func=functools.partial(_serve, serve))

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
