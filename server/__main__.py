"""``python -m server`` runs the service; ``python -m server admin ...`` runs an admin task."""

from __future__ import annotations

import argparse
import sys

from server import settings as settings_mod


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    settings_mod.add_arguments(common)
    parser = argparse.ArgumentParser(
        prog="python -m server", parents=[common],
        description="Cashout service for rewards programs on the EBS card switch. Every flag "
                    "can also be set by the CASHOUT_* variable named in its help.")
    commands = parser.add_subparsers(dest="command", metavar="{serve,admin}")
    commands.add_parser("serve", parents=[common], help="run the HTTP service (the default)")
    admin = commands.add_parser("admin", parents=[common], help="operator tasks")
    tasks = admin.add_subparsers(dest="task", metavar="TASK", required=True)
    tasks.add_parser("rotate-keys", parents=[common],
                     help="re-encrypt every stored secret to the first key of CASHOUT_KEYS")
    tasks.add_parser("new-key", parents=[common],
                     help="print a fresh kid:base64key entry for CASHOUT_KEYS")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "command", None) == "admin" and args.task == "new-key":
        from server.crypto import KeyRing

        print(KeyRing.new_entry())
        return 0
    try:
        settings = settings_mod.load(vars(args))
    except settings_mod.SettingsError as exc:
        for problem in exc.problems:
            print(f"cashout: {problem}", file=sys.stderr)
        return 2
    if getattr(args, "command", None) == "admin":
        from server import admin

        return admin.run(args.task, settings)
    from server import main as server_main

    return server_main.main(settings)


if __name__ == "__main__":
    sys.exit(main())
