"""The farm says which protocol it speaks (retained on farm/info, outside the versioned
topics); a worker of another version stops with a message that says what to upgrade,
instead of waiting for jobs that can never reach it (exit 2: systemd does not restart it)."""

import asyncio
import secrets
from pathlib import Path

import pytest
from pydantic import SecretStr

from farm_protocol import topics
from farm_protocol.codec import adapter_for, decode, encode
from farm_protocol.payloads import FarmInfo
from farm_protocol.version import PROTOCOL_VERSION
from farm_runtime.broker import BrokerSettings, make_client
from fleet_worker.service import FleetWorker, WorkerConfigError
from fleet_worker.settings import WorkerSettings
from tests.support.brokers import broker_of
from tests.support.farm import running_farm


async def _farm_info(settings: BrokerSettings) -> FarmInfo:
    async with make_client(settings, identifier=f"probe-{secrets.token_hex(4)}") as client:
        await client.subscribe(topics.FARM_INFO, qos=1)
        async for message in client.messages:
            return decode(adapter_for(FarmInfo), message.payload)
    raise AssertionError("no farm info")


async def test_a_worker_of_another_protocol_stops_and_says_what_to_upgrade(
    tmp_path: Path,
) -> None:
    async with broker_of("mosquitto") as broker, running_farm(tmp_path, broker, workers=0) as farm:
        said = await asyncio.wait_for(_farm_info(broker.settings()), 10)
        assert said.protocol == PROTOCOL_VERSION
        assert said.version

        coordinator = farm.coordinator
        info, key = await coordinator.runner.call(coordinator.registry.add, "old laptop")
        await coordinator.provisioner.worker_added(info.id, key)  # its own role, as in production
        newer = FarmInfo(protocol=PROTOCOL_VERSION + 1, version="9.0.0")
        async with make_client(broker.settings(), identifier="future-coordinator") as client:
            await client.publish(topics.FARM_INFO, encode(newer), qos=1, retain=True)

        worker = FleetWorker(
            WorkerSettings(
                _env_file=None,
                broker=BrokerSettings(url=broker.settings().url),
                worker_id=info.id,
                api_key=SecretStr(key),
                ollama_host=farm.sim_url,
            ),
            drain_grace_s=0.5,
        )
        with pytest.raises(WorkerConfigError, match="upgrade this worker") as refused:
            await asyncio.wait_for(worker.run(asyncio.Event()), 30)
        assert "pipx upgrade llama-farm" in str(refused.value)
        assert "9.0.0" in str(refused.value)
