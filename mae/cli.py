"""`mae` command line: a registry of sub-commands, each living in its own module.

Every command module defines ``add_arguments(parser)`` and ``main(args)``. Modules are imported lazily so
that ``mae --help`` and light commands stay fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from mae.errors import PREEMPTED_EXIT, Preempted, UserError
from mae.evaluations import EVALUATIONS

COMMANDS: dict[str, tuple[str, str]] = {
    "prepare-data": ("mae.data.prepare", "generate the built-in datasets or describe a real one"),
    "fit-pca": ("mae.targets", "fit the PCA target on training patches"),
    "train-tokenizer": ("mae.tokenizer", "train the discrete-token (dVAE stand-in) tokenizer"),
    "pretrain": ("mae.pretrain", "MAE pretraining"),
    **{ev.command: (ev.module, ev.help) for ev in EVALUATIONS.values()},
    "summarize": ("mae.report.summary", "collect metrics into results/summary/runs.csv"),
    "tables": ("mae.report.tables", "paper tables beside our numbers"),
    "figures": ("mae.report.figures", "paper figures"),
    "claims": ("mae.report.claims", "check the paper's claims against our runs"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="mae", description="Masked Autoencoders study pipeline")
    sub = parser.add_subparsers(dest="command", metavar="command")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser.parse_args(argv or ["--help"])
        return 2
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(COMMANDS[name][0])
    cmd_parser = argparse.ArgumentParser(prog=f"mae {name}", description=COMMANDS[name][1])
    module.add_arguments(cmd_parser)
    args = cmd_parser.parse_args(rest)
    try:
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
