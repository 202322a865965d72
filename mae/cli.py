"""`mae` command line: a registry of sub-commands, each living in its own module.

Every command module defines ``add_arguments(parser)`` and ``main(args)``. Modules are imported lazily so
that ``mae --help`` and light commands stay fast. ``mae <command> --help`` of a stage with settings lists its
``--set`` keys with their defaults (read from the stage's settings class, :data:`SETTINGS`).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
import typing
from typing import Any

from mae.errors import PREEMPTED_EXIT, Preempted, UserError
from mae.registry.evaluations import EVALUATIONS
from mae.tools import warmstart
from mae.utils.memory import keep_freed_memory

COMMANDS: dict[str, tuple[str, str]] = {
    "prepare-data": ("mae.data.prepare", "generate the built-in datasets or describe a real one"),
    "fit-pca": ("mae.models.targets", "fit the PCA target on training patches"),
    "train-tokenizer": ("mae.models.tokenizer", "train the discrete-token (dVAE stand-in) tokenizer"),
    "pretrain": ("mae.stages.pretrain", "MAE pretraining"),
    **{ev.command: (ev.module, ev.help) for ev in EVALUATIONS.values()},
    "summarize": ("mae.report.summary", "collect metrics into results/summary/runs.csv"),
    "tables": ("mae.report.tables", "paper tables beside our numbers"),
    "figures": ("mae.report.figures", "paper figures"),
    "claims": ("mae.report.claims", "check the paper's claims against our runs"),
    "visualize": ("mae.tools.visualize", "original / masked / reconstruction grid of your images (paper Figs. 2-4)"),
    "bench": ("mae.tools.bench", "pretraining-step throughput benchmark (img/s and share of the roofline)"),
    "export": ("mae.tools.export", "weights as safetensors, for timm or for Hugging Face transformers"),
}
#: the settings class ("module:Class") of each command that takes --config/--set
SETTINGS: dict[str, str] = {
    "pretrain": "mae.config:PretrainConfig",
    **{ev.command: ev.config for ev in EVALUATIONS.values()},
}


def version() -> str:
    """The installed distribution's version (package metadata), else ``mae.__version__`` (a source tree)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("mae-study")
    except PackageNotFoundError:
        from mae import __version__

        return __version__


def _yaml_value(value: Any) -> str:
    """A default as it is written after ``--set KEY=`` (YAML)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    return str(value)


def _type_name(hint: Any) -> str:
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return "|".join(str(a) for a in args)
    if type(None) in args:
        return " or ".join(_type_name(a) for a in args if a is not type(None)) + " or null"
    if origin in (tuple, list):
        items = [_type_name(a) for a in args if a is not Ellipsis] + (["..."] if Ellipsis in args else [])
        return "[" + ", ".join(items) + "]"
    return getattr(hint, "__name__", str(hint))


def settings_help(spec: str) -> str:
    """The ``--set`` keys of settings class ``spec`` ("module:Class"): name, default and type, one a line."""
    module, _, name = spec.partition(":")
    cls = getattr(importlib.import_module(module), name)
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        rows.append((f.name, _yaml_value(default), _type_name(hints[f.name])))
    width, dwidth = max(len(r[0]) for r in rows), min(16, max(len(r[1]) for r in rows))
    lines = [f"settings ({name}): --set KEY=VALUE (repeatable, value parsed as YAML) or KEY: VALUE in --config"]
    lines += [f"  {key:<{width}}  {default:<{dwidth}}  {kind}" for key, default, kind in rows]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The top-level ``mae`` parser: ``--version`` and one sub-command per entry of :data:`COMMANDS` (whose own
    options :func:`command_parser` builds)."""
    parser = argparse.ArgumentParser(
        prog="mae",
        description="Masked Autoencoders study pipeline",
        epilog="`mae COMMAND --help` lists a command's options (and settings)",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", metavar="command")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def command_parser(name: str, module: Any = None) -> argparse.ArgumentParser:
    """The parser of ``mae NAME``: the command module's ``add_arguments``, and the ``--set`` keys of its settings
    class (:data:`SETTINGS`) in the epilog. ``module`` is the imported command module (imported here if not given)."""
    if module is None:
        module = importlib.import_module(COMMANDS[name][0])
    extra = {}
    if name in SETTINGS:
        extra = {"epilog": settings_help(SETTINGS[name]), "formatter_class": argparse.RawDescriptionHelpFormatter}
    cmd_parser = argparse.ArgumentParser(prog=f"mae {name}", description=COMMANDS[name][1], **extra)
    module.add_arguments(cmd_parser)
    return cmd_parser


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the console script: a study job runs in the study's warm-start server, if there is one
        code = warmstart.delegate(sys.argv, "mae.cli:main")
        if code is not None:
            return code
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] not in COMMANDS:
        parser.parse_args(argv or ["--help"])
        return 2
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(COMMANDS[name][0])
    args = command_parser(name, module).parse_args(rest)
    keep_freed_memory()  # reuse freed activation buffers instead of page-faulting fresh ones (mae.utils.memory)
    from mae.utils.preemption import stop_on_signals

    try:
        with stop_on_signals():  # SIGTERM / SIGUSR1: Preempted at once (deferred to a step's end in training)
            return int(module.main(args) or 0)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Preempted as err:
        print(f"preempted: {err}", file=sys.stderr)
        return PREEMPTED_EXIT
    except OSError as err:  # a file system refusal nothing above named (a read-only or unwritable folder …)
        where = err.filename if err.filename is not None else "a file operation"
        print(f"error: {where}: {err.strerror or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
