"""Per-worker keys enforced by a real Mosquitto with real credentials: accounts created,
rotated, revoked and reconciled by the coordinator's code over $CONTROL, and the
least-privilege roles of farm_protocol.acl checked from the outside."""

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest
from pydantic import SecretStr

from coordinator.db.database import migrate, open_database
from coordinator.db.runner import DbRunner
from coordinator.keys.hashing import derive_key
from coordinator.mqtt.accounts import BrokerAccounts, Dynsec, _create_role, _create_worker
from coordinator.mqtt.provisioning import Provisioner
from coordinator.settings import CoordinatorSettings
from coordinator.workers.registry import WorkerRegistry
from farm_protocol import acl, topics
from farm_runtime.broker import BrokerSettings, make_client
from tests.support.brokers import RunningBroker, broker_of
from tests.support.farm import wait_until

REFUSED = 0x80  # SUBACK "failure" in MQTT 3.1.1


def account(broker: RunningBroker, username: str | None, password: str | None) -> BrokerSettings:
    return BrokerSettings(
        url=f"mqtt://127.0.0.1:{broker.port}",
        username=username,
        password=SecretStr(password) if password else None,
    )


@contextlib.asynccontextmanager
async def farm_broker() -> AsyncIterator[tuple[RunningBroker, BrokerAccounts, dict[str, str]]]:
    async with broker_of("mosquitto") as broker:
        accounts = BrokerAccounts(Dynsec(account(broker, "admin", broker.admin_password)))
        services = await accounts.setup_services({})
        yield broker, accounts, services


async def granted(client: aiomqtt.Client, topic_filter: str) -> int:
    result = await client.subscribe(topic_filter, qos=1)
    code = result[0]
    return code if isinstance(code, int) else int(code.value)


async def until_disconnected(client: aiomqtt.Client) -> None:
    """Wait (up to a second) for the broker to close this client's connection."""
    async with asyncio.timeout(1.0):
        async for _ in client.messages:
            pass


async def receives(client: aiomqtt.Client, within_s: float = 0.5) -> list[tuple[str, bytes]]:
    got: list[tuple[str, bytes]] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within_s):
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                got.append((message.topic.value, message.payload))
    return got


async def check_isolation(
    alpha_login: BrokerSettings,
    observer_login: BrokerSettings,
    coordinator_login: BrokerSettings,
    webapp_login: BrokerSettings,
    *,
    shares: bool = True,
) -> None:
    """Worker alpha (beside a worker beta) reaches only its own topics; the observer only
    reads; the webapp cannot assign; the coordinator can. ``shares``: the broker has
    shared subscriptions (amqtt refuses every one, so a coordinator falls back)."""
    async with (
        make_client(alpha_login, identifier="worker-alpha") as alpha,
        make_client(observer_login, identifier="observer") as watch,
        make_client(coordinator_login, identifier="coordinator") as coord,
        make_client(webapp_login, identifier="webapp") as web,
    ):
        # Its own assignments and control: yes. Anyone else's, or wildcards: no.
        assert await granted(alpha, topics.worker_assign("alpha")) == 1
        assert await granted(alpha, topics.worker_control("alpha")) == 1
        assert await granted(alpha, topics.worker_assign("beta")) == REFUSED
        assert await granted(alpha, "#") == REFUSED
        assert await granted(alpha, "farm/v2/workers/+/assign") == REFUSED
        assert await granted(alpha, topics.ALL_JOB_EVENTS) == REFUSED
        # The webapp may ask for one thread's topics; the coordinators' shared
        # subscription is theirs alone.
        assert await granted(web, topics.thread_chunks("t1")) == 1
        assert await granted(web, topics.thread_progress("t1")) == 1
        assert await granted(web, topics.thread_events("t1")) == 1
        shared = topics.shared(acl.COORDINATOR_GROUP, topics.ALL_JOB_PROGRESS)
        assert await granted(web, shared) == REFUSED
        assert await granted(coord, shared) == (1 if shares else REFUSED)
        assert (
            await granted(coord, topics.shared("other-group", topics.ALL_JOB_PROGRESS)) == REFUSED
        )
        # The observer reads everything under farm/ and nothing else.
        assert await granted(watch, "farm/#") == 1
        assert await granted(watch, "#") == REFUSED
        # Publishing: alpha's own events arrive; events for beta's jobs, assignments (even
        # its own) and thread events are dropped by the broker.
        await alpha.publish(topics.job_events("alpha", "t1", "job1"), b"mine", qos=1)
        await alpha.publish(topics.job_progress("alpha", "t1", "job1"), b"my progress", qos=1)
        await alpha.publish(topics.job_events("beta", "t1", "job2"), b"spoof", qos=1)
        await alpha.publish(topics.worker_assign("alpha"), b"self-assign", qos=1)
        await alpha.publish(topics.worker_assign("beta"), b"assign-beta", qos=1)
        await alpha.publish(topics.thread_events("t1"), b"thread", qos=1)
        await watch.publish(topics.worker_assign("beta"), b"observer-assign", qos=1)
        # The webapp's account cannot assign jobs either; the coordinator's can.
        await web.publish(topics.worker_assign("beta"), b"webapp-assign", qos=1)
        await coord.publish(topics.worker_assign("beta"), b"coordinator-assign", qos=1)
        seen = {payload for _, payload in await receives(watch)}
        assert seen == {b"mine", b"my progress", b"coordinator-assign"}


