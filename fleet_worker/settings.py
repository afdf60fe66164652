"""Worker settings: environment (prefix ``FARM_``), ``.env``, or a config file."""

from typing import Any

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from farm_runtime.broker import BrokerSettings
from farm_runtime.settings import moved

# Settings once spelled otherwise: the old field -> (group, field) of the new one.
_RENAMED = {
    "broker_url": ("broker", "url"),
    "broker_ca_file": ("broker", "ca_file"),
    "broker_keepalive_s": ("broker", "keepalive"),
}


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FARM_", env_file=".env", env_nested_delimiter="__", extra="ignore"
    )

    # FARM_BROKER__URL, FARM_BROKER__CA_FILE (a private CA for mqtts://) and
    # FARM_BROKER__KEEPALIVE; the login is the worker's id and key (below).
    broker: BrokerSettings = BrokerSettings()
    # The old spellings, still read (with a warning naming the new one).
    broker_url: str | None = Field(default=None, exclude=True)
    broker_ca_file: str | None = Field(default=None, exclude=True)
    broker_keepalive_s: int | None = Field(default=None, exclude=True)
    worker_id: str = ""
    api_key: SecretStr = SecretStr("")
    ollama_host: str = Field(
        default="http://127.0.0.1:11434",
        validation_alias=AliasChoices("FARM_OLLAMA_HOST", "OLLAMA_HOST"),
    )
    # Models this machine serves; empty means every model Ollama has pulled.
    models: list[str] = []
    # Pull a configured model that Ollama does not have yet when a job asks for it.
    pull_missing: bool = True
    concurrency: int = Field(default=1, ge=1, le=64)  # match OLLAMA_NUM_PARALLEL
    heartbeat_s: float = 2.0
    inventory_s: float = 30.0  # how often the model inventory is refreshed
    # A chunk goes out when its oldest token has waited this long or it has this many
    # characters (benchmarks/chunking.py; docs/PERFORMANCE.md). Cutting at sentence
    # delimiters too cost 1.1-1.5x the messages for 6-7 ms less mean wait: off by default.
    chunk_max_delay_ms: float = 50.0
    chunk_max_chars: int = 100
    chunk_on_delimiter: bool = False
    # How often the reply's text so far goes to the coordinators (which store it; live
    # chunks go only to the people watching). The first chunk is checkpointed at once.
    checkpoint_s: float = Field(default=1.0, gt=0, le=30)
    first_token_timeout_s: float = 300.0  # includes loading a model into memory
    token_timeout_s: float = 60.0

    @model_validator(mode="before")
    @classmethod
    def _old_spellings(cls, data: Any) -> Any:
        return moved(data, _RENAMED) if isinstance(data, dict) else data

    def broker_login(self) -> BrokerSettings:
        """The broker settings with this worker's login."""
        return self.broker.model_copy(
            update={
                "username": self.worker_id or None,
                "password": self.api_key if self.api_key.get_secret_value() else None,
            }
        )
