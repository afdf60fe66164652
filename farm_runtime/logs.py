"""Logging, configured once by each command's entry point."""

import json
import logging
import os
import time
from datetime import UTC, datetime
from logging.handlers import RotatingFileHandler
from pathlib import Path

from farm_protocol.codec import preview


class JsonFormatter(logging.Formatter):
    """One JSON object a line, for log collectors: time (ISO 8601, UTC), level, logger,
    message, and the exception's traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


LOG_FILE_BYTES = 10 * 1024 * 1024  # a log file is rotated at this size, 3 kept


def configure_logging(
    level: str = "INFO", log_format: str | None = None, log_file: str | None = None
) -> None:
    """Text lines with the date and time (journald adds its own; a log file has only
    this), or JSON lines with ``log_format="json"`` (default: FARM_LOG_FORMAT). With
    ``log_file``, to that file, rotated at 10 MB with 3 old ones kept (a launchd agent's
    log would otherwise grow for ever); else to standard error."""
    handler: logging.Handler
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handler = RotatingFileHandler(log_file, maxBytes=LOG_FILE_BYTES, backupCount=3)
    else:
        handler = logging.StreamHandler()
    if (log_format or os.environ.get("FARM_LOG_FORMAT", "text")).lower() == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter(
                "%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%Y-%m-%d %H:%M:%S"
            )
        )
    logging.basicConfig(level=level.upper(), handlers=[handler])
    for noisy in ("httpx", "hypercorn.access", "amqtt", "transitions"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class DropLog:
    """Warnings about dropped input, at most one per source every ``every_s``: a worker
    flooding bad messages gets a line now and then saying how many were dropped, not a
    line per message (450 lines for 450 messages, before)."""

    def __init__(
        self,
        logger: logging.Logger,
        every_s: float = 10.0,
        sources: int = 10_000,
        level: int = logging.WARNING,
    ):
        self.logger = logger
        self.level = level
        self.every_s = every_s
        self.sources = sources
        self._last: dict[str, tuple[float, int]] = {}  # source -> (logged at, dropped since)

    def warn(self, source: str, message: str, *args: object) -> None:
        now = time.monotonic()
        logged_at, dropped = self._last.get(source, (-float("inf"), 0))
        if now - logged_at < self.every_s:
            self._last[source] = (logged_at, dropped + 1)
            return
        if dropped:
            message += f" (and {dropped} more dropped from {source} since the last report)"
        if len(self._last) >= self.sources:  # forget quiet sources rather than grow
            self._last = {s: v for s, v in self._last.items() if now - v[0] < self.every_s}
        self._last[source] = (now, 0)
        self.logger.log(self.level, message, *args)

    def message(self, source: str, topic: str, reason: object, payload: object) -> None:
        """An MQTT message dropped unhandled: its topic, why, and a preview of it."""
        self.warn(source, "dropped message on %s: %s [%s]", topic, reason, preview(payload))
