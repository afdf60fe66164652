"""HTTP clients for the load generators: one connection pool per simulated client.

One httpx pool shared by hundreds of connections spends more CPU choosing a connection
than the request costs (httpcore scans its whole pool on each request), and each client
would build its own TLS context, tens of milliseconds even for plain HTTP: at 400 clients
the load generator took two thirds of a core and bounded the figures. Build the pools
before the clock starts."""

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx


@asynccontextmanager
async def client_pools(base_url: str, count: int) -> AsyncIterator[list[httpx.AsyncClient]]:
    tls = ssl.create_default_context()
    pools = [httpx.AsyncClient(base_url=base_url, timeout=60, verify=tls) for _ in range(count)]
    try:
        yield pools
    finally:
        for pool in pools:
            await pool.aclose()
