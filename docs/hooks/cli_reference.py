"""mkdocs hook: the CLI reference page, generated from the real parsers of :mod:`mae.cli`.

``docs/cli.md`` holds the hand-written introduction and the line ``<!-- mae-cli-reference -->``; at build time
this hook replaces that line with the ``--help`` text of ``mae`` and of every sub-command (and of each
sub-command's own sub-commands, such as ``mae bench pretrain``), built by :func:`mae.cli.build_parser` and
:func:`mae.cli.command_parser` — the parsers the command line uses. A command added to :data:`mae.cli.COMMANDS`
appears here without an edit; a page without the marker fails the build.
"""

from __future__ import annotations

import argparse
import os

from mkdocs.exceptions import PluginError

PAGE = "cli.md"
MARKER = "<!-- mae-cli-reference -->"
WIDTH = "100"  # argparse wraps help text at $COLUMNS - 2; fixed, so the page does not depend on the terminal


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    """The sub-parsers of ``parser`` (``mae bench pretrain``, ``mae bench stages``), in declaration order."""
    found = []
    for action in parser._actions:  # argparse keeps no public list of its sub-parsers
        if isinstance(action, argparse._SubParsersAction):
            found += list(action.choices.items())
    return found


def _block(title: str, level: int, summary: str, parser: argparse.ArgumentParser) -> list[str]:
    lines = [f"{'#' * level} `{title}`", ""]
    if summary:
        lines += [summary, ""]
    return lines + ["```text", parser.format_help().rstrip(), "```", ""]


def render() -> str:
    """Markdown for every command of ``mae``: a section per command with its ``--help`` text."""
    from mae import cli

    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        lines = _block("mae", 2, "", cli.build_parser())
        for name, (_, summary) in cli.COMMANDS.items():
            parser = cli.command_parser(name)
            lines += _block(f"mae {name}", 2, summary[:1].upper() + summary[1:] + ".", parser)
            for sub_name, sub_parser in _subcommands(parser):
                lines += _block(f"mae {name} {sub_name}", 3, "", sub_parser)
    finally:
        if before is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = before
    return "\n".join(lines)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri != PAGE:
        return markdown
    if MARKER not in markdown:
        raise PluginError(f"docs/{PAGE} lost the line {MARKER} that the CLI reference replaces")
    return markdown.replace(MARKER, render())
