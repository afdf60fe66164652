"""``fleet-worker doctor``: check what this worker needs, and say plainly what to fix.

Checks, in order: the settings, the broker (reachable, and our login accepted), Ollama
(reachable), the models this worker is configured to serve, and Ollama's parallelism
against the worker's. Every check runs whatever failed before it (a wrong setting is
taken at its default for the rest), so one run lists every problem. Each check prints one
line, ``ok`` or ``FAIL`` with the fix; the exit status is 0 when everything is ok.

Logging in uses this worker's client id, which the broker binds to its credentials: a
``fleet-worker`` service running with the same id is disconnected for a moment (it
reconnects by itself). ``--no-login`` skips that step.
"""

import asyncio
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiomqtt

from farm_protocol.acl import worker_client_id
from farm_protocol.errors import TopicError
from farm_protocol.ids import check_id
from farm_protocol.models import normalize_model
from farm_runtime.broker import is_auth_failure, make_client, parse_broker_url
from farm_runtime.entry import ConfigError, load_settings
from fleet_worker.llm import LlmError, OllamaBackend
from fleet_worker.settings import WorkerSettings


@dataclass(frozen=True, slots=True)
class Finding:
    ok: bool
    what: str
    fix: str = ""

    def line(self) -> str:
        return (
            f"  ok    {self.what}" if self.ok else f"  FAIL  {self.what}\n        fix: {self.fix}"
        )


async def diagnose(
    settings: WorkerSettings, *, login: bool = True, env: Mapping[str, str] = os.environ
) -> list[Finding]:
    """Every check, whatever fails before it: a person fixes everything in one go."""
    findings = _settings(settings)
    broker = await _broker(settings)
    findings.append(broker)
    if broker.ok and login and all(f.ok for f in findings):
        findings.append(await _login(settings))
    findings += await _ollama(settings)
    findings.append(_parallel(settings, env))
    return findings


def settings_or_findings(given: dict[str, Any]) -> tuple[WorkerSettings, list[Finding]]:
    """The worker's settings, and a FAIL for each that cannot be used; the checks then run
    with those at their defaults (a wrong FARM_MODELS still lets Ollama be checked)."""
    try:
        return load_settings(WorkerSettings, **given), []
    except ConfigError as exc:
        problems = exc.problems
    findings = [Finding(False, problem, "fix it in the settings file") for problem in problems]
    # The rest of the checks with the wrong settings left out (at their defaults).
    wrong = {p.split(":", 1)[0] for p in problems}
    kept = {k: v for k, v in os.environ.items() if k.upper() not in wrong}
    saved = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update(kept)
        return load_settings(WorkerSettings, **given), findings
    except ConfigError:  # wrong in the settings file itself: defaults for everything
        return WorkerSettings.model_construct(), findings
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _settings(settings: WorkerSettings) -> list[Finding]:
    found = []
    try:
        check_id(settings.worker_id, "worker id")
    except TopicError:
        found.append(
            Finding(
                False,
                f"worker id {settings.worker_id!r}",
                "set FARM_WORKER_ID to the id `llama-farm workers add` printed",
            )
        )
    if not settings.api_key.get_secret_value().startswith("lf_"):
        found.append(
            Finding(
                False,
                "API key",
                "set FARM_API_KEY to the key `llama-farm workers add` printed (it starts lf_)",
            )
        )
    if not found:
        found.append(Finding(True, f"settings: worker {settings.worker_id}, key present"))
    return found


