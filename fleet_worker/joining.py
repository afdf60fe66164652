"""``fleet-worker join LINE`` and ``fleet-worker leave``: a machine joins the farm with the
one line its admin gave (``llama-farm workers add``), and leaves it with one command.

join: checks Ollama and its models (suggesting ``ollama pull`` for what the farm serves
and this machine lacks), exchanges the line's one-time token for this worker's key on the
farm's web address, writes the settings file (mode 0600, absolute paths), installs and
starts the service (systemd user unit, or launchd agent with ``launchctl bootstrap``),
runs ``doctor`` and prints the farm page where the machine shows online. Nothing is
spent or written before Ollama answers with a model.

leave: stops and removes the service and the settings file (and says how the admin
revokes the worker)."""

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import httpx
from pydantic import SecretStr, ValidationError

from farm_protocol.joining import Enrolled, JoinLine
from farm_protocol.models import normalize_model
from farm_runtime.broker import BrokerSettings
from farm_runtime.entry import EXIT_CONFIG, EXIT_CREDENTIALS, EXIT_FAILED, EXIT_OK
from fleet_worker import doctor, install_service
from fleet_worker.llm import Inventory, LlmError, OllamaBackend
from fleet_worker.settings import WorkerSettings

DEFAULT_ENV = Path(".config") / "llama-farm" / "worker.env"


