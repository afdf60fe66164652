"""A worker that only does presence, as the real one does it: a retained ``online``
status, an ``offline`` Last Will with the same session id, and a heartbeat every
``heartbeat_s``. A thousand of them fit in one process. Run as a module it is one such
worker in a process of its own (to be killed):
``python -m benchmarks.presence mqtt://host:port username password worker_id``."""

import asyncio
import contextlib
import sys
import time
import uuid

import aiomqtt
from pydantic import SecretStr

from farm_protocol import topics
from farm_protocol.acl import worker_client_id
from farm_protocol.codec import encode
from farm_protocol.payloads import Heartbeat, WorkerStatus
from farm_runtime.broker import BrokerSettings, make_client


class PresenceWorker:
    def __init__(self, broker: BrokerSettings, worker_id: str, heartbeat_s: float = 2.0) -> None:
        self.worker_id = worker_id
        self.session_id = uuid.uuid4().hex[:16]
        self.heartbeat_s = heartbeat_s
        self.beating = True  # False: still connected, but silent (a hung worker)
        self.broker = broker

    async def run(self, connected: asyncio.Event | None = None) -> None:
        will = WorkerStatus(
            worker_id=self.worker_id, session_id=self.session_id, state="offline", at=time.time()
        )
        topic = topics.worker_status(self.worker_id)
        async with make_client(
            self.broker,
            identifier=worker_client_id(self.worker_id),
            will=aiomqtt.Will(topic, encode(will), qos=1, retain=True),
        ) as client:
            status = WorkerStatus(
                worker_id=self.worker_id,
                session_id=self.session_id,
                state="online",
                models=["llama3:latest"],
                capacity=1,
                at=time.time(),
            )
            await client.publish(
                topics.worker_status(self.worker_id), encode(status), qos=1, retain=True
            )
            if connected is not None:
                connected.set()
            seq = 0
            while True:
                await asyncio.sleep(self.heartbeat_s)
                if not self.beating:
                    continue
                beat = Heartbeat(
                    worker_id=self.worker_id,
                    session_id=self.session_id,
                    seq=seq,
                    at=time.time(),
                )
                await client.publish(topics.worker_heartbeat(self.worker_id), encode(beat))
                seq += 1


def main() -> None:
    url, username, password, worker_id = sys.argv[1:5]
    broker = BrokerSettings(url=url, username=username, password=SecretStr(password))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(PresenceWorker(broker, worker_id).run())


if __name__ == "__main__":
    main()
