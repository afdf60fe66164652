"""Simulator settings (prefix ``FARM_SIM_``)."""

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

Fault = Literal["none", "http_error", "error_mid_stream", "hang"]
ReplyMode = Literal["lorem", "echo"]


class SimSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FARM_SIM_", env_file=".env", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 11434
    # Models already pulled; others in ``pullable`` can be pulled with /api/pull.
    models: list[str] = ["llama3", "codegemma", "codellama:7b", "llama2", "mistral"]
    pullable: list[str] = ["phi3", "gemma2", "qwen2"]
    reply: ReplyMode = "lorem"  # "echo" repeats the last user message back, token by token
    reply_tokens: int = Field(default=40, ge=1, le=100_000)  # lorem length unless num_predict
    ttft_ms: float = Field(default=150.0, ge=0)  # time to first token (model loaded)
    load_ms: float = Field(default=0.0, ge=0)  # extra first-token time when not in memory
    tokens_per_s: float = Field(default=30.0, ge=0)  # 0 = as fast as possible
    keep_alive_s: float = 300.0  # how long a model stays "loaded" after a request
    fault: Fault = "none"  # applied to every chat/generate request
    # The length of the vectors /api/embed gives (any model embeds, unless asked for
    # ``dimensions``)
    embedding_dims: int = Field(default=8, ge=1, le=8192)
