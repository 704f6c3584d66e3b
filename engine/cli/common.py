"""What every command group shares: the workbench a command acts on, the one-line error, the
flags allowed before or after the command, and output (``--json`` or text, tables)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from typing import Any

from engine.text import printable


def workbench_for(args: argparse.Namespace):
    """The workbench as the user named by ``--user`` / ``LIM_USER`` sees it; the local owner
    without one when auth is off. The command line is for people with access to the data home
    (they could read the database file itself), so naming an account is enough: no password."""
    from engine import Workbench
    from engine.errors import AuthError
    from engine.settings import load_config

    workbench = Workbench()
    name = getattr(args, "user", None) or os.environ.get("LIM_USER", "").strip()
    if name:
        return workbench.for_user(name)
    if load_config().auth == "on" and not getattr(args, "no_user", False):
        raise AuthError("with LIM_AUTH=on the command line acts as an account: pass --user NAME "
                        "or set LIM_USER (python -m engine users add NAME makes one)")
    return workbench


def fail(message: str, debug: bool, details: str | None = None) -> int:
    """One line on stderr (after the traceback, with ``--debug``); exit status 1."""
    if debug:
        print(traceback.format_exc() if details is None else details, file=sys.stderr, end="")
    # names, paths and transcripts come from outside: never send their escapes to a terminal
    print(f"error: {printable(message)}", file=sys.stderr)
    return 1


def add_global_flag(parser: argparse.ArgumentParser, flag: str, default: Any, top: bool = True,
                    **kwargs: Any) -> None:
    """``flag`` before or after the command: sub-commands leave the top's value alone unless
    given (``SUPPRESS``)."""
    parser.add_argument(flag, default=default if top else argparse.SUPPRESS, **kwargs)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in dict.fromkeys(action.choices.values()):
                add_global_flag(command, flag, default, top=False, **kwargs)


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    add_global_flag(parser, "--debug", False, action="store_true",
                    help="show the traceback behind an error")


def add_user_flag(parser: argparse.ArgumentParser) -> None:
    add_global_flag(parser, "--user", None, metavar="NAME",
                    help="act as this account (default: LIM_USER; needed with LIM_AUTH=on)")


def add_profile_flag(parser: argparse.ArgumentParser) -> None:
    add_global_flag(parser, "--profile", None, metavar="NAME",
                    help="device profile for this command (sets LIM_PROFILE): its defaults for "
                         "new runs and, on a CUDA GPU, its memory cap; auto: the Jetson board "
                         "this runs on; see `profiles list`")


def use_profile(name: str) -> None:
    """Make ``name`` the active device profile of this process (checked first)."""
    import os

    from engine.training.profiles import PROFILE_ENV, get_profile

    if name not in ("auto", "none"):
        get_profile(name)
    os.environ[PROFILE_ENV] = name


def emit(args: argparse.Namespace, data: Any, text: str) -> None:
    # json.dumps escapes control characters itself; plain text goes through printable()
    print(json.dumps(data, indent=2, default=str) if getattr(args, "json", False) else printable(text))


def table(rows: list[dict], columns: list[str]) -> str:
    if not rows:
        return "(none)"
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns)]
    lines += ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)
