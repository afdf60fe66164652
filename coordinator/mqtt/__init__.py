"""The coordinator's side of the broker: every publish (the bus), every message received
(inbound), and the broker's accounts."""
