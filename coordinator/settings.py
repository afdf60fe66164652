"""Coordinator settings, read from the environment and ``.env`` (prefix ``FARM_``)."""

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from farm_runtime.broker import BrokerSettings


class CoordinatorSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FARM_", env_file=".env", env_nested_delimiter="__", extra="ignore"
    )

    database_url: str = "sqlite:///farm.sqlite3"
    broker: BrokerSettings = BrokerSettings()
    # MQTT client id, one per coordinator process (its session is clean: see service.py).
    coordinator_client_id: str = "farm-coordinator"
    http_host: str = "127.0.0.1"
    http_port: int = 8700
    # The webapp presents this bearer token on the chat API.
    service_token: SecretStr = Field(default=SecretStr(""))
    # Broker provisioning (Mosquitto dynamic security): the dynsec admin account. Unset:
    # worker accounts are not managed by the coordinator (dev broker, or by hand).
    broker_admin_username: str | None = None
    broker_admin_password: SecretStr | None = None
    reconcile_interval_s: float = 300.0  # how often broker accounts are checked
    # Worker keys are derived from this secret, so broker accounts can be re-created
    # (see coordinator.keys.hashing). Keep it out of the database's backups. Empty: random keys.
    key_secret: SecretStr = Field(default=SecretStr(""))
    # Bearer token of the admin API (/api/v1/admin); empty keeps that API closed.
    admin_token: SecretStr = Field(default=SecretStr(""))
    # Where workers and people reach the farm from outside, for the line a new worker joins
    # with (`llama-farm workers add`): the chat's address (https://chat.example.org) and
    # the broker's for workers (mqtts://farm.example.org:8883). Unset: `workers add`
    # prints the key instead, for a manual setup.
    public_url: str = ""
    public_broker_url: str = ""
    enrol_ttl_s: float = Field(default=86_400.0, gt=0)  # a join line expires after this
    # Models offered when the fleet is empty, in picker order (the original's list).
    default_models: list[str] = ["llama3", "codegemma", "codellama:7b", "llama2", "mistral"]
    context_messages: int = Field(default=5, ge=1)  # successful messages sent as context
    max_attempts: int = 3  # attempts per job before it fails for good
    quarantine_after: int = 3  # a worker failing this many jobs in a row is quarantined...
    quarantine_s: float = 60.0  # ...for this long (no new jobs), then let back in
    accept_timeout_s: float = 10.0  # a worker must answer "accepted" within this
    queue_timeout_s: float = 120.0  # longest wait in the queue
    first_token_timeout_s: float = 120.0  # accepted -> first token (includes model load)
    stall_timeout_s: float = 60.0  # longest silence between tokens
    reply_timeout_s: float = 600.0  # whole reply
    # Load shedding: at most this many requests wait; and while a model's oldest queued
    # request has waited over the target for a whole interval, new ones are refused.
    max_queued: int = Field(default=1000, ge=1)
    # An API key's requests beyond its concurrency wait their turn in the queue, up to this
    # many per concurrent slot (4: a key of 4 has 4 running and up to 16 waiting); beyond
    # that they get a 429 with Retry-After.
    api_key_backlog_per_slot: int = Field(default=4, ge=0, le=100)
    # A chat user has one reply generating at a time; messages sent meanwhile wait behind
    # it (each answered with the one before in its context), up to this many; beyond
    # that, 429.
    chat_backlog: int = Field(default=3, ge=0, le=20)
    # Admission by expected wait (coordinator.jobs.capacity): a model's queue holds only
    # what its workers can start within this fraction of the queue deadline, judged by how
    # long its jobs have taken lately, or this many seconds before any has finished.
    admit_fraction: float = Field(default=0.75, gt=0, le=1)
    reply_estimate_s: float = Field(default=20.0, gt=0)
    queue_target_s: float = 15.0
    queue_interval_s: float = 5.0
    # Rate limits (token buckets, as the original), per minute: per user, messages (burst
    # 3), new chats (burst 2), joining a chat and picking a new name (burst 1 each); per
    # client address, new identities (burst 50).
    rate_send_per_minute: float = Field(default=10.0, gt=0)
    rate_thread_per_minute: float = Field(default=1.0, gt=0)
    rate_join_per_minute: float = Field(default=60.0, gt=0)
    rate_rename_per_minute: float = Field(default=60.0, gt=0)
    rate_new_user_per_minute: float = Field(default=1.0, gt=0)
    worker_grace_s: float = 10.0  # a worker silent this long is offline
    # When a worker is lost after its reply started streaming: False fails the reply with a
    # reason (the user can retry it); True starts it again on another worker from scratch.
    requeue_lost_streaming: bool = False
    flush_interval_s: float = 0.1  # how often streamed text is written to the database
    sweep_interval_s: float = 1.0  # janitor period

    def broker_admin(self) -> BrokerSettings | None:
        """The dynsec admin's connection settings, if provisioning is configured."""
        if not self.broker_admin_username or self.broker_admin_password is None:
            return None
        return self.broker.model_copy(
            update={
                "username": self.broker_admin_username,
                "password": self.broker_admin_password,
            }
        )