async def test_each_worker_reaches_only_its_own_topics_on_mosquitto() -> None:
    async with farm_broker() as (broker, accounts, services):
        await accounts.add_worker("alpha", "lf_alpha-key-" + "a" * 30)
        await accounts.add_worker("beta", "lf_beta-key-" + "b" * 30)
        assert await granted_for(broker, acl.OBSERVER, services, "$CONTROL/#") == REFUSED
        await check_isolation(
            account(broker, "alpha", "lf_alpha-key-" + "a" * 30),
            *(account(broker, s, services[s]) for s in (acl.OBSERVER, acl.COORDINATOR, acl.WEBAPP)),
        )


async def test_the_dev_broker_enforces_the_same_rules(tmp_path: Path) -> None:
    """amqtt, as `llama-farm dev` runs it: keys checked against the coordinator's
    database, the same topic rules."""
    async with broker_of("amqtt") as broker:
        assert broker.database_url is not None
        assert broker.service_passwords is not None
        services = broker.service_passwords
        db = open_database(broker.database_url)
        migrate(db)
        store = WorkerRegistry(db, grace_s=10)
        with db.connection_context():
            _, alpha_key = store.add("alpha")
            store.add("beta")
            _, gone_key = store.add("gone")
            store.revoke("gone")
        await check_isolation(
            account(broker, "alpha", alpha_key),
            *(account(broker, s, services[s]) for s in (acl.OBSERVER, acl.COORDINATOR, acl.WEBAPP)),
            shares=False,
        )
        for login, identifier in (
            (account(broker, None, None), "worker-alpha"),
            (account(broker, "alpha", "lf_wrong"), "worker-alpha"),
            (account(broker, "alpha", alpha_key), "someone-else"),
            (account(broker, "gone", gone_key), "worker-gone"),
            (account(broker, acl.WEBAPP, "not-the-password"), "webapp-x"),
        ):
            with pytest.raises(aiomqtt.MqttError):
                async with make_client(login, identifier=identifier):
                    pass
        db.close()


async def granted_for(
    broker: RunningBroker, service: str, services: dict[str, str], topic_filter: str
) -> int:
    async with make_client(account(broker, service, services[service]), identifier="probe") as c:
        return await granted(c, topic_filter)


async def test_wrong_keys_anonymous_and_foreign_client_ids_are_refused() -> None:
    async with farm_broker() as (broker, accounts, _):
        key = "lf_gamma-" + "g" * 40
        await accounts.add_worker("gamma", key)
        for settings, identifier in (
            (account(broker, None, None), "worker-gamma"),
            (account(broker, "gamma", "lf_wrong"), "worker-gamma"),
            (account(broker, "gamma", key), "someone-else"),  # the client id is bound
        ):
            with pytest.raises(aiomqtt.MqttError):
                async with make_client(settings, identifier=identifier):
                    pass
        async with make_client(account(broker, "gamma", key), identifier="worker-gamma"):
            pass


