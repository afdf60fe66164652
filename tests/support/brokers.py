"""Real brokers for tests: Mosquitto started from the project's own config on a free port
in a temp dir (with dynamic security initialised), and the embedded amqtt broker."""

import asyncio
import json
import os
import re
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiomqtt

from farm_protocol import acl
from farm_runtime.broker import BrokerSettings
from llama_farm.embedded_broker import FarmAuth, embedded_broker
from llama_farm.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
PROJECT_CONFIG = ROOT / "mosquitto" / "mosquitto.conf"
CONTROL = "$CONTROL/dynamic-security/v1"


@dataclass(frozen=True)
class RunningBroker:
    kind: str
    port: int
    username: str | None = None
    password: str | None = None
    admin_password: str | None = None
    # amqtt checks logins against a farm database (workers) and these service passwords.
    database_url: str | None = None
    service_passwords: dict[str, str] | None = None
    # Mosquitto only: stop the broker (SIGTERM, so it saves its persistence; or with
    # ``kill=True`` SIGKILL, so it keeps only what it autosaved) and start it again on the
    # same port with the same files.
    restart: Callable[..., Awaitable[None]] | None = None
    # Mosquitto only: the broker process's id (benchmarks pin it to a core)
    pid: Callable[[], int] | None = None

    async def add_client(self, username: str, password: str) -> None:
        """An account for a worker (full access under farm/ until per-worker roles)."""
        if self.admin_password is not None:
            await dynsec(self.port, self.admin_password, full_access_commands(username, password))

    def settings(self) -> BrokerSettings:
        from pydantic import SecretStr

        return BrokerSettings(
            url=f"mqtt://127.0.0.1:{self.port}",
            username=self.username,
            password=SecretStr(self.password) if self.password else None,
        )


def render_config(workdir: Path, port: int) -> Path:
    """The project's config with this test's port and file locations."""
    text = PROJECT_CONFIG.read_text()
    text = re.sub(r"(?m)^listener 1883 127\.0\.0\.1$", f"listener {port} 127.0.0.1", text)
    text = re.sub(
        r"(?m)^plugin_opt_config_file .*$",
        f"plugin_opt_config_file {workdir / 'dynamic-security.json'}",
        text,
    )
    text = re.sub(r"(?m)^persistence_location .*$", f"persistence_location {workdir}/", text)
    found = sorted(Path("/usr/lib").glob("*/mosquitto_dynamic_security.so"))
    if found:  # this machine's architecture (the config names x86_64's)
        text = re.sub(r"(?m)^plugin /.*$", f"plugin {found[0]}", text)
    assert f"listener {port}" in text, "the project config no longer has the expected listener"
    path = workdir / "mosquitto.conf"
    path.write_text(text)
    return path


async def wait_port(port: int, timeout_s: float = 10.0) -> None:
    """Until something accepts connections on ``port`` (OSError after ``timeout_s``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.02)


async def dynsec(port: int, admin_password: str, commands: list[dict[str, object]]) -> None:
    """Send dynamic-security commands as the admin and check every reply succeeded."""
    async with aiomqtt.Client(
        "127.0.0.1", port, username="admin", password=admin_password, identifier="test-admin"
    ) as client:
        await client.subscribe(f"{CONTROL}/response", qos=1)
        await client.publish(CONTROL, json.dumps({"commands": commands}), qos=1)
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            replies = json.loads(message.payload)["responses"]
            errors = [r for r in replies if r.get("error")]
            assert not errors, errors
            return


def full_access_commands(username: str, password: str) -> list[dict[str, object]]:
    """A service account allowed everything under farm/ (until per-worker roles exist)."""
    role = f"{username}-role"
    acls: list[dict[str, object]] = [
        {
            "command": "addRoleACL",
            "rolename": role,
            "acltype": kind,
            "topic": "farm/#",
            "allow": True,
        }
        for kind in ("publishClientSend", "publishClientReceive", "subscribePattern")
    ]
    return [
        {"command": "createRole", "rolename": role},
        *acls,
        {
            "command": "createClient",
            "username": username,
            "password": password,
            "roles": [{"rolename": role}],
        },
    ]


@asynccontextmanager
async def mosquitto() -> AsyncIterator[RunningBroker]:
    workdir = Path(tempfile.mkdtemp(prefix="farm-mosquitto-"))
    port = free_port()
    admin_password = uuid.uuid4().hex
    subprocess.run(
        [
            "mosquitto_ctrl",
            "dynsec",
            "init",
            str(workdir / "dynamic-security.json"),
            "admin",
            admin_password,
        ],
        check=True,
        capture_output=True,
    )
    if os.geteuid() == 0:  # Mosquitto drops to the mosquitto user: let it write its files
        for path in (workdir, *workdir.iterdir()):
            shutil.chown(path, "mosquitto", "mosquitto")
    config = render_config(workdir, port)
    log = (workdir / "mosquitto.log").open("ab")
    processes = [subprocess.Popen(["mosquitto", "-c", str(config)], stdout=log, stderr=log)]

    def stop(kill: bool = False) -> None:
        process = processes[-1]
        if kill:
            process.kill()
        else:
            process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    async def restart(kill: bool = False) -> None:
        stop(kill)
        processes.append(subprocess.Popen(["mosquitto", "-c", str(config)], stdout=log, stderr=log))
        await wait_port(port)

    try:
        await wait_port(port)
        password = uuid.uuid4().hex
        await dynsec(port, admin_password, full_access_commands("farm-test", password))
        yield RunningBroker(
            "mosquitto",
            port,
            "farm-test",
            password,
            admin_password,
            restart=restart,
            pid=lambda: processes[-1].pid,
        )
    finally:
        stop()
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)


@asynccontextmanager
async def amqtt_broker() -> AsyncIterator[RunningBroker]:
    """The dev broker as `llama-farm dev` runs it: farm auth and topic rules. Workers log
    in against ``database_url`` (the farm under test must use that database); the test's
    own account may publish and subscribe anywhere under farm/, like on Mosquitto."""
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="farm-amqtt-"))
    services = {name: uuid.uuid4().hex for name in acl.SERVICES}
    password = uuid.uuid4().hex
    auth = FarmAuth(
        database_url=f"sqlite:///{workdir / 'farm.sqlite3'}",
        passwords={**services, "farm-test": password},
        extra_grants={"farm-test": ["farm/#"]},
    )
    try:
        async with embedded_broker(port, auth=auth):
            yield RunningBroker(
                "amqtt",
                port,
                "farm-test",
                password,
                database_url=auth.database_url,
                service_passwords=services,
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@asynccontextmanager
async def broker_of(kind: str) -> AsyncIterator[RunningBroker]:
    factory = mosquitto if kind == "mosquitto" else amqtt_broker
    async with factory() as broker:
        yield broker
