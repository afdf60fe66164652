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
from xml.sax.saxutils import escape

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


def env_lines(settings: WorkerSettings) -> list[str]:
    """The settings a worker needs, as an env file."""
    lines = [
        f"FARM_BROKER__URL={settings.broker.url}",
        f"FARM_WORKER_ID={settings.worker_id}",
        f"FARM_API_KEY={settings.api_key.get_secret_value()}",
        f"FARM_OLLAMA_HOST={settings.ollama_host}",
        f"FARM_CONCURRENCY={settings.concurrency}",
    ]
    if settings.models:
        lines.append(f"FARM_MODELS={json.dumps(settings.models)}")
    if settings.broker.ca_file:
        lines.append(f"FARM_BROKER__CA_FILE={settings.broker.ca_file}")
    return lines


def install(
    settings: WorkerSettings,
    *,
    platform: str,
    home: Path,
    drain_grace_s: float,
    env_file: Path | None = None,
    python: str = sys.executable,
) -> Installed:
    env_path = env_file or home / ".config" / "llama-farm" / "worker.env"
    written = False
    if not env_path.exists():
        if not settings.worker_id or not settings.api_key.get_secret_value():
            raise ValueError(
                f"{env_path} does not exist and FARM_WORKER_ID / FARM_API_KEY are not set: "
                "set them (or pass --env-file with a file that has them)"
            )
        env_path.parent.mkdir(parents=True, exist_ok=True)
        env_path.touch(mode=0o600)
        env_path.write_text("\n".join(env_lines(settings)) + "\n")
        os.chmod(env_path, 0o600)  # it holds the API key
        written = True
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
        text = _fill(
            _template(f"{AGENT}.plist.in"),
            {
                "program_arguments": "\n".join(f"    <string>{escape(a)}</string>" for a in args),
                "stop_timeout": stop_timeout,
                "log_file": escape(str(log_file)),
            },
        )
        steps = [f"launchctl load -w {path}", f"tail -f {log_file}      # its log"]
    else:
        raise ValueError(
            f"install-service knows Linux (systemd) and macOS (launchd), not {platform}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return Installed(path, env_path, written, steps)


def run(settings: WorkerSettings, *, drain_grace_s: float, env_file: str | None) -> int:
    platform = os.environ.get("FARM_SERVICE_PLATFORM") or sys.platform
    platform = "linux" if platform.startswith("linux") else platform
    try:
        done = install(
            settings,
            platform=platform,
            home=Path.home(),
            drain_grace_s=drain_grace_s,
            env_file=Path(env_file) if env_file else None,
        )
    except (ValueError, OSError) as exc:
        print(f"fleet-worker install-service: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {done.service_file}")
    print(
        f"{'wrote' if done.env_written else 'kept'} {done.env_file}"
        + (" (only you can read it: it holds the API key)" if done.env_written else "")
    )
    print("start it with:")
    for step in done.next_steps:
        print(f"  {step}")
    return 0
