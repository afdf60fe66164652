"""Protocol version: bumped on any incompatible change to topics or payloads."""

PROTOCOL_VERSION = 2
TOPIC_ROOT = f"farm/v{PROTOCOL_VERSION}"