def _parallel(settings: WorkerSettings, env: Mapping[str, str]) -> Finding:
    """Ollama runs OLLAMA_NUM_PARALLEL requests of a model at once; jobs beyond it wait
    inside Ollama, holding a farm slot and counting as slow."""
    want = settings.concurrency
    given = env.get("OLLAMA_NUM_PARALLEL", "").strip()
    if not given:
        if want == 1:
            return Finding(True, "FARM_CONCURRENCY 1: one job at a time")
        return Finding(
            True,
            f"FARM_CONCURRENCY {want}; OLLAMA_NUM_PARALLEL is not set here (Ollama then picks"
            f" 1 or 4 by memory): where Ollama runs, set it to at least {want}",
        )
    if not given.isdigit() or int(given) < want:
        return Finding(
            False,
            f"OLLAMA_NUM_PARALLEL={given} is below FARM_CONCURRENCY={want}",
            f"set FARM_CONCURRENCY={given if given.isdigit() else 1}, or start Ollama with"
            f" OLLAMA_NUM_PARALLEL={want}",
        )
    return Finding(True, f"OLLAMA_NUM_PARALLEL={given} covers FARM_CONCURRENCY={want}")


async def _broker(settings: WorkerSettings) -> Finding:
    try:
        address = parse_broker_url(settings.broker.url)
    except ValueError as exc:
        return Finding(False, f"broker URL {settings.broker.url!r}", str(exc))
    where = f"{address.host}:{address.port}"
    try:
        context = (
            ssl.create_default_context(cafile=settings.broker.ca_file) if address.tls else None
        )
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(address.host, address.port, ssl=context), timeout=5
        )
        writer.close()
        await writer.wait_closed()
    except (OSError, TimeoutError, ssl.SSLError) as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
        return Finding(
            False,
            f"broker {where} unreachable ({reason})",
            "check FARM_BROKER__URL and this machine's outbound network (the worker dials out; "
            "no inbound port is needed)",
        )
    return Finding(True, f"broker {where} reachable" + (" over TLS" if address.tls else ""))


async def _login(settings: WorkerSettings) -> Finding:
    client = make_client(settings.broker_login(), identifier=worker_client_id(settings.worker_id))
    try:
        async with client:
            pass
    except aiomqtt.MqttError as exc:
        if is_auth_failure(exc):
            return Finding(
                False,
                "the broker refused our credentials",
                "check FARM_WORKER_ID and FARM_API_KEY; after `llama-farm workers rotate` the "
                "new key must be set here",
            )
        return Finding(False, f"broker login failed ({exc})", "see the broker's log")
    return Finding(True, "broker accepted this worker's login")


async def _ollama(settings: WorkerSettings) -> list[Finding]:
    backend = OllamaBackend(settings.ollama_host, first_token_timeout_s=10, token_timeout_s=10)
    try:
        inventory = await backend.inventory()
    except LlmError as exc:
        await backend.close()
        return [
            Finding(
                False,
                f"Ollama at {settings.ollama_host} ({exc.reason})",
                "start Ollama (`ollama serve`) or set FARM_OLLAMA_HOST / OLLAMA_HOST",
            )
        ]
    await backend.close()
    found = [
        Finding(
            True,
            f"Ollama at {settings.ollama_host}: {len(inventory.models)} model(s)"
            + (" (simulated)" if inventory.simulated else ""),
        )
    ]
    wanted = [normalize_model(m) for m in settings.models]
    if not wanted and not inventory.models:
        found.append(Finding(False, "no models pulled", "pull one, e.g. `ollama pull llama3`"))
    for model in wanted:
        if model in inventory.models:
            found.append(Finding(True, f"model {model} pulled"))
        elif settings.pull_missing:
            found.append(Finding(True, f"model {model} not pulled yet: pulled on its first job"))
        else:
            found.append(Finding(False, f"model {model} not pulled", f"run `ollama pull {model}`"))
    return found


def run(given: dict[str, Any], *, login: bool) -> int:
    settings, findings = settings_or_findings(given)
    findings += asyncio.run(diagnose(settings, login=login))
    print(f"fleet-worker doctor ({settings.worker_id or 'no worker id'}):")
    for finding in findings:
        print(finding.line())
    failed = [f for f in findings if not f.ok]
    print("all good" if not failed else f"{len(failed)} problem(s) to fix")
    return 0 if not failed else 1
