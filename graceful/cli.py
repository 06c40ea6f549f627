"""The ``graceful`` command line."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from . import __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="graceful",
        description="Restart, upgrade or move a server to new code without failing a request.",
    )
    parser.add_argument("--version", action="version", version=f"graceful {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    return int(args.func(args) or 0)
