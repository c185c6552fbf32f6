"""``python -m server`` runs the service; ``python -m server admin ...`` runs an admin task."""

from __future__ import annotations

import argparse
import os
import sys

from server import settings as settings_mod


def _named_gateway(argv: list[str]) -> str | None:
    """The gateway named by ``--gateway`` or ``CASHOUT_GATEWAY``, before parsing, so a
    gateway loaded by dotted path gets flags for its own options."""
    for i, arg in enumerate(argv):
        if arg == "--gateway" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--gateway="):
            return arg.split("=", 1)[1]
    return os.environ.get("CASHOUT_GATEWAY")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    settings_mod.add_arguments(common, _named_gateway(sys.argv[1:] if argv is None else argv))
    parser = argparse.ArgumentParser(
        prog="python -m server",
        parents=[common],
        description="Cashout service for rewards programs on the EBS card switch. Every flag "
        "can also be set by the CASHOUT_* variable named in its help.",
    )
    commands = parser.add_subparsers(dest="command", metavar="{serve,admin}")
    commands.add_parser("serve", parents=[common], help="run the HTTP service (the default)")
    admin = commands.add_parser("admin", parents=[common], help="operator tasks")
    tasks = admin.add_subparsers(dest="task", metavar="TASK", required=True)
    from server.admin_cli import add_tasks

    add_tasks(tasks, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser(argv).parse_args(argv)
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
    if settings.processes > 1:
        _share_metrics_between_processes(settings)
    if getattr(args, "command", None) == "admin":
        from server import admin

        return admin.run(args.task, settings, args)
    from server import main as server_main

    return server_main.main(settings)


def _share_metrics_between_processes(settings: settings_mod.Settings) -> None:
    """prometheus_client decides how to store values when it is first imported, so the
    multiprocess directory must be set before anything imports it."""
    import os
    import shutil
    from pathlib import Path

    path = Path(settings.data_dir) / "metrics"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)


if __name__ == "__main__":
    sys.exit(main())