class JoinFailed(Exception):
    """A step of joining could not be done: the message says why and what to do."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


async def _ollama(host: str) -> Inventory:
    backend = OllamaBackend(host, first_token_timeout_s=10, token_timeout_s=10)
    try:
        return await backend.inventory()
    except LlmError as exc:
        raise JoinFailed(
            f"Ollama does not answer at {host} ({exc.reason}): install it"
            " (https://ollama.com/download), start it, and run this again (OLLAMA_HOST if it"
            " listens elsewhere)"
        ) from None
    finally:
        await backend.close()


async def _farm_models(http: httpx.AsyncClient, farm: str) -> list[str]:
    """What the farm serves or offers (for the suggestions; empty if it does not say)."""
    try:
        found = (await http.get(f"{farm}/api/models")).json()
    except (httpx.HTTPError, ValueError):
        return []
    return [str(m) for m in [*found.get("models", []), *found.get("unavailable", [])]]


async def _enrol(http: httpx.AsyncClient, line: JoinLine) -> Enrolled:
    try:
        answer = await http.post(f"{line.farm}/api/enrol", json={"token": line.token})
    except httpx.HTTPError as exc:
        raise JoinFailed(f"the farm at {line.farm} cannot be reached ({exc})") from None
    if answer.status_code == 404:
        raise JoinFailed(str(answer.json().get("error", answer.text)), EXIT_CREDENTIALS)
    if answer.status_code != 200:
        raise JoinFailed(f"the farm answered {answer.status_code}: {answer.text[:300]}")
    try:
        return Enrolled.model_validate_json(answer.content)
    except ValidationError:
        raise JoinFailed(f"the farm answered what a farm does not: {answer.text[:300]}") from None


def _run(steps: list[list[str]]) -> list[str]:
    """Run each command; the problems, as lines to print."""
    problems = []
    for step in steps:
        try:
            # our own fixed commands (systemctl, launchctl), no shell
            done = subprocess.run(step, capture_output=True, text=True, timeout=60)  # noqa: S603
        except (OSError, subprocess.TimeoutExpired) as exc:
            problems.append(f"{' '.join(step)}: {exc}")
            continue
        if done.returncode != 0:
            problems.append(f"{' '.join(step)}: {(done.stderr or done.stdout).strip()}")
    return problems


def _start_steps(where: str, service_file: Path) -> list[list[str]]:
    if where == "linux":
        unit = install_service.UNIT
        return [
            ["systemctl", "--user", "daemon-reload"],
            ["systemctl", "--user", "enable", "--now", unit],
        ]
    domain = f"gui/{os.getuid()}"
    return [["launchctl", "bootstrap", domain, str(service_file)]]


def _stop_steps(where: str) -> list[list[str]]:
    if where == "linux":
        return [["systemctl", "--user", "disable", "--now", install_service.UNIT]]
    return [["launchctl", "bootout", f"gui/{os.getuid()}/{install_service.AGENT}"]]


async def join(
    line_text: str,
    *,
    home: Path,
    env_file: Path | None,
    concurrency: int,
    start: bool,
    drain_grace_s: float = 30.0,
) -> int:
    try:
        line = JoinLine.decode(line_text)
    except ValueError as exc:
        raise JoinFailed(str(exc), EXIT_CONFIG) from None
    host = os.environ.get("FARM_OLLAMA_HOST") or os.environ.get("OLLAMA_HOST") or ""
    host = host or "http://127.0.0.1:11434"
    inventory = await _ollama(host)
    print(f"ok    Ollama at {host}: {', '.join(inventory.models) or 'no models'}")
    async with httpx.AsyncClient(timeout=30) as http:
        wanted = await _farm_models(http, line.farm)
        have = set(inventory.models)
        missing = [m for m in wanted if normalize_model(m) not in have]
        if not inventory.models:
            pull = missing[0] if missing else "llama3"
            raise JoinFailed(f"Ollama has no model yet: `ollama pull {pull}`, then run this again")
        for model in missing:
            print(f"note  the farm serves {model}; to serve it too: ollama pull {model}")
        enrolled = await _enrol(http, line)
    print(f"ok    this machine is worker {enrolled.worker_id} of {line.farm}")
    settings = WorkerSettings(
        _env_file=None,
        broker=BrokerSettings(url=line.broker),
        worker_id=enrolled.worker_id,
        api_key=SecretStr(enrolled.api_key),
        ollama_host=host,
        concurrency=concurrency,
    )
    where = install_service.service_platform()
    done = install_service.install(
        settings, platform=where, home=home, drain_grace_s=drain_grace_s, env_file=env_file
    )
    print(f"ok    settings in {done.env_file} (only you can read it: it holds the key)")
    print(f"ok    service {done.service_file}")
    if start:
        problems = _run(_start_steps(where, done.service_file))
        for problem in problems:
            print(f"FAIL  starting it: {problem}")
        if problems:
            print("      start it by hand:", *done.next_steps, sep="\n        ")
        else:
            print("ok    started")
    else:
        print("      not started (--no-start); to start it:", *done.next_steps, sep="\n        ")
    findings = await doctor.diagnose(settings, login=not start)  # a login bumps the service
    for finding in findings:
        print(finding.line())
    print(f"\nDone. {enrolled.worker_id} shows on {line.farm.rstrip('/')}/farm once it is online.")
    return EXIT_OK if all(f.ok for f in findings) else EXIT_FAILED


def leave(*, home: Path, env_file: Path | None, stop: bool) -> int:
    where = install_service.service_platform()
    env_path = (env_file or home / DEFAULT_ENV).absolute()
    if where == "linux":
        service = home / ".config" / "systemd" / "user" / install_service.UNIT
    else:
        service = home / "Library" / "LaunchAgents" / f"{install_service.AGENT}.plist"
    worker_id = (
        install_service.read_env(env_path).get("FARM_WORKER_ID") if env_path.exists() else None
    )
    if stop:
        for problem in _run(_stop_steps(where)):
            print(f"note  stopping it: {problem}")
    for path in (service, env_path):
        if path.exists():
            path.unlink()
            print(f"removed {path}")
    if stop and where == "linux":
        _run([["systemctl", "--user", "daemon-reload"]])
    if worker_id:
        print(
            f"This machine left the farm. Its admin can revoke worker {worker_id} for good:"
            f" llama-farm workers revoke {worker_id}"
        )
    return EXIT_OK


def run_join(line: str, *, env_file: str | None, concurrency: int, start: bool) -> int:
    try:
        return asyncio.run(
            join(
                line,
                home=Path.home(),
                env_file=Path(env_file) if env_file else None,
                concurrency=concurrency,
                start=start,
            )
        )
    except JoinFailed as exc:
        print(f"fleet-worker join: {exc}", file=sys.stderr)
        return exc.code
