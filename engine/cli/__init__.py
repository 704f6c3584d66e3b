"""Headless command line: ``python -m engine ...`` (contract: docs/internals.md).

Every command exits non-zero with a one-line reason on stderr when it cannot do what was
asked. ``--json`` prints machine-readable output on stdout; progress goes to stderr.
``--debug`` (anywhere on the line) adds the traceback behind an error. ``--user NAME`` (or
``LIM_USER``) acts as that account and sees only what it may; with ``LIM_AUTH=on`` every command
but ``demo``, ``methods`` and ``users add`` needs one.

One module per command group, each building its parsers beside their handlers
(``add_parser(commands)``; a handler is ``handler(workbench, args)``, set as the parser's
default); common.py holds what they share.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from engine.cli import accounts, datasets, demo, device, models, runs, studies
from engine.cli.common import add_debug_flag, add_profile_flag, add_user_flag, fail, use_profile, workbench_for
from engine.errors import WorkbenchError

__all__ = ["build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help(sys.stderr)
        return 2
    # kill (SIGTERM) unwinds like Ctrl-C, so an import's staging and half-written folders go
    if threading.current_thread() is threading.main_thread():  # signal handlers live there only
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        if args.profile is not None:  # before the workbench: every part (the worker too) reads it
            use_profile(args.profile)
        if not getattr(args, "needs_workbench", True):
            return args.handler(None, args) or 0
        return args.handler(workbench_for(args), args) or 0
    except WorkbenchError as error:
        return fail(str(error), args.debug)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # a bug rather than a mistake of the user's: still one line
        first_line = (str(error).splitlines() or [""])[0]
        return fail(f"unexpected {type(error).__name__}: {first_line}"
                    + ("" if args.debug else " (run again with --debug for the traceback)"), args.debug)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine", description="LessIsMore Workbench engine")
    commands = parser.add_subparsers(title="commands")
    # in the order --help lists them
    demo.add_parser(commands)
    runs.add_worker_parser(commands)
    datasets.add_parser(commands)
    models.add_parser(commands)  # models, methods
    runs.add_parser(commands)  # train, runs
    studies.add_parser(commands)
    device.add_parser(commands)  # profiles, selftest
    accounts.add_parser(commands)  # users, share
    # after every command: the flags go on each of them too, before or after its name
    add_debug_flag(parser)
    add_user_flag(parser)
    add_profile_flag(parser)
    return parser
