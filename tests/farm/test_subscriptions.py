"""A subscription the broker refuses, on a real Mosquitto with dynamic security: a needed
one ends the session (and the reconnect loop says so); an optional one (a worker's
farm/info, which an account made by an older release lacks until the coordinator's next
reconcile) is logged and the session goes on."""

import aiomqtt
import pytest
from pydantic import SecretStr

from farm_runtime.broker import Subscription, make_client, subscribe_all
from tests.support.brokers import broker_of, dynsec


async def test_an_optional_subscription_refused_is_no_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with broker_of("mosquitto") as broker:
        assert broker.admin_password is not None
        await dynsec(
            broker.port,
            broker.admin_password,
            [
                {"command": "createRole", "rolename": "narrow"},
                {
                    "command": "addRoleACL",
                    "rolename": "narrow",
                    "acltype": "subscribePattern",
                    "topic": "farm/v2/workers/narrow/#",
                    "allow": True,
                },
                {
                    "command": "createClient",
                    "username": "narrow",
                    "password": "narrow-password",
                    "roles": [{"rolename": "narrow"}],
                },
            ],
        )
        settings = broker.settings().model_copy(
            update={"username": "narrow", "password": SecretStr("narrow-password")}
        )
        async with make_client(settings, identifier="narrow") as client:
            await subscribe_all(
                client,
                [
                    Subscription("farm/v2/workers/narrow/assign", 1),
                    Subscription("farm/info", 1, optional=True),
                ],
            )
            assert "refused farm/info; going on without it" in caplog.text
            with pytest.raises(aiomqtt.MqttError, match="refused the subscription to farm/info"):
                await subscribe_all(client, [Subscription("farm/info", 1)])
