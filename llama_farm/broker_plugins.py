"""The embedded (dev) broker checks the same keys and topic rules as Mosquitto does in
production, so a worker that works against one works against the other.

``FarmAuthPlugin``: a worker logs in with its id and API key, checked against the
coordinator's database (the key's hash, not revoked), with its client id bound to
``worker-{id}``; the service accounts log in with the passwords dev mode generated.
``FarmTopicPlugin``: :mod:`farm_protocol.acl`'s grants for publish, subscribe and also
delivery (amqtt sometimes hands a retained message to a subscription it does not match).

Known amqtt limitation (dev only): a CONNECT that reuses a connected client's id with a
wrong password disconnects that client before authentication runs.
"""

import asyncio
import hmac
import logging
from dataclasses import dataclass, field

import peewee as pw
from amqtt.contexts import Action as AmqttAction
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session

from coordinator.db.database import open_database
from coordinator.workers.registry import WorkerRegistry
from farm_protocol import acl, topics

log = logging.getLogger(__name__)


class FarmAuthPlugin(BaseAuthPlugin):  # type: ignore[misc]  # amqtt ships no types
    @dataclass
    class Config:
        database_url: str = ""
        passwords: dict[str, str] = field(default_factory=dict)  # non-worker accounts

    def __init__(self, context: object) -> None:
        super().__init__(context)
        self._db: pw.Database | None = None

    async def authenticate(self, *, session: Session) -> bool:
        username, password = session.username, session.password
        if not username or password is None:
            log.info("refused an anonymous connection (client %s)", session.client_id)
            return False
        accounts: dict[str, str] = self._get_config_option("passwords", {})
        if username in accounts:
            return hmac.compare_digest(password.encode(), accounts[username].encode())
        if acl.is_reserved(username) or session.client_id != acl.worker_client_id(username):
            log.info("refused %s: reserved name or foreign client id", username)
            return False
        ok = await asyncio.to_thread(self._verify, username, password)
        if not ok:
            log.info("refused worker %s: unknown, revoked or wrong key", username)
        return ok

    def _verify(self, worker_id: str, key: str) -> bool:
        if self._db is None:
            self._db = open_database(self._get_config_option("database_url", ""))
        return WorkerRegistry(self._db, grace_s=0).check_key(worker_id, key)

    async def close(self) -> None:
        if self._db is not None:
            self._db.close()


class FarmTopicPlugin(BaseTopicPlugin):  # type: ignore[misc]
    @dataclass
    class Config:
        extra_grants: dict[str, list[str]] = field(default_factory=dict)

    async def topic_filtering(
        self,
        *,
        session: Session | None = None,
        topic: str | None = None,
        action: AmqttAction | None = None,
    ) -> bool:
        if session is None or topic is None:
            return False
        if topic.startswith(topics.SHARE_PREFIX):
            return False  # amqtt has no shared subscriptions: refused, so the client knows
        extra: dict[str, list[str]] = self._get_config_option("extra_grants", {})
        if session.username in extra:
            grants = [
                acl.Grant(action, f) for f in extra[session.username] for action in acl.Action
            ]
        else:
            grants = acl.grants_for(session.username)
        if action == AmqttAction.PUBLISH:
            ok = acl.allowed(grants, acl.Action.PUBLISH, topic)
        else:  # subscribing to a filter, or receiving a message on a topic
            ok = acl.allowed(grants, acl.Action.SUBSCRIBE, topic)
        if not ok and action != AmqttAction.RECEIVE:
            log.info("refused %s of %s to %s", action, topic, session.username)
        return ok
