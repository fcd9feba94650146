"""The one error type every user-facing failure derives from, and the command-line runner both CLIs use.

A :class:`FruitsError` is a mistake the user can fix or a refusal with its reason (a bad file, a missing
bucket, a k out of range): each command line turns it into one ``Error: ...`` line and exit code 1, never
a traceback. Anything else is a bug and keeps its traceback. A publish held for the operator (nothing published: the
components would turn too far, :mod:`cloud_pca.turn`) exits with :data:`EXIT_HELD` and says HELD.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable, Mapping


EXIT_HELD = 4   # a publish held for the operator (the turn): fruits-cloud publish, ./run web refresh, the chains


class FruitsError(Exception):
    """Base of every error the commands report as one line; the message names what, where and why."""


class ContractError(FruitsError, ValueError):
    """Data that does not follow the contract; the message says file, row and column where known."""


def common_options() -> argparse.ArgumentParser:
    """``--quiet`` / ``--verbose``, accepted before or after the subcommand (a parent parser for each)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--quiet", "-q", action="store_true", default=argparse.SUPPRESS, help="no progress bars")
    p.add_argument("--verbose", "-v", action="store_true", default=argparse.SUPPRESS, help="debug logging")
    return p


def main_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quiet", "-q", action="store_true", default=False, help="no progress bars")
    parser.add_argument("--verbose", "-v", action="store_true", default=False, help="debug logging")
    return parser


def add_command(sub, name: str, *, help: str, example: str, description: str | None = None):
    """A subcommand whose help ends with an example and which takes the common options too."""
    text = (description or help[:1].upper() + help[1:] + ".") + f"\n\nexample: {example}"
    return sub.add_parser(name, help=help, description=text, parents=[common_options()],
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def run_cli(parser: argparse.ArgumentParser, commands: Mapping[str, Callable], argv: list[str] | None = None,
            *, interrupted: str = "interrupted") -> int:
    """Parse, dispatch to ``commands[args.command]`` and turn a :class:`FruitsError` into one line.

    Exit codes: what the command returns (0 done; some commands use 3 for "done, with rejects"), 1 for an
    error, 2 for a usage error, 130 when interrupted.
    """
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return commands[args.command](args)
    except FruitsError as exc:
        print(f"Error: {one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"Error: {interrupted}", file=sys.stderr)
        return 130
    except BrokenPipeError:   # the reader of the output went away (`| head`): stop quietly, as a Unix tool does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (the first line; a multi-line Java error keeps only its head)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def fetch_cli(description: str, fetch: Callable[..., object], argv: list[str] | None = None) -> int:
    """A setup command that fetches a cached artifact (``fetch(quiet=...)``) and prints its path(s).

    ``./run setup`` calls these with ``--quiet``; a :class:`FruitsError` is one line and exit code 1.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    try:
        found = fetch(quiet=args.quiet)
    except FruitsError as exc:
        print(f"Error: {one_line(exc)}", file=sys.stderr)
        return 1
    if not args.quiet:
        print("\n".join(map(str, found if isinstance(found, (list, tuple)) else [found])))
    return 0
