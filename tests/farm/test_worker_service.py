"""The worker as a service: `fleet-worker doctor` against a real farm (Mosquitto, the
simulator through the real ollama client) and broken ones, and `fleet-worker
install-service` writing a systemd unit (checked by systemd-analyze) and a launchd agent."""

import os
import plistlib
import shutil
import stat
import subprocess
import sys
from pathlib import Path

from pydantic import SecretStr

from farm_runtime.broker import BrokerSettings
from fleet_worker.doctor import diagnose
from fleet_worker.settings import WorkerSettings
from llama_farm.ports import free_port
from tests.support.brokers import broker_of
from tests.support.farm import running_farm


async def test_doctor_finds_what_is_wrong(tmp_path: Path) -> None:
    async with broker_of("mosquitto") as broker, running_farm(tmp_path, broker) as farm:
        coordinator = farm.coordinator
        info, key = await coordinator.runner.call(coordinator.registry.add, "spare box")
        await coordinator.provisioner.worker_added(info.id, key)
        good = WorkerSettings(
            _env_file=None,
            broker=BrokerSettings(url=broker.settings().url),
            worker_id=info.id,
            api_key=SecretStr(key),
            ollama_host=farm.sim_url,
            models=["llama3", "mistral"],
            pull_missing=False,
        )
        findings = await diagnose(good, env={})
        assert all(f.ok for f in findings), [f.line() for f in findings]
        assert any("accepted this worker's login" in f.what for f in findings)

        cases = {
            "refused our credentials": good.model_copy(update={"api_key": SecretStr("lf_wrong")}),
            "unreachable": good.model_copy(
                update={"broker": BrokerSettings(url=f"mqtt://127.0.0.1:{free_port()}")}
            ),
            "Ollama at": good.model_copy(update={"ollama_host": f"http://127.0.0.1:{free_port()}"}),
            "not pulled": good.model_copy(update={"models": ["no-such-model"]}),
            "worker id": good.model_copy(update={"worker_id": "../etc"}),
        }
        for expected, settings in cases.items():
            failed = [f for f in await diagnose(settings, env={}) if not f.ok]
            assert failed, expected
            assert expected in failed[0].what, [f.line() for f in failed]
            assert failed[0].fix
        busy = good.model_copy(update={"concurrency": 4})
        (parallel,) = [
            f for f in await diagnose(busy, env={"OLLAMA_NUM_PARALLEL": "2"}) if not f.ok
        ]
        assert "OLLAMA_NUM_PARALLEL=2 is below FARM_CONCURRENCY=4" in parallel.what


