"""A kept-alive connection carries request after request, good and bad alike: 405s,
404s, 413s, bodies a response left unread, invalid UTF-8. Every request gets its response
(a connection dropped under one fails the test), and a new connection is opened only after
a response said ``Connection: close``.
Before, a body left unread (a 405, say) made hypercorn drop the connection without a
word, and the client's next request on it was lost ("Server disconnected without sending
a response"), which the fuzz tests hit now and then."""

import asyncio
import random
from pathlib import Path
from urllib.parse import urlsplit

from tests.support.brokers import mosquitto
from tests.support.farm import running_farm
from tests.support.keep_alive import KeepAliveClient

REQUESTS = 2000


def mixed(client: KeepAliveClient, cases: list[tuple[str, str, bytes]]) -> dict[int, int]:
    """``REQUESTS`` requests drawn from ``cases``; the count of each status."""
    draw = random.Random(7)  # a fixed mix, not a secret
    seen: dict[int, int] = {}
    for _ in range(REQUESTS):
        method, path, body = draw.choice(cases)
        status = client.request(method, path, body)
        seen[status] = seen.get(status, 0) + 1
    client.close()
    return seen


async def test_one_connection_carries_thousands_of_good_and_bad_requests(tmp_path: Path) -> None:
    async with mosquitto() as broker, running_farm(tmp_path, broker) as farm:
        web = urlsplit(farm.web_url)
        assert web.hostname is not None
        assert web.port is not None
        browser = KeepAliveClient(web.hostname, web.port, [("Content-Type", "application/json")])
        webapp_cases = [
            ("GET", "/healthz", b""),
            ("POST", "/healthz", b'{"a": 1}'),  # 405, the body left unread
            ("PUT", "/api/threads", b"x" * 5000),  # 405
            ("DELETE", "/api/me", b"y" * 100_000),  # 405, a body larger than a packet
            ("GET", "/static/no-such-file.js", b""),  # 404
            ("POST", "/api/threads", b"\xff\xfe not UTF-8"),  # 201: read as no settings
            ("POST", "/api/threads/t1/messages", b'{"text": 5}'),  # 400 from the coordinator
            ("POST", "/v1/chat/completions", b"\xff{"),  # 401: no key, told before the 400
            ("GET", "/api/models", b""),
            ("POST", "/api/threads", b"z" * 1_100_000),  # 413: over the size limit
        ]
        seen = await asyncio.to_thread(mixed, browser, webapp_cases)
        assert sum(seen.values()) == REQUESTS
        assert {405, 404, 401, 400, 413, 201, 200} <= set(seen)
        # a new connection only where a response said it would close: the 413s, and
        # hypercorn's limit of 1,000 requests a connection
        assert browser.connections <= browser.announced_closes + 1
        assert seen[413] <= browser.announced_closes <= seen[413] + REQUESTS // 1000

        coordinator = urlsplit(farm.coordinator_url)
        assert coordinator.hostname is not None
        assert coordinator.port is not None
        token = farm.webapp_settings.service_token.get_secret_value()
        service = KeepAliveClient(
            coordinator.hostname, coordinator.port, [("Authorization", f"Bearer {token}")]
        )
        coordinator_cases = [
            ("GET", "/healthz", b""),
            ("POST", "/healthz", b'{"a": 1}'),
            ("PUT", "/api/v1/chat/threads", b"x" * 5000),
            ("DELETE", "/metrics", b"y" * 100_000),
            ("GET", "/no-such-path", b""),
            ("POST", "/api/v1/programmatic/keys/check", b"\xff{"),
            ("POST", "/api/v1/admin/workers", b"\xff\xfe"),  # 401: the admin API is closed
            ("GET", "/api/v1/programmatic/models", b""),
        ]
        seen = await asyncio.to_thread(mixed, service, coordinator_cases)
        assert sum(seen.values()) == REQUESTS
        assert {405, 404, 400, 401, 200} <= set(seen)
        # hypercorn ends a connection after 1,000 requests, saying so: nothing else does
        assert service.connections <= service.announced_closes + 1
        assert service.announced_closes == REQUESTS // 1000
