"""``models list|register`` and ``methods list``."""

from __future__ import annotations

from engine.cli.common import emit, table


def add_parser(commands) -> None:
    models = commands.add_parser("models", help="list or register models").add_subparsers()
    listing = models.add_parser("list", help="list models")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=cmd_models_list)
    register = models.add_parser("register", help="register a transformers folder, an installed model "
                                 "package, a hub id, or a CTranslate2 Whisper folder / part package / "
                                 ".whl (converted to transformers once)")
    register.add_argument("source")
    register.add_argument("--name", required=True)
    register.add_argument("--json", action="store_true")
    register.set_defaults(handler=cmd_models_register)

    methods = commands.add_parser("methods", help="list PEFT methods").add_subparsers()
    listing = methods.add_parser("list", help="list methods and their settings")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=cmd_methods_list, no_user=True)


def cmd_models_list(wb, args) -> None:
    rows = wb.list_models()
    emit(args, rows, table(rows, ["id", "name", "family", "tasks", "is_preset", "num_parameters"]))


def cmd_models_register(wb, args) -> None:
    model = wb.register_model(args.source, args.name)
    emit(args, model, f"registered {model['name']} ({model['family']})"
                      + (f": {model['note']}" if model.get("note") else ""))


def cmd_methods_list(wb, args) -> None:
    rows = wb.list_methods()
    emit(args, rows, table(rows, ["name", "source", "help"]))
