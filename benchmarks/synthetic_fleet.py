"""A synthetic fleet for the capacity benchmark: many workers, each an MQTT client with
its own credentials, that take assignments and replay a reply at a fixed token rate under
the chunk rule (the first token at once, then a chunk every 50 ms, at 30 tokens/s two
tokens each), in the wire protocol of either design:

* ``old`` (protocol v1, before issue 18): *accepted*, every chunk and *done* on the
  job's topic, which every coordinator and every webapp receive;
* ``new`` (v2): live chunks on the job's topic under its thread (for the webapps whose
  browsers watch that thread), and *accepted*, a checkpoint a second (overlapping the one
  before, as the real worker's) and *done* with its tail on the job's progress topic (for
  one coordinator).

It is cheap on purpose, so that the server side, not the load, is the limit: payloads
are built by string formatting (no pydantic), one scheduler thread publishes every
stream's chunks from a heap of due times, and paho's own network threads do the I/O.
Each chunk's text is its publish time, once per token ("1732900000.1234 "): a browser
reading it knows how long the chunk took to reach it.

``python -m benchmarks.synthetic_fleet SPEC.json`` runs until SIGINT/SIGTERM."""

import contextlib
import hashlib
import heapq
import json
import signal
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

CHUNK_S = 0.05  # the worker's rule: a chunk when its oldest token has waited 50 ms


@dataclass
class Stream:
    worker: "Worker"
    job_id: str
    thread_id: str
    attempt: int
    tokens_left: int
    texts: list[str] = field(default_factory=list)
    window: int = 0  # the first chunk of the last checkpoint's new part
    unsaved: int = 0  # the first chunk in no checkpoint yet
    saved_at: float = 0.0
    final: str = ""  # the final event's payload, once sent (for a replay)


class Worker:
    def __init__(self, fleet: "Fleet", worker_id: str, key: str, slots: int) -> None:
        self.fleet = fleet
        self.id = worker_id
        self.slots = slots
        self.session = uuid.uuid4().hex[:16]
        self.running: dict[str, Stream] = {}
        self.ended: dict[str, Stream] = {}
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"worker-{worker_id}", clean_session=True
        )
        self.client.username_pw_set(worker_id, key)
        self.client.max_inflight_messages_set(100)
        self.client.on_connect = self._connected
        self.client.on_message = self._message
        self.client.on_socket_open = _no_nagle
        self.topic = f"{fleet.root}/{worker_id}"
        offline = self._status("offline")
        self.client.will_set(f"{self.topic}/status", offline, qos=1, retain=True)

    def _status(self, state: str) -> str:
        return json.dumps(
            {
                "kind": "status",
                "worker_id": self.id,
                "session_id": self.session,
                "state": state,
                "models": ["llama3:latest"],
                "loaded_models": ["llama3:latest"],
                "capacity": self.slots,
                "simulated": True,
                "at": time.time(),
            }
        )

    def _connected(self, client: mqtt.Client, *_: Any) -> None:
        client.subscribe([(f"{self.topic}/assign", 1), (f"{self.topic}/control", 1)])
        client.publish(f"{self.topic}/status", self._status("online"), qos=1, retain=True)

    def _message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        body = json.loads(message.payload)
        if body.get("kind") == "assign":
            thread_id = body.get("thread_id", "")
            self.fleet.start(self, body["job_id"], thread_id, int(body["attempt"]))
        elif body.get("kind") == "cancel":
            self.fleet.stop(self, body["job_id"])
        elif body.get("kind") == "replay":
            self.fleet.replay(self, body["job_id"], int(body["attempt"]), int(body["from_seq"]))

    def heartbeat(self, seq: int) -> None:
        with self.fleet.lock:
            running = [{"job_id": s.job_id, "attempt": s.attempt} for s in self.running.values()]
        beat = {
            "kind": "heartbeat",
            "worker_id": self.id,
            "session_id": self.session,
            "seq": seq,
            "running": running,
            "at": time.time(),
        }
        self.client.publish(f"{self.topic}/heartbeat", json.dumps(beat), qos=0)


