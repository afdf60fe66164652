"""Broker accounts, provisioned by the coordinator over Mosquitto's dynamic-security API.

Every worker gets a client (username = worker id, password = its API key, client id bound
to ``worker-{id}``) and a role of its own with literal topics (:mod:`farm_protocol.acl`).
Rotating a key sets the new password, which disconnects the old session at once; revoking
deletes the client, which disconnects it at once. The database is the source of truth:
:meth:`BrokerAccounts.reconcile` creates what the broker lacks and deletes worker
accounts the database no longer knows, so a broker rebuilt from scratch is provisioned
again (keys are re-derived from ``FARM_KEY_SECRET``, see :mod:`coordinator.keys.hashing`).
"""

import asyncio
import json
import logging
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

import aiomqtt

from coordinator.errors import CoordinatorError
from farm_protocol import acl, topics
from farm_runtime.broker import BrokerSettings, make_client
from farm_runtime.client_calls import publish, subscribe

log = logging.getLogger(__name__)

CONTROL = "$CONTROL/dynamic-security/v1"


class BrokerAdminError(CoordinatorError):
    """The broker could not be reached or refused an account change."""


def role_acls(grants: list[acl.Grant]) -> list[dict[str, Any]]:
    """Grants as dynsec ACLs. A subscription grant is a pattern (the account may ask for
    it or any narrower filter: a webapp subscribes to one job's chunks at a time), except
    a shared subscription, which dynamic security on 2.0.11 matches only by its name."""
    acls: list[dict[str, Any]] = []
    for grant in grants:
        if grant.action is acl.Action.PUBLISH:
            kind = "publishClientSend"
        elif grant.filter.startswith(topics.SHARE_PREFIX):
            kind = "subscribeLiteral"
        else:
            kind = "subscribePattern"
        acls.append({"acltype": kind, "topic": grant.filter, "allow": True, "priority": 0})
    return acls


