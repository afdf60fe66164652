"""Webapp settings (prefix ``FARM_``)."""

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from farm_runtime.broker import BrokerSettings


class WebappSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FARM_", env_file=".env", env_nested_delimiter="__", extra="ignore"
    )

    web_host: str = "127.0.0.1"
    web_port: int = 8000
    # Every coordinator, comma-separated ("http://10.0.0.5:8700,http://10.0.0.6:8700"), or
    # one load-balanced address: requests are spread over those that pass their health
    # check, and go to the others at once when one cannot be reached.
    coordinator_url: str = "http://127.0.0.1:8700"
    service_token: SecretStr = Field(default=SecretStr(""))
    broker: BrokerSettings = BrokerSettings()
    cookie_secure: bool = False  # set true behind TLS
    ws_queue_size: int = 2000  # events buffered per browser before it is told to reload
    max_request_bytes: int = 1_048_576
    # An API stream that has nothing to send (queued, or the model loading) sends an SSE
    # comment this often, so that proxies and clients do not time it out.
    sse_keepalive_s: float = Field(default=15.0, gt=0, le=300)
    # /metrics answers a scraper sending this as its bearer token; unset, it answers no one
    metrics_token: SecretStr = Field(default=SecretStr(""))
    # Behind this many reverse proxies (1 for the Caddy or nginx recipe in deploy/), the
    # browser's address is read from X-Forwarded-For; 0 trusts no such header. The
    # coordinator limits how fast new identities appear per address.
    forwarded_for_hops: int = Field(default=0, ge=0, le=5)
