"""`llama-farm dev` as a real process, for tests that drive it from outside (a browser,
a fuzzer): started on a free port with the simulator, stopped with Ctrl-C, and checked to
have stopped cleanly."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from llama_farm.ports import free_port


@contextmanager
def dev_process(tmp_path: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """Yield the chat URL (ending in /) once the dev worker is online."""
    port = free_port()
    log_path = tmp_path / "dev.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llama_farm.cli",
                "dev",
                "--port",
                str(port),
                "--llm",
                "sim",
                "--data-dir",
                str(tmp_path / "farm"),
            ],
            cwd=tmp_path,
            env=dict(os.environ, **(env or {})),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "api/models", timeout=1).json().get("workers_online") == 1:
                    break
            except (httpx.HTTPError, ValueError):
                pass
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "llama-farm dev did not come up"
            time.sleep(0.1)
        yield url
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=20)
        output = log_path.read_text()
        assert process.returncode == 0, output[-5000:]
        assert "Traceback" not in output, output[-5000:]
        # the worker starts once the in-process simulator listens: no false alarm at start
        assert "worker unavailable" not in output, output[-5000:]
        assert "Chat:" in output
        assert url in output