async def test_revoke_disconnects_at_once_and_rotation_replaces_the_key() -> None:
    async with farm_broker() as (broker, accounts, _):
        old, new = "lf_delta-old-" + "d" * 30, "lf_delta-new-" + "e" * 30
        await accounts.add_worker("delta", old)
        async with make_client(account(broker, "delta", old), identifier="worker-delta") as c:
            await c.subscribe(topics.worker_assign("delta"), qos=1)
            loop = asyncio.get_running_loop()
            started = loop.time()
            await accounts.rotate_worker("delta", new)
            with pytest.raises(aiomqtt.MqttError):
                await until_disconnected(c)
            assert loop.time() - started < 1.0
        with pytest.raises(aiomqtt.MqttError):
            async with make_client(account(broker, "delta", old), identifier="worker-delta"):
                pass
        async with make_client(account(broker, "delta", new), identifier="worker-delta") as c:
            started = asyncio.get_running_loop().time()
            await accounts.revoke_worker("delta")
            with pytest.raises(aiomqtt.MqttError):
                await until_disconnected(c)
            assert asyncio.get_running_loop().time() - started < 1.0
        with pytest.raises(aiomqtt.MqttError):
            async with make_client(account(broker, "delta", new), identifier="worker-delta"):
                pass


async def test_reconcile_rebuilds_lost_accounts_and_removes_unknown_ones() -> None:
    async with farm_broker() as (broker, accounts, _):
        secret = "s" * 32
        keys = {w: derive_key(secret, w, f"nonce-{w}") for w in ("eps", "zeta")}
        await accounts.add_worker("eps", keys["eps"])
        await accounts.add_worker("stale", "lf_" + "x" * 40)  # revoked in the database
        # The broker loses zeta's account (or never had it); eps is intact.
        report = await accounts.reconcile({"eps": keys["eps"], "zeta": keys["zeta"], "old": None})
        assert report.created == ["zeta"]
        assert report.deleted == ["stale"]
        assert report.unrecoverable == ["old"]
        async with make_client(account(broker, "zeta", keys["zeta"]), identifier="worker-zeta"):
            pass
        with pytest.raises(aiomqtt.MqttError):
            async with make_client(
                account(broker, "stale", "lf_" + "x" * 40), identifier="worker-stale"
            ):
                pass
        # Nothing to do the second time; service accounts are never touched.
        again = await accounts.reconcile({"eps": keys["eps"], "zeta": keys["zeta"]})
        assert (again.created, again.deleted) == ([], [])
        clients = await accounts.dynsec.clients()
        assert set(acl.SERVICES) <= set(clients)


async def test_reconcile_brings_the_roles_of_an_earlier_version_up_to_date() -> None:
    """A worker's role made before protocol v2 cannot publish progress; the coordinator's
    first reconcile adds what the role lacks, without disconnecting anyone."""
    async with farm_broker() as (broker, accounts, services):
        key = "lf_" + "k" * 40
        role = acl.worker_role("eta")
        earlier = [g for g in acl.worker_grants("eta") if "progress" not in g.filter]
        await accounts.dynsec.check([_create_role(role, earlier), _create_worker("eta", key)])
        watcher = account(broker, acl.OBSERVER, services[acl.OBSERVER])
        async with (
            make_client(account(broker, "eta", key), identifier="worker-eta") as eta,
            make_client(watcher, identifier="observer") as watch,
        ):
            await watch.subscribe(topics.ALL_JOB_PROGRESS, qos=1)
            await eta.publish(topics.job_progress("eta", "t1", "j1"), b"before", qos=1)
            assert await receives(watch) == []  # dropped: the role lacks it
            await accounts.reconcile({"eta": key})
            await eta.publish(topics.job_progress("eta", "t1", "j1"), b"after", qos=1)
            assert [p for _, p in await receives(watch)] == [b"after"]


