"""Every command's version, its settings errors in one line each (no traceback), and its
log lines (dated text, or JSON)."""

import json
import logging
import re
from pathlib import Path

import pytest

from farm_runtime.entry import EXIT_CONFIG, ConfigError, load_settings, version
from farm_runtime.logs import JsonFormatter
from fleet_worker.settings import WorkerSettings
from tests.support.processes import run_command


def test_a_setting_that_is_not_json_is_named_with_an_example(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FARM_MODELS", "llama3")
    with pytest.raises(ConfigError) as refused:
        load_settings(WorkerSettings)
    assert refused.value.problems == [
        'FARM_MODELS: must be written as JSON, like ["llama3", "mistral"]'
    ]


def test_every_wrong_setting_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FARM_CONCURRENCY", "many")
    monkeypatch.setenv("FARM_BROKER__KEEPALIVE", "0")
    with pytest.raises(ConfigError) as refused:
        load_settings(WorkerSettings)
    assert sorted(refused.value.problems) == [
        "FARM_BROKER__KEEPALIVE: Input should be greater than or equal to 1 (got '0')",
        "FARM_CONCURRENCY: Input should be a valid integer, unable to parse string as an"
        " integer (got 'many')",
    ]


def test_the_commands_say_their_version_and_refuse_bad_settings_in_one_line(
    tmp_path: Path,
) -> None:
    for module in ("llama_farm.cli", "fleet_worker.cli"):
        shown = run_command(tmp_path, module, "--version")
        assert shown.returncode == 0
        assert shown.stdout.split()[-1] == version()
    refused = run_command(tmp_path, "fleet_worker.cli", FARM_MODELS="llama3")  # run the worker
    assert refused.returncode == EXIT_CONFIG
    assert refused.stderr.strip() == (
        'fleet-worker: FARM_MODELS: must be written as JSON, like ["llama3", "mistral"]'
    )
    coordinator = run_command(tmp_path, "llama_farm.cli", "coordinator", FARM_HTTP_PORT="port")
    assert coordinator.returncode == EXIT_CONFIG
    assert "Traceback" not in coordinator.stderr
    assert coordinator.stderr.strip().startswith("llama-farm coordinator: FARM_HTTP_PORT: ")


def test_log_lines_carry_the_date_or_are_json(tmp_path: Path) -> None:
    record = logging.LogRecord("farm.test", logging.WARNING, __file__, 1, "hello %s", ("x",), None)
    entry = json.loads(JsonFormatter().format(record))
    assert [entry["level"], entry["logger"], entry["message"]] == [
        "WARNING",
        "farm.test",
        "hello x",
    ]
    assert entry["time"].endswith("+00:00")

    database = f"sqlite:///{tmp_path / 'farm.sqlite3'}"
    text = run_command(
        tmp_path, "llama_farm.cli", "workers", "list", "--create", FARM_DATABASE_URL=database
    )
    (line,) = [x for x in text.stderr.splitlines() if "created database schema" in x]
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d INFO ", line), line
    as_json = run_command(
        tmp_path / "..",
        "llama_farm.cli",
        "--log-format",
        "json",
        "workers",
        "list",
        "--create",
        FARM_DATABASE_URL=f"sqlite:///{tmp_path / 'other.sqlite3'}",
    )
    (created,) = [json.loads(x) for x in as_json.stderr.splitlines() if "schema" in x]
    assert created["logger"] == "coordinator.db.database"


def test_a_log_file_is_rotated(tmp_path: Path) -> None:
    """What a launchd agent logs to (launchd itself never rotates): 10 MB, 3 kept."""
    from logging.handlers import RotatingFileHandler

    from farm_runtime.logs import LOG_FILE_BYTES, configure_logging

    root = logging.getLogger()
    before = list(root.handlers)
    try:
        root.handlers.clear()
        configure_logging("INFO", None, str(tmp_path / "logs" / "worker.log"))
        (handler,) = root.handlers
        assert isinstance(handler, RotatingFileHandler)
        assert (handler.maxBytes, handler.backupCount) == (LOG_FILE_BYTES, 3)
        logging.getLogger("farm.test").warning("to the file")
        handler.flush()
        assert "WARNING farm.test: to the file" in (tmp_path / "logs" / "worker.log").read_text()
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:] = before
