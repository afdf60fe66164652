"""``llama-farm``: one command for every part of the farm.

Each subcommand imports only what it needs, so ``llama-farm worker`` runs on a machine
that installed only ``llama-farm[worker]``.
"""

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from farm_runtime.entry import EXIT_CONFIG, ConfigError, add_common_options, load_settings
from farm_runtime.lifecycle import run_with_signals
from farm_runtime.logs import configure_logging

if TYPE_CHECKING:
    from coordinator.settings import CoordinatorSettings


def _coordinator(args: argparse.Namespace) -> int:
    from coordinator.service import Coordinator
    from coordinator.settings import CoordinatorSettings

    settings = load_settings(CoordinatorSettings)
    if not settings.service_token.get_secret_value():
        print(
            "llama-farm coordinator: set FARM_SERVICE_TOKEN (shared with the webapp)",
            file=sys.stderr,
        )
        return EXIT_CONFIG

    async def main(stop: asyncio.Event) -> None:
        await Coordinator(settings).run(stop)

    run_with_signals(main)
    return 0


def _webapp(args: argparse.Namespace) -> int:
    from webapp.service import Webapp
    from webapp.settings import WebappSettings

    settings = load_settings(WebappSettings)

    async def main(stop: asyncio.Event) -> None:
        await Webapp(settings).run(stop)

    run_with_signals(main)
    return 0


def _worker(args: argparse.Namespace) -> int:
    from fleet_worker import cli

    return cli.run(args)


DEV_DATABASE = Path(".farm") / "dev.sqlite3"  # where `make run` (llama-farm dev) keeps it


def _admin_settings(args: argparse.Namespace, *, database: bool = True) -> "CoordinatorSettings":
    """The coordinator's settings for a command that works on its database or broker:
    from ``--env-file`` (the coordinator's own, e.g. /etc/llama-farm/coordinator.env) and
    the environment. With no database configured and a dev farm's database here, that one:
    a key made beside `make run` then works on it. Says which database it uses."""
    from coordinator.settings import CoordinatorSettings

    env_file = getattr(args, "env_file", None)
    if env_file and not Path(env_file).is_file():
        raise ConfigError([f"--env-file {env_file}: no such file"])
    settings = load_settings(CoordinatorSettings, **({"_env_file": env_file} if env_file else {}))
    if not database:
        return settings
    if "database_url" not in settings.model_fields_set and DEV_DATABASE.exists():
        url = f"sqlite:///{DEV_DATABASE}"
        settings = settings.model_copy(update={"database_url": url})
        print(f"database: {url} (the dev farm's; set FARM_DATABASE_URL for another)")
    else:
        print(f"database: {_without_password(settings.database_url)}")
    return settings


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))


def _workers(args: argparse.Namespace) -> int:
    from coordinator.cli import workers as workers_admin

    return workers_admin.run(args, _admin_settings(args))


def _api_keys(args: argparse.Namespace) -> int:
    from coordinator.cli import api_keys as api_keys_cli

    return api_keys_cli.run(args, _admin_settings(args))


def _broker(args: argparse.Namespace) -> int:
    from coordinator.cli import broker as broker_cli

    return broker_cli.run(args, _admin_settings(args, database=False))


def _sim(args: argparse.Namespace) -> int:
    from farm_runtime.http_serving import serve_app
    from llama_farm.ollama_sim.app import create_sim_app
    from llama_farm.ollama_sim.settings import SimSettings

    overrides = {
        k: v for k, v in vars(args).items() if k in SimSettings.model_fields and v is not None
    }
    settings = load_settings(SimSettings, **overrides)
    print(
        f"Ollama simulator on http://{settings.host}:{settings.port} "
        f"(reply={settings.reply}, {settings.tokens_per_s} tokens/s)",
        flush=True,
    )

    async def main(stop: asyncio.Event) -> None:
        await serve_app(create_sim_app(settings), settings.host, settings.port, stop)

    run_with_signals(main)
    return 0


def _dev(args: argparse.Namespace) -> int:
    from llama_farm.dev import DevOptions, run_dev

    options = DevOptions(
        port=args.port,
        llm=args.llm,
        data_dir=args.data_dir,
        broker_port=args.broker_port,
        host=args.host,
    )
    return run_dev(options)


def _admin_options(parser: argparse.ArgumentParser, *, create: bool = True) -> None:
    parser.add_argument(
        "--env-file",
        help="the coordinator's settings file (e.g. /etc/llama-farm/coordinator.env)",
    )
    if create:
        parser.add_argument(
            "--create",
            action="store_true",
            help="make the database if it does not exist (never done silently)",
        )


