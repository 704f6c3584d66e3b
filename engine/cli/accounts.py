"""``users add|list|disable|enable|reset-password`` and ``share``."""

from __future__ import annotations

import getpass
import sys

from engine.cli.common import emit, table
from engine.errors import WorkbenchError


def add_parser(commands) -> None:
    users = commands.add_parser("users", help="accounts: add, list, disable, enable, reset a password").add_subparsers()
    add = users.add_parser("add", help="add an account; the password is read from standard input")
    add.add_argument("name")
    add.add_argument("--admin", action="store_true", help="make it an admin (the first account is one anyway)")
    add.add_argument("--json", action="store_true")
    add.set_defaults(handler=cmd_users_add, no_user=True)
    listing = users.add_parser("list", help="list accounts (admins)")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=cmd_users_list)
    for name, disabled in (("disable", True), ("enable", False)):
        command = users.add_parser(name, help=f"{name} an account (admins)")
        command.add_argument("name")
        command.set_defaults(handler=cmd_users_disable, disabled=disabled)
    reset = users.add_parser("reset-password", help="set an account's password, read from standard input")
    reset.add_argument("name")
    reset.set_defaults(handler=cmd_users_reset)
    share = commands.add_parser("share", help="share your dataset, model, run or study (with its "
                                "runs) read-only with everybody")
    share.add_argument("kind", choices=["dataset", "model", "run", "study"])
    share.add_argument("item", help="name or id")
    share.add_argument("--off", action="store_true", help="stop sharing it")
    share.set_defaults(handler=cmd_share)


def read_password(prompt: str = "Password: ") -> str:
    """From standard input, never from the command line (argv is visible to every user of the
    machine in ``ps``): typed twice without echo on a terminal, one line otherwise."""
    if sys.stdin.isatty():
        password = getpass.getpass(prompt)
        if getpass.getpass("Again: ") != password:
            raise WorkbenchError("the two passwords differ; nothing was changed")
        return password
    return sys.stdin.readline().rstrip("\r\n")


def cmd_users_add(wb, args) -> None:
    user = wb.add_user(args.name, read_password(), is_admin=args.admin)
    emit(args, user, f"added {user['name']}" + (" (admin)" if user["is_admin"] else ""))


def cmd_users_list(wb, args) -> None:
    rows = wb.list_users()
    emit(args, rows, table(rows, ["id", "name", "is_admin", "disabled", "created_at", "last_login_at"]))


def cmd_users_disable(wb, args) -> None:
    user = wb.set_user_disabled(args.name, args.disabled)
    print(f"{user['name']}: {'disabled' if user['disabled'] else 'enabled'}")


def cmd_users_reset(wb, args) -> None:
    wb.reset_password(args.name, read_password("New password: "))
    print(f"{args.name}: password changed")


def cmd_share(wb, args) -> None:
    wb.share(args.kind, args.item, not args.off)
    runs = " (with its runs)" if args.kind == "study" else ""
    print(f"{args.kind} {args.item}{runs}: {'not shared' if args.off else 'shared read-only with everybody'}")
