"""``fleet-worker doctor``: check what this worker needs, and say plainly what to fix.

Checks, in order: the settings, the broker (reachable, and our login accepted), Ollama
(reachable), and the models this worker is configured to serve. Each check prints one
line, ``ok`` or ``FAIL`` with the fix; the exit status is 0 when everything is ok.

Logging in uses this worker's client id, which the broker binds to its credentials: a
``fleet-worker`` service running with the same id is disconnected for a moment (it
reconnects by itself). ``--no-login`` skips that step.
"""

import asyncio
import ssl
from dataclasses import dataclass

import aiomqtt

from farm_protocol.acl import worker_client_id
from farm_protocol.errors import TopicError
from farm_protocol.ids import check_id
from farm_protocol.models import normalize_model
from farm_runtime.broker import is_auth_failure, make_client, parse_broker_url
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


async def diagnose(settings: WorkerSettings, *, login: bool = True) -> list[Finding]:
    findings = [*_settings(settings)]
    if not findings[-1].ok:
        return findings
    broker = await _broker(settings)
    findings.append(broker)
    if broker.ok and login:
        findings.append(await _login(settings))
    findings += await _ollama(settings)
    return findings


def _settings(settings: WorkerSettings) -> list[Finding]:
    try:
        check_id(settings.worker_id, "worker id")
    except TopicError:
        return [
            Finding(
                False,
                f"worker id {settings.worker_id!r}",
                "set FARM_WORKER_ID to the id `llama-farm workers add` printed",
            )
        ]
    if not settings.api_key.get_secret_value().startswith("lf_"):
        return [
            Finding(
                False,
                "API key",
                "set FARM_API_KEY to the key `llama-farm workers add` printed (it starts lf_)",
            )
        ]
    return [Finding(True, f"settings: worker {settings.worker_id}, key present")]


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


def run(settings: WorkerSettings, *, login: bool) -> int:
    findings = asyncio.run(diagnose(settings, login=login))
    print(f"fleet-worker doctor ({settings.worker_id or 'no worker id'}):")
    for finding in findings:
        print(finding.line())
    failed = [f for f in findings if not f.ok]
    print("all good" if not failed else f"{len(failed)} problem(s) to fix")
    return 0 if not failed else 1
