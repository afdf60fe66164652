"""``fleet-worker`` (also ``llama-farm worker``): run this machine's worker."""

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from farm_protocol.errors import TopicError
from farm_runtime.broker import BrokerAuthError
from farm_runtime.entry import (
    EXIT_CONFIG,
    EXIT_CREDENTIALS,
    ConfigError,
    add_common_options,
    load_settings,
)
from farm_runtime.lifecycle import run_with_signals
from farm_runtime.logs import configure_logging
from fleet_worker.service import FleetWorker, WorkerConfigError
from fleet_worker.settings import WorkerSettings

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action",
        nargs="?",
        default="run",
        choices=["run", "doctor", "install-service", "join", "leave"],
        help="run the worker (default); join LINE: join the farm with the line its admin gave"
        " (and run as a service); leave: stop and remove it; doctor: check the broker, the"
        " credentials, Ollama and the models; install-service: run it as a systemd user unit"
        " or launchd agent",
    )
    parser.add_argument("line", nargs="?", help="join: the line `llama-farm workers add` printed")
    parser.add_argument(
        "--no-start",
        action="store_true",
        help="join, leave: write or remove the files, but neither start nor stop the service",
    )
    parser.add_argument(
        "--concurrency", type=int, default=1, help="join: jobs at once (OLLAMA_NUM_PARALLEL)"
    )
    parser.add_argument("--env-file", help="read settings from this file (default: .env)")
    parser.add_argument(
        "--no-login",
        action="store_true",
        help="doctor: do not log in to the broker (a running worker would be bumped)",
    )
    parser.add_argument(
        "--drain-grace",
        type=float,
        default=30.0,
        help="seconds running jobs get to finish on SIGTERM (default 30)",
    )


def run(args: argparse.Namespace) -> int:
    if args.action in ("join", "leave"):
        from fleet_worker import joining

        if args.action == "leave":
            env = Path(args.env_file) if args.env_file else None
            return joining.leave(home=Path.home(), env_file=env, stop=not args.no_start)
        if not args.line:
            print(
                "fleet-worker join: give the line `llama-farm workers add` printed", file=sys.stderr
            )
            return EXIT_CONFIG
        return joining.run_join(
            args.line, env_file=args.env_file, concurrency=args.concurrency, start=not args.no_start
        )
    given = {"_env_file": args.env_file} if args.env_file else {}
    if args.action == "doctor":
        from fleet_worker import doctor

        return doctor.run(given, login=not args.no_login)
    try:
        settings = load_settings(WorkerSettings, **given)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"fleet-worker: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    if args.action == "install-service":
        from fleet_worker import install_service

        return install_service.run(settings, drain_grace_s=args.drain_grace, env_file=args.env_file)
    try:
        worker = FleetWorker(settings, drain_grace_s=args.drain_grace)
    except (WorkerConfigError, TopicError) as exc:
        print(f"fleet-worker: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    failure: list[BaseException] = []

    async def main(stop: asyncio.Event) -> None:
        try:
            await worker.run(stop)
        except (BrokerAuthError, WorkerConfigError) as exc:
            failure.append(exc)

    run_with_signals(main)
    if failure and isinstance(failure[0], WorkerConfigError):
        print(f"fleet-worker: {failure[0]}", file=sys.stderr)
        return EXIT_CONFIG
    if failure:
        print(
            f"fleet-worker: {failure[0]}\nCheck FARM_WORKER_ID and FARM_API_KEY "
            "(`llama-farm workers rotate ID` issues a new key).",
            file=sys.stderr,
        )
        return EXIT_CREDENTIALS
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fleet-worker", description=__doc__)
    add_arguments(parser)
    add_common_options(parser)
    args = parser.parse_args(argv)
    configure_logging(args.log_level, args.log_format, args.log_file)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
