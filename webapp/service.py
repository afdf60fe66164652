"""The webapp's composition root."""

import asyncio
import logging
import secrets

import aiomqtt

from farm_runtime.broker import make_client, serve_session, stay_connected
from farm_runtime.http_serving import serve_app
from farm_runtime.lifecycle import run_until_stopped
from webapp.app import create_app
from webapp.bridge import Bridge
from webapp.coordinator_client import CoordinatorClient
from webapp.settings import WebappSettings

log = logging.getLogger(__name__)


class Webapp:
    def __init__(self, settings: WebappSettings) -> None:
        self.settings = settings
        self.bridge = Bridge(settings.ws_queue_size)
        self.coordinator = CoordinatorClient(
            settings.coordinator_url, settings.service_token.get_secret_value()
        )
        self.app = create_app(settings, self.bridge, self.coordinator)

    async def _mqtt(self) -> None:
        # A unique client id per process: several webapps can run side by side.
        identifier = f"webapp-{secrets.token_hex(4)}"

        def connect() -> aiomqtt.Client:
            # each message straight to the bridge as it is read (it never waits)
            return make_client(
                self.settings.broker, identifier=identifier, deliver=self.bridge.handle
            )

        async def session(client: aiomqtt.Client) -> None:
            try:
                # nothing at first: the bridge subscribes to what its browsers watch
                await serve_session(
                    client,
                    subscriptions=[],
                    handle=None,
                    on_subscribed=lambda: self.bridge.connected(client),
                )
            finally:
                self.bridge.disconnected()

        await stay_connected(connect, session, name="webapp")

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await run_until_stopped(
                {
                    "mqtt": self._mqtt(),
                    "subscriptions": self.bridge.run_reaper(),
                    "coordinators": self.coordinator.watch(),
                    "http": serve_app(
                        self.app, self.settings.web_host, self.settings.web_port, stop
                    ),
                },
                stop,
            )
        finally:
            await self.coordinator.close()
            log.info("webapp stopped")
