"""An MQTT client that reads its socket in rounds: everything waiting at once, then a
short pause before it looks again.

aiomqtt wakes the event loop for every packet (paho reads one per call), and on a busy
core a wake-up costs more than the packet: measured in the capacity benchmark, the
broker and a webapp sharing a core spent several times what the broker alone spends per
chunk (docs/PERFORMANCE.md, Capacity). Paced, a lone packet is still read the moment it
arrives; under load the packets that come during the pause wait in the socket, which
wakes nobody, and are read together in the next round. The pause adds at most
``pause_s`` to a packet's delay.

It leans on two of aiomqtt's internals, its socket-open hook and its ``_disconnected``
future: ``pyproject.toml`` keeps aiomqtt below 3, and ``tests/farm/test_paced_reads.py``
checks the reading, the order and the reconnect on both brokers."""

import asyncio
import select
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt

MAX_PACKETS_PER_ROUND = 1_000  # then the loop's other work gets its turn


class PacedClient(aiomqtt.Client):
    def __init__(self, *args: Any, read_pause_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.read_pause_s = read_pause_s
        self.read_rounds = 0  # for tests and /metrics: rounds read, and packets in them
        self.packets_read = 0
        self._resume: asyncio.TimerHandle | None = None

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        # aiomqtt registers its own reader (and starts its housekeeping) from paho's
        # connecting thread; ours replaces the reader after it, in the loop's thread.
        super()._on_socket_open(client, userdata, sock)
        self._loop.call_soon_threadsafe(self._pace, client, sock)

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        super()._on_socket_close(client, userdata, sock)

    def _pace(self, client: mqtt.Client, sock: Any) -> None:
        fileno = sock.fileno()
        if fileno < 0 or client.socket() is not sock:
            return  # closed before we got here
        poller = select.poll()
        poller.register(fileno, select.POLLIN)
        loop = self._loop
        pending = getattr(sock, "pending", None)  # TLS: decoded bytes the socket hides

        def watch() -> None:
            self._resume = None
            if client.socket() is sock:
                loop.add_reader(fileno, read_round)

        def read_round() -> None:
            packets = 0
            try:
                while packets < MAX_PACKETS_PER_ROUND and client.socket() is sock:
                    client.loop_read()  # one packet (or what has come of one)
                    packets += 1
                    if pending is not None and pending() > 0:
                        continue
                    if not poller.poll(0):
                        break
            except Exception as exc:  # noqa: BLE001 - as aiomqtt's own reader: a broken connection
                if not self._disconnected.done():
                    self._disconnected.set_exception(exc)
                return
            self.read_rounds += 1
            self.packets_read += packets
            if client.socket() is not sock:
                return  # the connection ended in this round
            loop.remove_reader(fileno)
            self._resume = loop.call_later(self.read_pause_s, watch)

        loop.remove_reader(fileno)
        loop.add_reader(fileno, read_round)