async def test_the_coordinator_reprovisions_a_broker_that_lost_its_accounts(
    tmp_path: Path,
) -> None:
    """The reconcile loop, with the coordinator's settings, store and a real database:
    accounts the broker lacks are made from keys derived again, revoked ones go."""
    async with broker_of("mosquitto") as broker:
        settings = CoordinatorSettings(
            database_url=f"sqlite:///{tmp_path / 'farm.sqlite3'}",
            broker=account(broker, acl.COORDINATOR, "coordinator-password"),
            broker_admin_username="admin",
            broker_admin_password=SecretStr(broker.admin_password or ""),
            key_secret=SecretStr("k" * 40),
            reconcile_interval_s=0.2,
        )
        db = open_database(settings.database_url)
        migrate(db)
        runner = DbRunner(db)
        store = WorkerRegistry(db, grace_s=10, key_secret=settings.key_secret.get_secret_value())
        _, key = await runner.call(store.add, "eta")
        _, gone_key = await runner.call(store.add, "theta")
        provisioner = Provisioner(settings)
        assert provisioner.accounts is not None
        await provisioner.worker_added("theta", gone_key)
        await runner.call(store.revoke, "theta")  # revoked while the broker was away
        loop = asyncio.create_task(provisioner.reconcile_forever(runner, store))
        try:

            async def provisioned() -> bool:
                assert provisioner.accounts is not None
                clients = await provisioner.accounts.dynsec.clients()
                return "eta" in clients and "theta" not in clients and acl.COORDINATOR in clients

            await wait_until(provisioned, what="the broker to be re-provisioned")
            async with make_client(account(broker, "eta", key), identifier="worker-eta"):
                pass
            # The coordinator's own account was re-created with its configured password.
            own = settings.broker
            async with make_client(own, identifier="farm-coordinator-test"):
                pass
        finally:
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop
            runner.close()


async def test_the_cli_sets_up_services_and_provisions_workers(tmp_path: Path) -> None:
    """`llama-farm broker setup` and `llama-farm workers add|rotate|revoke` as an operator
    runs them, against Mosquitto: the printed credentials are the ones that work."""
    async with broker_of("mosquitto") as broker:
        env = dict(
            os.environ,
            FARM_DATABASE_URL=f"sqlite:///{tmp_path / 'farm.sqlite3'}",
            FARM_BROKER__URL=f"mqtt://127.0.0.1:{broker.port}",
            FARM_BROKER_ADMIN_USERNAME="admin",
            FARM_BROKER_ADMIN_PASSWORD=broker.admin_password or "",
            FARM_KEY_SECRET="c" * 40,
        )

        async def cli(*args: str) -> str:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "llama_farm.cli",
                *args,
                env=env,
                cwd=tmp_path,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
            assert proc.returncode == 0, err.decode()
            return out.decode()

        setup = await cli("broker", "setup")
        passwords = [
            line.split("=", 1)[1]
            for line in setup.splitlines()
            if line.startswith("FARM_BROKER__PASSWORD=")
        ]
        coordinator_login = account(broker, acl.COORDINATOR, passwords[0])
        async with make_client(coordinator_login, identifier="c1") as coord:
            assert await granted(coord, topics.ALL_STATUS) == 1

        added = await cli("workers", "add", "--name", "Box", "--create")
        key = added.split("api key:")[1].split()[0]
        assert key not in (tmp_path / "farm.sqlite3").read_bytes().decode(errors="ignore")
        async with make_client(account(broker, "box", key), identifier="worker-box"):
            pass
        new_key = (await cli("workers", "rotate", "box")).split("api key:")[1].split()[0]
        with pytest.raises(aiomqtt.MqttError):
            async with make_client(account(broker, "box", key), identifier="worker-box"):
                pass
        async with make_client(account(broker, "box", new_key), identifier="worker-box"):
            pass
        await cli("workers", "revoke", "box")
        with pytest.raises(aiomqtt.MqttError):
            async with make_client(account(broker, "box", new_key), identifier="worker-box"):
                pass
