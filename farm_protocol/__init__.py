"""The wire contract shared by every llama-farm service.

A leaf package: it imports none of the services, and all of them import it. Every MQTT
topic is built by a function in :mod:`farm_protocol.topics`; every payload is a pydantic
model in :mod:`farm_protocol.payloads` or :mod:`farm_protocol.chat`, tagged by a ``kind``.
"""

from farm_protocol.version import PROTOCOL_VERSION, TOPIC_ROOT

__all__ = ["PROTOCOL_VERSION", "TOPIC_ROOT"]
