"""The chat website: UI, a proxy to the coordinator's chat API, and the bridge from MQTT
job streams to browser websockets."""
