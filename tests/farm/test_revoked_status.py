"""A revoked worker's retained status is cleared from the broker by the coordinator, so
that whoever subscribes later (an operator's `mosquitto_sub`, a new coordinator) does not
see it online; an empty retained message is no bad input to the coordinator."""

import json
import secrets
from pathlib import Path
from typing import Any

import pytest

from farm_protocol import topics
from farm_runtime.broker import make_client
from tests.support.brokers import broker_of
from tests.support.farm import running_farm, wait_until

TOKEN = "admin-" + "t" * 30


async def _retained_statuses(settings: Any) -> dict[str, str]:
    """Every worker's retained status now: subscribe, then send a marker after the
    subscription; the broker sends the retained messages before it."""
    found: dict[str, str] = {}
    marker = f"farm/test/marker-{secrets.token_hex(4)}"
    async with make_client(settings, identifier=f"probe-{secrets.token_hex(4)}") as client:
        await client.subscribe(topics.ALL_STATUS, qos=1)
        await client.subscribe(marker, qos=1)
        await client.publish(marker, b"end", qos=1)
        async for message in client.messages:
            if message.topic.value == marker:
                return found
            if message.payload:
                worker = message.topic.value.split("/")[-2]
                found[worker] = json.loads(message.payload)["state"]
    return found


async def test_a_revoked_workers_status_leaves_the_broker(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with (
        broker_of("mosquitto") as broker,
        running_farm(
            tmp_path, broker, workers=2, coordinator_settings={"admin_token": TOKEN}
        ) as farm,
    ):
        before = await _retained_statuses(broker.settings())
        assert before == {"test-worker-0": "online", "test-worker-1": "online"}
        admin = farm.admin(TOKEN)
        revoked = await admin.post("/workers/test-worker-1/revoke")
        assert revoked.status_code == 200, revoked.text

        async def cleared() -> bool:
            now = await _retained_statuses(broker.settings())
            return "test-worker-1" not in now and now["test-worker-0"] == "online"

        await wait_until(cleared, what="the revoked worker's status to be cleared")
    # the coordinator took the empty retained message (its own) as no bad input
    assert not [r for r in caplog.records if "dropped message" in r.getMessage()]