class Dynsec:
    """One batch of dynamic-security commands per call, on a short admin connection."""

    def __init__(self, settings: BrokerSettings, timeout_s: float = 10.0) -> None:
        self.settings = settings
        self.timeout_s = timeout_s

    async def run(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not commands:
            return []
        tagged = [{**c, "correlationData": str(i)} for i, c in enumerate(commands)]
        identifier = f"farm-provisioner-{uuid.uuid4().hex[:8]}"
        try:
            async with make_client(self.settings, identifier=identifier) as client:
                await subscribe(client, f"{CONTROL}/response", qos=1)
                await publish(client, CONTROL, json.dumps({"commands": tagged}), qos=1)
                async with asyncio.timeout(self.timeout_s):
                    async for message in client.messages:
                        payload = message.payload
                        if not isinstance(payload, bytes | str):
                            continue
                        responses: list[dict[str, Any]] = json.loads(payload)["responses"]
                        return sorted(responses, key=lambda r: int(r.get("correlationData", 0)))
        except TimeoutError as exc:
            raise BrokerAdminError(
                f"the broker at {self.settings.url} did not answer the dynamic-security API"
                f" within {self.timeout_s:g} s: is the dynamic security plugin loaded"
                " (mosquitto.conf's plugin line), and is this its admin account?"
            ) from exc
        except aiomqtt.MqttError as exc:
            reason = str(exc) or type(exc).__name__
            raise BrokerAdminError(
                f"the broker at {self.settings.url} refused or dropped the admin connection"
                f" ({reason}): check FARM_BROKER__URL and the admin account"
            ) from exc
        except (ValueError, KeyError) as exc:
            raise BrokerAdminError(
                f"the broker's dynamic-security API answered what it should not: {exc!r}"
            ) from exc
        raise BrokerAdminError("the broker closed the admin connection without replying")

    async def check(
        self, commands: list[dict[str, Any]], *, tolerate: tuple[str, ...] = ()
    ) -> None:
        """Run commands; raise on any error except those containing a ``tolerate`` text."""
        for command, reply in zip(commands, await self.run(commands), strict=False):
            error = reply.get("error")
            if error and not any(t in str(error) for t in tolerate):
                raise BrokerAdminError(f"{command['command']} refused by the broker: {error}")

    async def clients(self) -> dict[str, list[str]]:
        """Every client on the broker, with its role names."""
        reply = (await self.run([{"command": "listClients", "verbose": True}]))[0]
        if reply.get("error"):
            raise BrokerAdminError(f"listClients refused by the broker: {reply['error']}")
        return {
            c["username"]: [r["rolename"] for r in c.get("roles", [])]
            for c in reply.get("data", {}).get("clients", [])
        }

    async def roles(self) -> set[str]:
        reply = (await self.run([{"command": "listRoles", "verbose": False}]))[0]
        if reply.get("error"):
            raise BrokerAdminError(f"listRoles refused by the broker: {reply['error']}")
        return set(reply.get("data", {}).get("roles", []))


def _create_role(name: str, grants: list[acl.Grant]) -> dict[str, Any]:
    return {"command": "createRole", "rolename": name, "acls": role_acls(grants)}


def _grants_added(roles: set[str], workers: dict[str, str | None]) -> list[dict[str, Any]]:
    """Every rule of the existing service and worker roles, added again (the broker
    refuses those it has, "already exists"): roles made by an earlier version get what
    this one needs (protocol v2's progress topics, the coordinators' shared
    subscriptions) without deleting and re-creating them."""
    grants = {name: acl.SERVICE_GRANTS[name] for name in acl.SERVICES if name in roles}
    for worker_id in workers:
        if acl.worker_role(worker_id) in roles:
            grants[acl.worker_role(worker_id)] = acl.worker_grants(worker_id)
    return [
        {"command": "addRoleACL", "rolename": role, **rule}
        for role, granted in grants.items()
        for rule in role_acls(granted)
    ]


def _create_worker(worker_id: str, password: str) -> dict[str, Any]:
    return {
        "command": "createClient",
        "username": worker_id,
        "password": password,
        "clientid": acl.worker_client_id(worker_id),
        "roles": [{"rolename": acl.worker_role(worker_id), "priority": 0}],
    }


@dataclass(frozen=True, slots=True)
class ReconcileReport:
    created: list[str]
    deleted: list[str]
    unrecoverable: list[str]  # in the database, missing on the broker, key not derivable


class BrokerAccounts:
    def __init__(self, dynsec: Dynsec) -> None:
        self.dynsec = dynsec
        self._grants_brought_up = False  # the existing roles' rules, once per process

    async def add_worker(self, worker_id: str, password: str) -> None:
        role = acl.worker_role(worker_id)
        await self.dynsec.check(
            [
                {"command": "deleteClient", "username": worker_id},
                {"command": "deleteRole", "rolename": role},
                _create_role(role, acl.worker_grants(worker_id)),
                _create_worker(worker_id, password),
            ],
            tolerate=("not found",),
        )
        log.info("broker account of worker %s created", worker_id)

    async def rotate_worker(self, worker_id: str, password: str) -> None:
        """New password; the broker disconnects the old session at once."""
        replies = await self.dynsec.run(
            [{"command": "setClientPassword", "username": worker_id, "password": password}]
        )
        if replies and "not found" in str(replies[0].get("error", "")):
            await self.add_worker(worker_id, password)
            return
        if replies and replies[0].get("error"):
            raise BrokerAdminError(f"setClientPassword refused: {replies[0]['error']}")
        log.info("broker password of worker %s rotated; old sessions disconnected", worker_id)

    async def revoke_worker(self, worker_id: str) -> None:
        """Delete the account; the broker disconnects it at once."""
        await self.dynsec.check(
            [
                {"command": "deleteClient", "username": worker_id},
                {"command": "deleteRole", "rolename": acl.worker_role(worker_id)},
            ],
            tolerate=("not found",),
        )
        log.info("broker account of worker %s deleted", worker_id)

    async def setup_services(self, passwords: dict[str, str]) -> dict[str, str]:
        """Roles and clients of the service accounts. A service with no password given
        gets a new random one. Returns every service's password."""
        chosen = {name: passwords.get(name) or secrets.token_urlsafe(24) for name in acl.SERVICES}
        commands: list[dict[str, Any]] = []
        for name in acl.SERVICES:
            commands += [
                {"command": "deleteClient", "username": name},
                {"command": "deleteRole", "rolename": name},
                _create_role(name, acl.SERVICE_GRANTS[name]),
                {
                    "command": "createClient",
                    "username": name,
                    "password": chosen[name],
                    "roles": [{"rolename": name, "priority": 0}],
                },
            ]
        await self.dynsec.check(commands, tolerate=("not found",))
        return chosen

    async def reconcile(
        self, workers: dict[str, str | None], coordinator_password: str | None = None
    ) -> ReconcileReport:
        """Make the broker's worker accounts match ``workers`` (active worker id -> its
        key, or None when it cannot be re-derived). Existing accounts are left alone (a
        password cannot be read back, and resetting it would disconnect the worker).
        Missing service roles are created, and the coordinator's own account when its
        password is given; a missing webapp or observer account is reported."""
        on_broker = await self.dynsec.clients()
        roles = await self.dynsec.roles()
        commands: list[dict[str, Any]] = []
        created, unrecoverable = [], []
        for name in acl.SERVICES:
            if name not in roles:
                commands.append(_create_role(name, acl.SERVICE_GRANTS[name]))
        if not self._grants_brought_up:
            commands += _grants_added(roles, workers)
        if acl.COORDINATOR not in on_broker and coordinator_password:
            commands.append(
                {
                    "command": "createClient",
                    "username": acl.COORDINATOR,
                    "password": coordinator_password,
                    "roles": [{"rolename": acl.COORDINATOR, "priority": 0}],
                }
            )
            created.append(acl.COORDINATOR)
        for name in (acl.WEBAPP, acl.OBSERVER):
            if name not in on_broker:
                log.warning("the broker has no %s account: run `llama-farm broker setup`", name)
        for worker_id, password in sorted(workers.items()):
            if worker_id in on_broker:
                continue
            if password is None:
                unrecoverable.append(worker_id)
                continue
            role = acl.worker_role(worker_id)
            if role not in roles:
                commands.append(_create_role(role, acl.worker_grants(worker_id)))
            commands.append(_create_worker(worker_id, password))
            created.append(worker_id)
        deleted = [
            username
            for username, their_roles in sorted(on_broker.items())
            if acl.worker_role(username) in their_roles and username not in workers
        ]
        for username in deleted:
            commands += [
                {"command": "deleteClient", "username": username},
                {"command": "deleteRole", "rolename": acl.worker_role(username)},
            ]
        await self.dynsec.check(commands, tolerate=("already exists", "not found"))
        self._grants_brought_up = True
        if created or deleted:
            log.info("broker reconciled: created %s, deleted %s", created, deleted)
        for worker_id in unrecoverable:
            log.warning(
                "worker %s has no broker account and its key cannot be re-derived "
                "(no FARM_KEY_SECRET when it was issued): rotate its key",
                worker_id,
            )
        return ReconcileReport(created, deleted, unrecoverable)
