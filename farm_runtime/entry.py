"""What every command shares: its version, its common options, its exit codes, and
settings errors told in one line each instead of a traceback.

Exit codes (docs/OPERATIONS.md, "Exit codes"): the service units do not restart a
service that stopped for its configuration or its credentials (``EXIT_CONFIG``,
``EXIT_CREDENTIALS``): a restart cannot fix them, and a restart every 10 s forever
hides them."""

import argparse
import functools
import re
from importlib import metadata
from typing import Any, TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings, SettingsError

EXIT_OK = 0
EXIT_FAILED = 1  # it ran and failed (a crash, a service that died): worth a restart
EXIT_CONFIG = 2  # a setting is wrong or missing: fix the settings file
EXIT_CREDENTIALS = 3  # the broker refused the worker's id and key: rotate or re-enrol

S = TypeVar("S", bound=BaseSettings)


@functools.cache
def version() -> str:
    """The installed package's version (one place: pyproject.toml)."""
    try:
        return metadata.version("llama-farm")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    parser.add_argument(
        "--log-format",
        choices=["text", "json"],
        default=None,
        help="text (default) or json: one JSON object a line (also FARM_LOG_FORMAT)",
    )
    parser.add_argument(
        "--log-file", help="log to this file, rotated at 10 MB (default: standard error)"
    )


class ConfigError(Exception):
    """Settings that cannot be used, each problem a line that names the setting."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def load_settings(cls: type[S], **given: Any) -> S:
    """``cls(**given)``, or ConfigError saying which setting is wrong and what it needs."""
    try:
        return cls(**given)
    except ValidationError as exc:
        raise ConfigError([_problem(cls, e) for e in exc.errors()]) from None
    except SettingsError as exc:
        raise ConfigError([_unparsed(cls, exc)]) from None


def _env_name(cls: type[BaseSettings], loc: tuple[Any, ...]) -> str:
    prefix = str(cls.model_config.get("env_prefix") or "")
    delimiter = str(cls.model_config.get("env_nested_delimiter") or "__")
    return (prefix + delimiter.join(str(part) for part in loc)).upper()


def _problem(cls: type[BaseSettings], error: Any) -> str:
    name = _env_name(cls, tuple(error.get("loc") or ()))
    shown = error.get("input")
    got = f" (got {str(shown)[:60]!r})" if isinstance(shown, str | int | float) else ""
    return f"{name}: {error.get('msg', 'invalid')}{got}"


def _unparsed(cls: type[BaseSettings], exc: SettingsError) -> str:
    """pydantic-settings reads a list or an object from a variable as JSON."""
    found = re.search(r'field "([^"]+)"', str(exc))
    if found is None:
        return str(exc)
    field = found.group(1)
    info = cls.model_fields.get(field)
    kind = str(info.annotation) if info is not None else ""
    example = '["llama3", "mistral"]' if "list" in kind else '{"key": "value"}'
    return f"{_env_name(cls, (field,))}: must be written as JSON, like {example}"
