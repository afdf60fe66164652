"""docs/DEPLOY.md's steps 3 to 7 as an operator runs them, on this machine: the broker's
service accounts made with `llama-farm broker setup`, the settings files made from
config/*.env.example with only what the document says to edit, and the coordinator and
the webapp started with their units' exact command lines, settings files and working
directory (no systemd here: the unit's lines are read and run as systemd would). Both
answer their health checks, the admin command finds the coordinator's settings with
--env-file, and each stops cleanly on SIGTERM."""

import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from llama_farm.ports import free_port
from tests.support.brokers import broker_of
from tests.support.processes import run_command

ROOT = Path(__file__).resolve().parents[2]
PROGRAM = "/opt/llama-farm/bin/llama-farm"
STATE = "/var/lib/llama-farm"


def _edited(example: str, values: dict[str, str], state: Path) -> str:
    """The example settings with these values set (uncommented where commented out)."""
    text = (ROOT / "config" / example).read_text().replace(STATE, str(state))
    for key, value in values.items():
        line = f"{key}={value}"
        text, found = re.subn(rf"(?m)^#?{re.escape(key)}=.*$", line, text, count=1)
        if not found:
            text += line + "\n"
    return text


def _environment_file(path: Path) -> dict[str, str]:
    """What systemd's EnvironmentFile= reads: KEY=VALUE lines, comments skipped."""
    found = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            found[key.strip()] = value.strip().strip('"')
    return found


@contextmanager
def _service(
    unit: str, settings: Path, state: Path, log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """The unit's ExecStart= run as systemd would: its settings file as the whole
    environment, in its WorkingDirectory=; stopped with SIGTERM within TimeoutStopSec=."""
    text = (ROOT / "deploy" / unit).read_text()
    (command,) = re.findall(r"(?m)^ExecStart=(.*)$", text)
    (directory,) = re.findall(r"(?m)^WorkingDirectory=(.*)$", text)
    (stop_s,) = re.findall(r"(?m)^TimeoutStopSec=(\d+)$", text)
    assert f"EnvironmentFile=/etc/llama-farm/{settings.name}" in text
    assert directory == STATE
    argv = [sys.executable, "-m", "llama_farm.cli", *command.removeprefix(PROGRAM).split()]
    assert command.startswith(PROGRAM)
    environment = {"PATH": "/usr/bin:/bin"} | _environment_file(settings)
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv, env=environment, cwd=state, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=int(stop_s))
        assert process.returncode == 0, log.read_text()[-3000:]


def _healthy(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        assert process.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.1)


async def test_the_documented_steps_give_a_working_server(tmp_path: Path) -> None:
    async with broker_of("mosquitto") as broker:
        broker_url = f"mqtt://127.0.0.1:{broker.port}"
        admin = {"FARM_BROKER_ADMIN_USERNAME": "admin"}
        admin["FARM_BROKER_ADMIN_PASSWORD"] = broker.admin_password or ""
        setup = run_command(
            tmp_path, "llama_farm.cli", "broker", "setup", FARM_BROKER__URL=broker_url, **admin
        )
        assert setup.returncode == 0, setup.stderr
        coordinator_pw, webapp_pw = re.findall(r"(?m)^FARM_BROKER__PASSWORD=(.*)$", setup.stdout)
        state = tmp_path / "state"
        state.mkdir(mode=0o700)
        token = secrets.token_urlsafe(32)
        http_port, web_port = free_port(), free_port()

        coordinator_env = tmp_path / "coordinator.env"
        coordinator_env.write_text(
            _edited(
                "coordinator.env.example",
                {
                    "FARM_BROKER__URL": broker_url,
                    "FARM_BROKER__PASSWORD": coordinator_pw,
                    **admin,
                    "FARM_KEY_SECRET": secrets.token_urlsafe(32),
                    "FARM_SERVICE_TOKEN": token,
                    "FARM_ADMIN_TOKEN": secrets.token_urlsafe(32),
                    "FARM_HTTP_PORT": str(http_port),
                    "FARM_PUBLIC_URL": f"http://127.0.0.1:{web_port}",
                    "FARM_PUBLIC_BROKER_URL": broker_url,
                },
                state,
            )
        )
        webapp_env = tmp_path / "webapp.env"
        webapp_env.write_text(
            _edited(
                "webapp.env.example",
                {
                    "FARM_WEB_PORT": str(web_port),
                    "FARM_COORDINATOR_URL": f"http://127.0.0.1:{http_port}",
                    "FARM_SERVICE_TOKEN": token,
                    "FARM_BROKER__URL": broker_url,
                    "FARM_BROKER__PASSWORD": webapp_pw,
                },
                state,
            )
        )
        coordinator_log, webapp_log = tmp_path / "coordinator.log", tmp_path / "webapp.log"
        with _service(
            "llama-farm-coordinator.service", coordinator_env, state, coordinator_log
        ) as coordinator:
            _healthy(f"http://127.0.0.1:{http_port}/healthz", coordinator, coordinator_log)
            with _service("llama-farm-webapp.service", webapp_env, state, webapp_log) as webapp:
                _healthy(f"http://127.0.0.1:{web_port}/healthz", webapp, webapp_log)
                added = run_command(
                    tmp_path,
                    "llama_farm.cli",
                    "workers",
                    "add",
                    "--name",
                    "laptop A",
                    "--env-file",
                    str(coordinator_env),
                )
                assert added.returncode == 0, added.stderr
                assert f"database: sqlite:///{state}/farm.sqlite3" in added.stdout
                assert "fleet-worker join lfj1_" in added.stdout
        assert (state / "farm.sqlite3").exists()
