"""``profiles list`` (device profiles) and ``selftest`` (are the 4-bit kernels usable here?)."""

from __future__ import annotations

from engine.cli.common import emit


def add_parser(commands) -> None:
    profiles = commands.add_parser("profiles", help="device profiles (Jetson boards, laptop, "
                                   "server)").add_subparsers()
    listing = profiles.add_parser("list", help="every profile: memory for training and the "
                                  "defaults it chooses (* marks the active one)")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=cmd_profiles_list, no_user=True)
    selftest = commands.add_parser("selftest", help="one 4-bit (NF4) matmul through bitsandbytes "
                                   "on the GPU (the CPU without one): are the kernels usable here?")
    selftest.add_argument("--require-gpu", action="store_true",
                          help="fail when no CUDA device is visible (the Jetson image does)")
    selftest.add_argument("--json", action="store_true")
    selftest.set_defaults(handler=cmd_selftest, needs_workbench=False)


def cmd_profiles_list(wb, args) -> None:
    active = wb.device_profile()
    rows = [{**row, "active": bool(active and active["name"] == row["name"])}
            for row in wb.device_profiles()]
    lines = [f"{'*' if row['active'] else ' '} {row['name']}: "
             + (f"{row['training_gib']:g} GiB for training" if row["training_gib"] else "no memory limit")
             + "; defaults " + ", ".join(f"{k}={v}" for k, v in row["defaults"].items())
             for row in rows]
    emit(args, rows, "\n".join(lines))


def cmd_selftest(_wb, args) -> None:
    from engine.selftest import run_selftest

    report = run_selftest(require_gpu=args.require_gpu)
    emit(args, report, f"selftest passed: 4-bit NF4 matmul on {report['device']} "
                       f"({report['device_name']}), bitsandbytes {report['bitsandbytes']}, "
                       f"torch {report['torch']}, max error {report['max_error']:.2e}")
