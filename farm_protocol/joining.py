"""The line an admin gives a new worker's owner (``llama-farm workers add``), and that
``fleet-worker join`` reads: the broker's address for workers, the farm's web address
(where the worker exchanges the token for its key, and where the owner sees it online),
and a one-time enrolment token that expires. The key itself is never in it: nobody but
the laptop ever sees the key, and the line is worth nothing once used."""

import base64
import json

from pydantic import BaseModel, ConfigDict, Field, ValidationError

PREFIX = "lfj1_"


class JoinLine(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    broker: str = Field(min_length=1, max_length=500)  # mqtts://farm.example.org:8883
    farm: str = Field(min_length=1, max_length=500)  # https://chat.example.org
    token: str = Field(min_length=20, max_length=200)

    def encode(self) -> str:
        raw = json.dumps(self.model_dump(), separators=(",", ":")).encode()
        return PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, line: str) -> "JoinLine":
        """ValueError (saying what it should look like) for anything else."""
        text = line.strip()
        if not text.startswith(PREFIX):
            raise ValueError(f"a join line starts with {PREFIX}: ask the farm's admin for it")
        body = text[len(PREFIX) :]
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            return cls.model_validate_json(raw)
        except (ValueError, ValidationError) as exc:
            raise ValueError(
                "this join line is damaged (copied in part?): ask the farm's admin for it again"
            ) from exc


class Enrolled(BaseModel):
    """What a redeemed token gives the worker."""

    worker_id: str
    api_key: str
