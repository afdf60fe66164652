"""``llama-farm broker setup``: create (or reset) the service accounts on Mosquitto.

Needs the dynamic-security admin account (``FARM_BROKER_ADMIN_USERNAME`` and
``FARM_BROKER_ADMIN_PASSWORD``) and prints the new passwords once, as the settings lines
each service needs. Worker accounts are the coordinator's to manage (it creates, rotates,
deletes and reconciles them); this only makes the coordinator's, the webapp's and the
read-only observer's.
"""

import argparse
import asyncio
import sys

from coordinator.mqtt.accounts import BrokerAccounts, BrokerAdminError, Dynsec
from coordinator.settings import CoordinatorSettings
from farm_protocol import acl


def run(args: argparse.Namespace, settings: CoordinatorSettings) -> int:
    if "url" not in settings.broker.model_fields_set:
        print(
            "error: say which broker: set FARM_BROKER__URL (e.g. mqtt://127.0.0.1:1883 on the"
            " broker's host), in the environment or the --env-file",
            file=sys.stderr,
        )
        return 2
    admin = settings.broker_admin()
    if admin is None:
        print(
            "error: set FARM_BROKER_ADMIN_USERNAME and FARM_BROKER_ADMIN_PASSWORD (the account "
            "made by `mosquitto_ctrl dynsec init`)",
            file=sys.stderr,
        )
        return 2
    try:
        passwords = asyncio.run(BrokerAccounts(Dynsec(admin)).setup_services({}))
    except BrokerAdminError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    url = settings.broker.url
    print(f"Service accounts created on {url}. Store these now: they are shown once.\n")
    for name, where in ((acl.COORDINATOR, "coordinator.env"), (acl.WEBAPP, "webapp.env")):
        print(f"# in {where}")
        print(f"FARM_BROKER__USERNAME={name}")
        print(f"FARM_BROKER__PASSWORD={passwords[name]}\n")
    print("# the read-only observer, for watching the farm (docs/OPERATIONS.md)")
    print(f"mosquitto_sub -u {acl.OBSERVER} -P '{passwords[acl.OBSERVER]}' -t 'farm/#' -v")
    return 0