def _workers_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    add = sub.add_parser("add", help="register a worker and print its key (once)")
    add.add_argument("--name", required=True, help='a human name, e.g. "laptop A"')
    add.add_argument("--id", dest="worker_id", help="the worker id (default: from the name)")
    add.add_argument(
        "--show-key",
        action="store_true",
        help="print the key (a manual setup) instead of a `fleet-worker join` line",
    )
    enrol = sub.add_parser("enrol", help="a new one-time `fleet-worker join` line for a worker")
    enrol.add_argument("worker_id")
    listed = sub.add_parser("list", help="list workers")
    rotate = sub.add_parser("rotate", help="issue a new key; the old one stops working")
    rotate.add_argument("worker_id")
    revoke = sub.add_parser("revoke", help="revoke a worker for good")
    revoke.add_argument("worker_id")
    for action in (add, enrol, listed, rotate, revoke):
        _admin_options(action)


def build_parser() -> argparse.ArgumentParser:
    from fleet_worker import cli as worker_cli

    parser = argparse.ArgumentParser(prog="llama-farm", description=__doc__)
    add_common_options(parser)
    sub = parser.add_subparsers(dest="command", required=True)

    dev = sub.add_parser("dev", help="the whole farm in one process (embedded broker, SQLite)")
    dev.add_argument("--port", type=int, default=8000, help="chat web port (default 8000)")
    dev.add_argument("--host", default="127.0.0.1", help="chat web address (default 127.0.0.1)")
    dev.add_argument(
        "--llm",
        choices=["auto", "sim", "ollama"],
        default="auto",
        help="auto: Ollama if it answers at OLLAMA_HOST, else the simulator",
    )
    dev.add_argument("--data-dir", default=".farm", help="where the SQLite file lives")
    dev.add_argument("--broker-port", type=int, default=0, help="embedded broker port (0: free)")
    dev.set_defaults(func=_dev)

    sub.add_parser("coordinator", help="run the coordinator").set_defaults(func=_coordinator)
    sub.add_parser("webapp", help="run the chat webapp").set_defaults(func=_webapp)
    worker = sub.add_parser("worker", help="run a fleet worker (same as fleet-worker)")
    worker_cli.add_arguments(worker)
    worker.set_defaults(func=_worker)

    workers = sub.add_parser("workers", help="add, enrol, list, rotate or revoke workers")
    _workers_arguments(workers)
    workers.set_defaults(func=_workers)

    keys = sub.add_parser("api-keys", help="keys for the OpenAI-compatible API")
    keys_sub = keys.add_subparsers(dest="action", required=True)
    add_key = keys_sub.add_parser("add", help="make a key and print it (once)")
    add_key.add_argument("--name", required=True)
    add_key.add_argument("--max-concurrent", type=int, default=4, help="replies at once")
    list_keys = keys_sub.add_parser("list", help="list keys")
    revoke_key = keys_sub.add_parser("revoke", help="revoke a key for good")
    revoke_key.add_argument("key_id")
    for action in (add_key, list_keys, revoke_key):
        _admin_options(action)
    keys.set_defaults(func=_api_keys)
    broker = sub.add_parser("broker", help="broker service accounts (Mosquitto dynsec)")
    broker_sub = broker.add_subparsers(dest="action", required=True)
    setup = broker_sub.add_parser(
        "setup", help="create the coordinator, webapp and observer accounts; print passwords"
    )
    _admin_options(setup, create=False)
    broker.set_defaults(func=_broker)
    sim = sub.add_parser("sim-ollama", help="run the Ollama-API-compatible simulator")
    sim.add_argument("--host")
    sim.add_argument("--port", type=int)
    sim.add_argument("--reply", choices=["lorem", "echo"])
    sim.add_argument("--tokens-per-s", dest="tokens_per_s", type=float)
    sim.add_argument("--ttft-ms", dest="ttft_ms", type=float)
    sim.add_argument("--reply-tokens", dest="reply_tokens", type=int)
    sim.add_argument("--fault", choices=["none", "http_error", "error_mid_stream", "hang"])
    sim.set_defaults(func=_sim)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level, args.log_format, args.log_file)
    try:
        result: int = args.func(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"llama-farm {args.command}: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    return result


if __name__ == "__main__":
    sys.exit(main())
