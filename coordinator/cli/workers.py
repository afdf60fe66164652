"""``llama-farm workers add|list|rotate|revoke``: worker administration from a shell.

Uses the same store as the coordinator, directly on its database. A new key is printed
once and never stored in clear.
"""

import argparse
import asyncio
import datetime
import sys

from coordinator.db.database import NoDatabase, open_for_admin
from coordinator.errors import Conflict, NotFound
from coordinator.keys.hashing import hash_key
from coordinator.mqtt.accounts import BrokerAdminError
from coordinator.mqtt.provisioning import Provisioner
from coordinator.settings import CoordinatorSettings
from coordinator.workers.enrolment import Enrolments
from coordinator.workers.registry import WorkerInfo, WorkerRegistry
from farm_protocol.errors import TopicError
from farm_protocol.joining import JoinLine


def run(args: argparse.Namespace, settings: CoordinatorSettings) -> int:
    try:
        db = open_for_admin(settings.database_url, create=args.create)
    except NoDatabase as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    store = WorkerRegistry(
        db, grace_s=settings.worker_grace_s, key_secret=settings.key_secret.get_secret_value()
    )
    provisioner = Provisioner(settings)
    joining = Joining(settings, Enrolments(db, settings.enrol_ttl_s))
    try:
        with db.connection_context():
            return _dispatch(args, store, provisioner, joining)
    except (NotFound, Conflict, TopicError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BrokerAdminError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        db.close()


def _dispatch(
    args: argparse.Namespace, store: WorkerRegistry, provisioner: Provisioner, joining: "Joining"
) -> int:
    """The same steps, in the same order, as the admin API."""
    if args.action == "add":
        info, key = store.add(args.name, args.worker_id)
        _broker(asyncio.run(provisioner.worker_added(info.id, key)))
        if joining.ready() and not args.show_key:
            _print_join(info.id, joining.line(info.id))
        else:
            _print_key(info.id, key)
            if not joining.ready():
                print(joining.missing(), file=sys.stderr)
    elif args.action == "enrol":
        store.get(args.worker_id)
        if not joining.ready():
            print(f"error: {joining.missing()}", file=sys.stderr)
            return 2
        _print_join(args.worker_id, joining.line(args.worker_id))
    elif args.action == "rotate":
        key, nonce = store.new_key_for(args.worker_id)
        _broker(asyncio.run(provisioner.worker_rotated(args.worker_id, key)))
        store.set_key(args.worker_id, key_hash=hash_key(key), nonce=nonce)
        _print_key(args.worker_id, key)
    elif args.action == "revoke":
        store.revoke(args.worker_id)
        _broker(asyncio.run(provisioner.worker_revoked(args.worker_id)))
        print(f"worker {args.worker_id} revoked")
    else:
        _print_table(store.list_workers())
    return 0


def _broker(outcome: str) -> None:
    if outcome == "not managed":
        print(
            "note: the broker's accounts are not managed here (FARM_BROKER_ADMIN_USERNAME is "
            "unset); see docs/OPERATIONS.md",
            file=sys.stderr,
        )


class Joining:
    """Join lines (farm_protocol.joining) for new workers, when the farm's public
    addresses are known."""

    def __init__(self, settings: CoordinatorSettings, enrolments: Enrolments) -> None:
        self.settings = settings
        self.enrolments = enrolments

    def ready(self) -> bool:
        return bool(self.settings.public_url and self.settings.public_broker_url)

    def missing(self) -> str:
        return (
            "note: set FARM_PUBLIC_URL (the chat's address, e.g. https://chat.example.org) and"
            " FARM_PUBLIC_BROKER_URL (the broker's for workers, e.g."
            " mqtts://farm.example.org:8883) in the coordinator's settings, and this prints a"
            " one-line `fleet-worker join` instead of the key"
        )

    def line(self, worker_id: str) -> str:
        token = self.enrolments.issue(worker_id)
        s = self.settings
        return JoinLine(broker=s.public_broker_url, farm=s.public_url, token=token).encode()


def _print_join(worker_id: str, line: str) -> None:
    print(f"worker id: {worker_id}")
    print("Give this line to the machine's owner; on that machine, with Ollama installed:")
    print(f"  fleet-worker join {line}")
    print("It works once, and expires (FARM_ENROL_TTL_S); the key it gets is shown to no one.")


def _print_key(worker_id: str, key: str) -> None:
    print(f"worker id: {worker_id}")
    print(f"api key:   {key}")
    print("Store the key now: it is shown only once. On the worker machine set")
    print(f"  FARM_WORKER_ID={worker_id}")
    print(f"  FARM_API_KEY={key}")


def _print_table(workers: list[WorkerInfo]) -> None:
    print(f"{'ID':<24} {'NAME':<20} {'STATE':<12} {'JOBS':>4}  {'LAST SEEN':<19}  MODELS")
    for w in workers:
        state = "revoked" if w.revoked_at else ("online" if w.online else w.state)
        seen = (
            datetime.datetime.fromtimestamp(w.last_seen).strftime("%Y-%m-%d %H:%M:%S")
            if w.last_seen
            else "never"
        )
        models = ", ".join(w.models)
        print(f"{w.id:<24} {w.name[:20]:<20} {state:<12} {w.active_jobs:>4}  {seen:<19}  {models}")
