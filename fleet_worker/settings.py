"""Worker settings: environment (prefix ``FARM_``), ``.env``, or a config file."""

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from farm_runtime.broker import BrokerSettings


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FARM_", env_file=".env", env_nested_delimiter="__", extra="ignore"
    )

    broker_url: str = "mqtt://127.0.0.1:1883"
    broker_ca_file: str | None = None
    # MQTT keepalive: a dead connection (a network cut) is noticed after 1.5x this, by
    # the worker and by the broker (which then publishes the worker's Last Will).
    broker_keepalive_s: int = Field(default=15, ge=1, le=600)
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
    first_token_timeout_s: float = 300.0  # includes loading a model into memory
    token_timeout_s: float = 60.0

    def broker(self) -> BrokerSettings:
        return BrokerSettings(
            url=self.broker_url,
            username=self.worker_id or None,
            password=self.api_key if self.api_key.get_secret_value() else None,
            ca_file=self.broker_ca_file,
            keepalive=self.broker_keepalive_s,
        )
