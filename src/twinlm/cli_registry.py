"""The one registry of `twinlm` commands: the parser, `twinlm --help` and every `twinlm NAME --help` come from it.

A command is a `Command`: its name, one-line help, example lines, a function adding its arguments and its handler.
Each themed module exposes `COMMANDS: list[Command]` and is named, with the heading its commands get in
`twinlm --help`, in `COMMAND_MODULES` below. To add a command from a new module, e.g. src/twinlm/cli_compare.py:

    from .cli_registry import Command

    def _compare_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("runs", nargs="+", help="run folders")

    def cmd_compare(args: argparse.Namespace) -> None:
        ...  # raise TwinLMError for a user mistake: main() prints it as one line and exits 2

    COMMANDS = [
        Command("compare", "compare runs side by side", examples=("twinlm compare runs/mlm runs/clm",),
                add_arguments=_compare_arguments, run=cmd_compare),
    ]

then add `"cli_compare": "compare runs"` to COMMAND_MODULES. Examples are shell lines starting `twinlm NAME`
(a trailing `# comment` is allowed); they are written once, next to their command, shown in its help, and
tests/test_cli.py parses each one with the real parser.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import textwrap
from collections.abc import Callable
from dataclasses import dataclass

from . import __version__

# Module (inside twinlm) -> heading of its commands in `twinlm --help`, in the order they are listed.
COMMAND_MODULES: dict[str, str] = {
    "cli": "pretrain, try out and convert models",
    "cli_tasks": "fine-tune and use task models",
    "cli_generate": "generate and score text",
    "cli_compare": "compare the paradigms",
    "cli_glue": "benchmark on GLUE",
    "cli_serve": "serve models over HTTP",
}

DESCRIPTION = "Masked and causal language models side by side on one Transformer backbone."
START_HERE = "twinlm quickstart      # trains a tiny MLM and CLM on Tiny Shakespeare, compares them"


@dataclass(frozen=True)
class Command:
    """One `twinlm NAME` command: its help, examples, arguments and handler."""

    name: str
    help: str  # one line, shown in `twinlm --help` and at the top of `twinlm NAME --help`
    examples: tuple[str, ...]  # shell lines starting `twinlm NAME`, shown under the command's flags
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], None]

    def __post_init__(self) -> None:
        # A wrong example is a programming error: fail when the registry loads, not when a user copies it.
        if isinstance(self.examples, str) or not self.examples:
            raise ValueError(f"command {self.name!r}: examples must be a non-empty tuple of lines")
        for line in self.examples:
            if not line.startswith(f"twinlm {self.name} "):
                raise ValueError(f"command {self.name!r}: example does not start with 'twinlm {self.name} ': {line}")

    def epilog(self) -> str:
        """The examples block printed at the end of `twinlm NAME --help`."""
        head = "example:" if len(self.examples) == 1 else "examples:"
        return "\n  ".join([head, *self.examples])


def command_groups() -> list[tuple[str, list[Command]]]:
    """Every registered command, as (heading, commands) in `twinlm --help` order."""
    groups, seen = [], set()
    for module_name, heading in COMMAND_MODULES.items():
        module = importlib.import_module(f".{module_name}", __package__)
        commands = list(module.COMMANDS)
        for command in commands:
            if command.name in seen:
                raise ValueError(f"command {command.name!r} is registered twice (again in twinlm.{module_name})")
            seen.add(command.name)
        groups.append((heading, commands))
    return groups


def commands() -> dict[str, Command]:
    """Every registered command by name."""
    return {c.name: c for _, group in command_groups() for c in group}


def _command_list(groups: list[tuple[str, list[Command]]]) -> str:
    """The grouped `NAME  help` table of `twinlm --help`, wrapped to the terminal like argparse's own text."""
    names = [c.name for _, group in groups for c in group]
    indent = 2 + max(map(len, names)) + 2
    width = max(shutil.get_terminal_size().columns - 2, 60)
    blocks = []
    for heading, group in groups:
        rows = [textwrap.fill(c.help, width, initial_indent=f"  {c.name}".ljust(indent),
                              subsequent_indent=" " * indent) for c in group]
        blocks.append("\n".join([f"{heading}:", *rows]))
    return "\n\n".join(blocks)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser: one sub-parser per registered command, each with its examples."""
    fmt = argparse.RawDescriptionHelpFormatter
    groups = command_groups()
    parser = argparse.ArgumentParser(
        prog="twinlm", formatter_class=fmt, usage="%(prog)s [-h] [--version] COMMAND ...",
        description=f"{DESCRIPTION}\n\n{_command_list(groups)}",
        epilog=f"start here:\n  {START_HERE}\n\n`twinlm COMMAND --help` lists a command's flags and examples.",
    )
    parser.add_argument("--version", action="version", version=f"twinlm {__version__}")
    # The grouped table above replaces argparse's flat, ungrouped list of sub-commands.
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", help=argparse.SUPPRESS, prog="twinlm")
    for _, group in groups:
        for command in group:
            p = sub.add_parser(command.name, description=command.help, epilog=command.epilog(), formatter_class=fmt)
            command.add_arguments(p)
    return parser
