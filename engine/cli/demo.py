"""``demo``: the embedded demo datasets and model presets."""

from __future__ import annotations

from engine.cli.common import emit


def add_parser(commands) -> None:
    demo = commands.add_parser("demo", help="add the embedded demo datasets and model presets")
    demo.add_argument("--json", action="store_true")
    demo.set_defaults(handler=cmd_demo, no_user=True)


def cmd_demo(wb, args) -> None:
    added = wb.install_demo()
    emit(args, added, f"demo ready: added datasets {added['datasets'] or 'none'}, "
                      f"models {added['models'] or 'none'}")
