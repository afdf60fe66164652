"""``llama-farm api-keys add|list|revoke``: keys for the OpenAI-compatible API, on the
coordinator's database (the admin API's /api-keys does the same). A key is printed once."""

import argparse
import datetime
import sys

from coordinator.db.database import NoDatabase, open_for_admin
from coordinator.errors import NotFound
from coordinator.keys.api_keys import ApiKeyStore
from coordinator.settings import CoordinatorSettings


def run(args: argparse.Namespace, settings: CoordinatorSettings) -> int:
    try:
        db = open_for_admin(settings.database_url, create=args.create)
    except NoDatabase as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    store = ApiKeyStore(db)
    try:
        with db.connection_context():
            if args.action == "add":
                info, key = store.create(args.name, args.max_concurrent)
                print(f"api key id: {info.id}")
                print(f"api key:    {key}")
                print("Store the key now: it is shown only once. Clients send it as")
                print(f"  Authorization: Bearer {key}")
                print(f"to /v1/chat/completions; at most {info.max_concurrent} replies at once.")
            elif args.action == "revoke":
                store.revoke(args.key_id)
                print(f"api key {args.key_id} revoked")
            else:
                print(f"{'ID':<18} {'NAME':<24} {'AT ONCE':>7}  {'LAST USED':<19}  STATE")
                for k in store.list_keys():
                    used = (
                        datetime.datetime.fromtimestamp(k.last_used_at).strftime(
                            "%Y-%m-%d %H:%M:%S"
                        )
                        if k.last_used_at
                        else "never"
                    )
                    state = "revoked" if k.revoked_at else "active"
                    print(
                        f"{k.id:<18} {k.name[:24]:<24} {k.max_concurrent:>7}  {used:<19}  {state}"
                    )
    except (NotFound, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        db.close()
    return 0
