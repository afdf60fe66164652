"""A machine joins the farm in two commands: the admin's `llama-farm workers add` prints
one line (no key in it), and `fleet-worker join LINE` on the machine does the rest; the
worker it set up then shows online on the farm page. `fleet-worker leave` undoes it.
Against `llama-farm dev` as a process (its simulator stands in for the machine's Ollama;
no systemd here, so the service is written but started by the test, with the settings
file the unit names)."""

import os
import re
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.dev_farm import dev_process
from tests.support.processes import run_command


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    """The dev farm's chat URL, its broker's URL and its simulator's."""
    with dev_process(tmp_path, {"FARM_SIM_TTFT_MS": "10"}) as url:
        deadline = time.monotonic() + 30
        while "Press Ctrl-C" not in (log := (tmp_path / "dev.log").read_text()):
            assert time.monotonic() < deadline, log[-2000:]
            time.sleep(0.05)  # it says where everything is once the chat answers
        broker = re.search(r"Broker:\s+(mqtt://\S+)", log)
        sim = re.search(r"simulated by (http://\S+)", log)
        assert broker, log[-2000:]
        assert sim, log[-2000:]
        yield url.rstrip("/"), broker.group(1), sim.group(1)


def _join_line(tmp_path: Path, dev: tuple[str, str, str], name: str) -> str:
    """The line `llama-farm workers add` prints for ``name``, beside the dev farm."""
    url, broker, _ = dev
    added = run_command(
        tmp_path,
        "llama_farm.cli",
        "workers",
        "add",
        "--name",
        name,
        FARM_DATABASE_URL=f"sqlite:///{tmp_path / 'farm' / 'dev.sqlite3'}",
        FARM_PUBLIC_URL=url,
        FARM_PUBLIC_BROKER_URL=broker,
    )
    assert added.returncode == 0, added.stderr
    assert "api key" not in added.stdout  # the key is never shown to the admin
    (line,) = re.findall(r"fleet-worker join (lfj1_\S+)", added.stdout)
    return str(line)


def _online(url: str, name: str) -> bool:
    farm = httpx.get(f"{url}/api/farm", timeout=5).json()
    return any(w["name"] == name and w["state"] in ("idle", "busy") for w in farm["workers"])


def test_a_laptop_joins_in_two_commands_and_leaves_in_one(
    tmp_path: Path, dev: tuple[str, str, str]
) -> None:
    url, broker, sim = dev
    line = _join_line(tmp_path, dev, "Laptop B")

    laptop = tmp_path / "laptop"
    laptop.mkdir()
    machine = {"HOME": str(laptop), "FARM_SERVICE_PLATFORM": "linux", "OLLAMA_HOST": sim}
    joined = run_command(laptop, "fleet_worker.cli", "join", line, "--no-start", **machine)
    assert joined.returncode == 0, joined.stdout + joined.stderr
    assert "this machine is worker laptop-b" in joined.stdout
    assert f"shows on {url}/farm" in joined.stdout
    assert "ok    broker accepted this worker's login" in joined.stdout  # doctor ran
    settings = laptop / ".config" / "llama-farm" / "worker.env"
    assert stat.S_IMODE(settings.stat().st_mode) == 0o600
    assert f"FARM_BROKER__URL={broker}" in settings.read_text()
    unit = laptop / ".config" / "systemd" / "user" / "fleet-worker.service"
    assert f"--env-file {settings}" in unit.read_text()

    # The service as the unit would start it; the laptop shows online on the farm page.
    log = (tmp_path / "laptop.log").open("w")
    worker = subprocess.Popen(
        [sys.executable, "-m", "fleet_worker.cli", "--env-file", str(settings)],
        env={k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
        | {"HOME": str(laptop)},
        cwd=laptop,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while not _online(url, "Laptop B"):
            assert worker.poll() is None, (tmp_path / "laptop.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "laptop.log").read_text()
            time.sleep(0.1)
    finally:
        worker.send_signal(signal.SIGINT)
        worker.wait(timeout=30)
        log.close()

    again = run_command(laptop, "fleet_worker.cli", "join", line, "--no-start", **machine)
    assert again.returncode == 3  # the line was spent: no second machine gets this key
    assert "already used or expired" in again.stderr
    damaged = run_command(laptop, "fleet_worker.cli", "join", line[:-12], "--no-start", **machine)
    assert damaged.returncode == 2
    assert "damaged" in damaged.stderr
    assert "Traceback" not in again.stderr + damaged.stderr

    left = run_command(laptop, "fleet_worker.cli", "leave", "--no-start", **machine)
    assert left.returncode == 0, left.stderr
    assert not settings.exists()
    assert not unit.exists()
    assert "llama-farm workers revoke laptop-b" in left.stdout


def test_join_needs_ollama_before_it_spends_the_line(
    tmp_path: Path, dev: tuple[str, str, str]
) -> None:
    line = _join_line(tmp_path, dev, "Laptop C")
    machine = {"HOME": str(tmp_path), "FARM_SERVICE_PLATFORM": "linux"}
    no_ollama = run_command(
        tmp_path, "fleet_worker.cli", "join", line, **machine, OLLAMA_HOST="http://127.0.0.1:9"
    )
    assert no_ollama.returncode == 1
    assert "Ollama does not answer" in no_ollama.stderr
    assert not (tmp_path / ".config" / "llama-farm" / "worker.env").exists()
