"""`llama-farm dev` as a real process, for tests that drive it from outside (a browser,
a fuzzer): started on a free port with the simulator, stopped with Ctrl-C, and checked to
have stopped cleanly."""

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from llama_farm.ports import free_port
from tests.support.processes import start_service, wait_http


@contextmanager
def dev_process(tmp_path: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """Yield the chat URL (ending in /) once the dev worker is online."""
    port = free_port()
    log_path = tmp_path / "dev.log"
    process = start_service(
        ["dev", "--port", str(port), "--llm", "sim", "--data-dir", str(tmp_path / "farm")],
        dict(os.environ, **(env or {})),
        tmp_path,
        log_path,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_http(
            url + "api/models",
            process,
            log_path,
            ready=lambda r: bool(r.json().get("workers_online") == 1),
        )
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
