"""The small exception tree of the wire contract."""


class ProtocolError(Exception):
    """Something received from the wire does not follow the contract."""


class TopicError(ProtocolError):
    """A topic, or an id meant for a topic, is malformed."""


class PayloadError(ProtocolError):
    """A payload failed to decode or validate."""