def test_doctor_command_exit_status(tmp_path: Path) -> None:
    env = dict(
        os.environ,
        FARM_WORKER_ID="nobody",
        FARM_API_KEY="lf_x",
        FARM_BROKER__URL=f"mqtt://127.0.0.1:{free_port()}",
        FARM_OLLAMA_HOST=f"http://127.0.0.1:{free_port()}",
    )
    env |= {"FARM_MODELS": "llama3", "FARM_CONCURRENCY": "2", "OLLAMA_NUM_PARALLEL": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "fleet_worker.cli", "doctor"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    # Every problem at once: a setting, the broker, Ollama, and the parallelism.
    assert "FAIL  FARM_MODELS: must be written as JSON" in done.stdout
    assert "FAIL  broker 127.0.0.1" in done.stdout
    assert "fix: check FARM_BROKER__URL" in done.stdout
    assert "FAIL  Ollama at" in done.stdout
    assert "FAIL  OLLAMA_NUM_PARALLEL=1 is below FARM_CONCURRENCY=2" in done.stdout
    assert "4 problem(s) to fix" in done.stdout


def install(
    tmp_path: Path, platform: str, *args: str, home: Path | None = None, **extra: str
) -> subprocess.CompletedProcess[str]:
    env = (
        os.environ
        | {
            "HOME": str(home or tmp_path),
            "FARM_SERVICE_PLATFORM": platform,
            "FARM_WORKER_ID": "box",
            "FARM_API_KEY": "lf_secret-key",
            "FARM_MODELS": '["llama3"]',
            "FARM_CONCURRENCY": "2",
        }
        | extra
    )
    return subprocess.run(
        [sys.executable, "-m", "fleet_worker.cli", "install-service", *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_install_service_writes_a_systemd_user_unit(tmp_path: Path) -> None:
    done = install(tmp_path, "linux", "--drain-grace", "45")
    assert done.returncode == 0, done.stderr
    unit = tmp_path / ".config/systemd/user/fleet-worker.service"
    text = unit.read_text()
    assert "Restart=on-failure" in text
    assert "TimeoutStopSec=75" in text  # longer than the 45 s drain grace
    assert f"{sys.executable} -m fleet_worker.cli --env-file" in text
    assert "systemctl --user enable --now fleet-worker.service" in done.stdout
    env_file = tmp_path / ".config/llama-farm/worker.env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    # The env file gives back the same settings.
    loaded = WorkerSettings(_env_file=env_file)
    assert (loaded.worker_id, loaded.api_key.get_secret_value()) == ("box", "lf_secret-key")
    assert (loaded.models, loaded.concurrency) == (["llama3"], 2)
    if shutil.which("systemd-analyze"):
        checked = subprocess.run(
            ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True
        )
        assert checked.returncode == 0, checked.stderr
    # Installing again keeps the existing settings file; what is set now is written over
    # it (a rotated key), the rest stays; every setting given is written, none dropped.
    again = install(tmp_path, "linux")
    assert "kept" in again.stdout
    rotated = install(tmp_path, "linux", FARM_API_KEY="lf_rotated", FARM_CHECKPOINT_S="2.5")
    assert "wrote" in rotated.stdout
    reloaded = WorkerSettings(_env_file=env_file)
    assert reloaded.api_key.get_secret_value() == "lf_rotated"
    assert (reloaded.checkpoint_s, reloaded.models) == (2.5, ["llama3"])
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    # A relative --env-file is stored as an absolute path: the service runs elsewhere.
    (tmp_path / "here").mkdir()
    relative = install(tmp_path / "here", "linux", "--env-file", "worker.env", home=tmp_path)
    assert relative.returncode == 0, relative.stderr
    assert f"--env-file {tmp_path / 'here' / 'worker.env'}" in unit.read_text()


def test_install_service_writes_a_launchd_agent(tmp_path: Path) -> None:
    done = install(tmp_path, "darwin")
    assert done.returncode == 0, done.stderr
    agent = tmp_path / "Library/LaunchAgents/org.llama-farm.fleet-worker.plist"
    plist = plistlib.loads(agent.read_bytes())
    assert plist["Label"] == "org.llama-farm.fleet-worker"
    assert plist["ProgramArguments"][:3] == [sys.executable, "-m", "fleet_worker.cli"]
    assert plist["KeepAlive"] == {"Crashed": True}  # an exit it printed stays an exit
    log_file = tmp_path / "Library/Logs/fleet-worker.log"
    assert plist["ProgramArguments"][-2:] == ["--log-file", str(log_file)]  # rotated by it
    assert "StandardOutPath" not in plist
    assert plist["ExitTimeOut"] == 60  # longer than the default 30 s drain grace
    assert "launchctl bootstrap gui/$(id -u) " in done.stdout  # not the legacy load


def test_install_service_refuses_without_credentials(tmp_path: Path) -> None:
    env = dict(os.environ, HOME=str(tmp_path), FARM_SERVICE_PLATFORM="linux")
    env.pop("FARM_WORKER_ID", None)
    env.pop("FARM_API_KEY", None)
    done = subprocess.run(
        [sys.executable, "-m", "fleet_worker.cli", "install-service"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "FARM_WORKER_ID" in done.stderr