def _no_nagle(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    """As the real worker's client (farm_runtime.broker.make_client): without it a chunk
    right behind another waited for the broker's delayed ACK, 40 ms."""
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Fleet:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.protocol = spec["protocol"]
        self.root = "farm/v1/workers" if self.protocol == "old" else "farm/v2/workers"
        self.tokens = int(spec["reply_tokens"])
        self.token_s = 1.0 / float(spec["tokens_per_s"])
        self.checkpoint_s = float(spec.get("checkpoint_s", 1.0))
        self.lock = threading.Lock()
        self.due: list[tuple[float, int, Stream]] = []
        self.wake = threading.Condition(self.lock)
        self.counter = 0
        self.workers = [Worker(self, w, k, int(spec["slots"])) for w, k in spec["workers"]]
        host, port = spec["broker"].removeprefix("mqtt://").split(":")
        for worker in self.workers:
            worker.client.connect(host, int(port), keepalive=30)
            worker.client.loop_start()

    # --- topics and payloads (string formatting: this is the hot path) -----------------

    def _chunks_topic(self, s: Stream) -> str:
        if self.protocol == "old":
            return f"{s.worker.topic}/jobs/{s.job_id}"
        return f"{s.worker.topic}/jobs/{s.thread_id}/{s.job_id}"

    def _progress_topic(self, s: Stream) -> str:
        if self.protocol == "old":
            return f"{s.worker.topic}/jobs/{s.job_id}"
        return f"{s.worker.topic}/progress/{s.thread_id}/{s.job_id}"

    def _publish(self, s: Stream, topic: str, payload: str) -> None:
        s.worker.client.publish(topic, payload, qos=1)

    # --- a job's life --------------------------------------------------------------------

    def start(self, worker: Worker, job_id: str, thread_id: str, attempt: int) -> None:
        stream = Stream(worker, job_id, thread_id, attempt, self.tokens)
        accepted = json.dumps(
            {"kind": "accepted", "job_id": job_id, "attempt": attempt, "session_id": worker.session}
        )
        self._publish(stream, self._progress_topic(stream), accepted)
        with self.lock:
            worker.running[job_id] = stream
            self._schedule(stream, time.time())  # the first token goes out at once

    def stop(self, worker: Worker, job_id: str) -> None:
        with self.lock:
            worker.running.pop(job_id, None)

    def _schedule(self, stream: Stream, at: float) -> None:
        self.counter += 1
        heapq.heappush(self.due, (at, self.counter, stream))
        self.wake.notify()

    def run(self, stop: threading.Event) -> None:
        """Publish every chunk when it is due (the scheduler thread)."""
        beats = 0.0
        seq = 0
        while not stop.is_set():
            now = time.time()
            if now >= beats:
                for worker in self.workers:
                    worker.heartbeat(seq)
                seq += 1
                beats = now + 2.0
            with self.lock:
                if not self.due or self.due[0][0] > now:
                    wait = self.due[0][0] - now if self.due else 0.1
                    self.wake.wait(min(wait, 0.1))
                    continue
                _, _, stream = heapq.heappop(self.due)
                if stream.job_id not in stream.worker.running:
                    continue  # cancelled
            self._next_chunk(stream, now)

    def _next_chunk(self, s: Stream, now: float) -> None:
        tokens = 1 if not s.texts else min(2, s.tokens_left)
        text = f"{now:.4f} " * tokens
        seq = len(s.texts)
        s.texts.append(text)
        s.tokens_left -= tokens
        self._publish(
            s,
            self._chunks_topic(s),
            f'{{"kind":"chunk","job_id":"{s.job_id}","attempt":{s.attempt},'
            f'"seq":{seq},"text":"{text}"}}',
        )
        if self.protocol == "new" and (seq == 0 or now - s.saved_at >= self.checkpoint_s):
            self._checkpoint(s, now)
        if s.tokens_left > 0:
            with self.lock:
                self._schedule(s, now + tokens * self.token_s)
            return
        self._done(s)

    def _checkpoint(self, s: Stream, now: float) -> None:
        body = {
            "kind": "checkpoint",
            "job_id": s.job_id,
            "attempt": s.attempt,
            "from_seq": s.window,
            "texts": s.texts[s.window :],
        }
        self._publish(s, self._progress_topic(s), json.dumps(body))
        s.window, s.unsaved, s.saved_at = s.unsaved, len(s.texts), now

    def _done(self, s: Stream) -> None:
        whole = "".join(s.texts)
        body: dict[str, Any] = {
            "kind": "done",
            "job_id": s.job_id,
            "attempt": s.attempt,
            "chunks": len(s.texts),
            "chars": len(whole),
            "sha256": hashlib.sha256(whole.encode()).hexdigest(),
        }
        if self.protocol == "new":
            body |= {"from_seq": s.window, "texts": s.texts[s.window :]}
        s.final = json.dumps(body)
        self._publish(s, self._progress_topic(s), s.final)
        with self.lock:
            s.worker.running.pop(s.job_id, None)
            s.worker.ended[s.job_id] = s
            if len(s.worker.ended) > 500:
                s.worker.ended.pop(next(iter(s.worker.ended)))

    def replay(self, worker: Worker, job_id: str, attempt: int, from_seq: int) -> None:
        with self.lock:
            s = worker.running.get(job_id) or worker.ended.get(job_id)
        if s is None or s.attempt != attempt or self.protocol == "old":
            return
        body = {
            "kind": "checkpoint",
            "job_id": job_id,
            "attempt": attempt,
            "from_seq": from_seq,
            "texts": s.texts[from_seq:],
        }
        self._publish(s, self._progress_topic(s), json.dumps(body))
        if s.final:
            self._publish(s, self._progress_topic(s), s.final)

    def close(self) -> None:
        for worker in self.workers:
            worker.client.publish(
                f"{worker.topic}/status", worker._status("offline"), qos=1, retain=True
            )
            worker.client.loop_stop()
            worker.client.disconnect()


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    fleet = Fleet(spec)
    try:
        fleet.run(stop)
    finally:
        fleet.close()


if __name__ == "__main__":
    main()
