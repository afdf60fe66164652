"""Shared fixtures. Brokers, databases and HTTP are real; only the LLM is simulated."""

import os
from collections.abc import AsyncIterator

import pytest

from tests.brokers import RunningBroker, broker_of

POSTGRES_URL = os.environ.get("FARM_TEST_POSTGRES_URL")


@pytest.fixture(params=["mosquitto", "amqtt"])
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[RunningBroker]:
    """Each test that takes ``broker`` runs on a real Mosquitto and on the embedded amqtt."""
    async with broker_of(request.param) as running:
        yield running
