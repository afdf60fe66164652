"""Farm services as real OS processes (``python -m llama_farm.cli ...``), for the tests
and benchmarks that run them from outside: starting one with its output in a log file,
and waiting until it answers over HTTP (or dies, with its log in the error)."""

import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx

from farm_runtime.broker import BrokerSettings


def broker_env(settings: BrokerSettings) -> dict[str, str]:
    """The environment that gives a service these broker settings."""
    password = settings.password.get_secret_value() if settings.password else ""
    return {
        "FARM_BROKER__URL": settings.url,
        "FARM_BROKER__USERNAME": settings.username or "",
        "FARM_BROKER__PASSWORD": password,
    }


def start_service(
    args: Sequence[str],
    env: dict[str, str],
    cwd: Path,
    log: Path,
    python: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    """``llama-farm ARGS`` (``python`` adds interpreter options, e.g. ``-m cProfile``),
    its stdout and stderr appended to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, *python, "-m", "llama_farm.cli", *args],
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def wait_http(
    url: str,
    process: subprocess.Popen[bytes],
    log: Path,
    ready: Callable[[httpx.Response], bool] = lambda r: r.status_code < 500,
    timeout_s: float = 30,
) -> None:
    """Poll ``url`` until ``ready`` says yes. Raises with the end of the log if the
    process exits first, TimeoutError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if ready(httpx.get(url, timeout=1)):
                return
        except (httpx.HTTPError, ValueError):  # not up yet, or not JSON yet
            pass
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the process exited: {log.read_text()[-5000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not come up within {timeout_s:.0f} s")
        time.sleep(0.1)


def run_command(cwd: Path, *args: str, **env: str) -> "subprocess.CompletedProcess[str]":
    """``python -m ARGS`` to its end, in a clean environment (none of this shell's FARM_ or
    OLLAMA_ settings) plus ``env``, as a person would run it in ``cwd``."""
    import os

    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FARM_", "OLLAMA_"))}
    return subprocess.run(
        [sys.executable, "-m", *args],
        capture_output=True,
        text=True,
        env=clean | env,
        cwd=cwd,
        timeout=90,
    )
