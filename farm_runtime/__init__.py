"""The runtime every llama-farm service shares, apart from the wire contract.

The broker client and its reconnect loop (:mod:`farm_runtime.broker`), QoS1 publishes that
survive a reconnect (:mod:`farm_runtime.outbox`), running a service until a signal
(:mod:`farm_runtime.lifecycle`), serving HTTP (:mod:`farm_runtime.http_serving`), logging,
and the ordering of a stream's chunks (:mod:`farm_runtime.chunks`). It imports the
contract (:mod:`farm_protocol`) and none of the services.
"""
