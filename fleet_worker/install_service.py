"""``fleet-worker install-service``: run this worker as a service of the logged-in user.

Linux: a systemd user unit (``~/.config/systemd/user/fleet-worker.service``); macOS: a
launchd agent (``~/Library/LaunchAgents/org.llama-farm.fleet-worker.plist``). Both come
from the templates in ``deploy/``, restart the worker when it fails, and give it longer to
stop than its drain grace period. The settings go to an env file only this user can read
(``~/.config/llama-farm/worker.env``), written from the current settings if it does not
exist yet. Nothing is started: the command prints how to.
"""

import json
import os
import shlex
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from pydantic import SecretStr

from farm_runtime.broker import BrokerSettings
from fleet_worker.settings import WorkerSettings

UNIT = "fleet-worker.service"
AGENT = "org.llama-farm.fleet-worker"


@dataclass(frozen=True, slots=True)
class Installed:
    service_file: Path
    env_file: Path
    env_written: bool
    next_steps: list[str]


def _template(name: str) -> str:
    return (resources.files("fleet_worker") / "templates" / name).read_text()


def _fill(template: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        template = template.replace("{" + key + "}", value)
    return template


def _env_value(value: Any) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def env_values(settings: WorkerSettings) -> dict[str, str]:
    """Every setting the worker runs with that is not its default (and always the broker,
    the login, Ollama and the concurrency), as FARM_ variables: nothing is left out."""
    always = {"worker_id", "api_key", "ollama_host", "concurrency"}
    found: dict[str, str] = {"FARM_BROKER__URL": settings.broker.url}
    for name, info in BrokerSettings.model_fields.items():
        value = getattr(settings.broker, name)
        if name not in ("username", "password") and value != info.default:
            found[f"FARM_BROKER__{name.upper()}"] = _env_value(value)
    for name, info in WorkerSettings.model_fields.items():
        if name == "broker" or info.exclude:
            continue
        value = getattr(settings, name)
        if name in always or value != info.default:
            found[f"FARM_{name.upper()}"] = _env_value(value)
    return found


def env_lines(settings: WorkerSettings) -> list[str]:
    """The settings a worker needs, as an env file."""
    return [f"{key}={value}" for key, value in env_values(settings).items()]


def read_env(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#"):
            found[key.strip()] = value
    return found


def _write_env(path: Path, values: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    os.chmod(path, 0o600)  # it holds the API key: only its owner reads it
    path.write_text("".join(f"{key}={value}\n" for key, value in values.items()))


def install(
    settings: WorkerSettings,
    *,
    platform: str,
    home: Path,
    drain_grace_s: float,
    env_file: Path | None = None,
    python: str = sys.executable,
) -> Installed:
    env_path = (env_file or home / ".config" / "llama-farm" / "worker.env").absolute()
    if env_path.exists():
        # Installed before: what is set now is written over what the file holds (a key
        # rotated, a model added), and the rest of the file stays.
        values = read_env(env_path) | env_values(settings)
        written = values != read_env(env_path)
    else:
        if not settings.worker_id or not settings.api_key.get_secret_value():
            raise ValueError(
                f"{env_path} does not exist and FARM_WORKER_ID / FARM_API_KEY are not set: "
                "set them (or pass --env-file with a file that has them)"
            )
        values, written = env_values(settings), True
    _write_env(env_path, values)
    grace = f"{drain_grace_s:g}"
    stop_timeout = str(int(drain_grace_s) + 30)
    args = [python, "-m", "fleet_worker.cli", "--env-file", str(env_path), "--drain-grace", grace]
    if platform == "linux":
        path = home / ".config" / "systemd" / "user" / UNIT
        text = _fill(
            _template(f"{UNIT}.in"),
            {"exec_start": shlex.join(args), "stop_timeout": stop_timeout},
        )
        steps = [
            "systemctl --user daemon-reload",
            f"systemctl --user enable --now {UNIT}",
            f"journalctl --user -u {UNIT} -f      # its log",
            "loginctl enable-linger $USER          # keep it running while logged out",
        ]
    elif platform == "darwin":
        path = home / "Library" / "LaunchAgents" / f"{AGENT}.plist"
        log_file = home / "Library" / "Logs" / "fleet-worker.log"
        args += ["--log-file", str(log_file)]  # rotated by the worker: launchd does not
        text = _fill(
            _template(f"{AGENT}.plist.in"),
            {
                "program_arguments": "\n".join(f"    <string>{escape(a)}</string>" for a in args),
                "stop_timeout": stop_timeout,
                "log_file": escape(str(log_file)),
            },
        )
        agent = f"gui/$(id -u)/{AGENT}"
        steps = [
            f"launchctl bootout {agent} 2>/dev/null; launchctl bootstrap gui/$(id -u) {path}",
            f"launchctl kickstart -k {agent}      # restart it after a change",
            f"tail -f {log_file}      # its log",
        ]
    else:
        raise ValueError(
            f"install-service knows Linux (systemd) and macOS (launchd), not {platform}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return Installed(path, env_path, written, steps)


def service_platform() -> str:
    """ "linux" (systemd) or "darwin" (launchd), or what else this is; FARM_SERVICE_PLATFORM
    says otherwise (tests write a macOS agent on Linux)."""
    found = os.environ.get("FARM_SERVICE_PLATFORM") or sys.platform
    return "linux" if found.startswith("linux") else found


def run(settings: WorkerSettings, *, drain_grace_s: float, env_file: str | None) -> int:
    platform = service_platform()
    try:
        done = install(
            settings,
            platform=platform,
            home=Path.home(),
            drain_grace_s=drain_grace_s,
            env_file=Path(env_file).absolute() if env_file else None,
        )
    except (ValueError, OSError) as exc:
        print(f"fleet-worker install-service: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {done.service_file}")
    print(
        f"{'wrote' if done.env_written else 'kept'} {done.env_file}"
        " (only you can read it: it holds the API key)"
    )
    print("start it with:")
    for step in done.next_steps:
        print(f"  {step}")
    return 0
