"""Keys are stored as their SHA-256 and checked exactly; a hash of the old, slow kind
(scrypt) still verifies and is marked for an upgrade."""

import hashlib
import secrets

from coordinator.keys.hashing import hash_key, needs_upgrade, verify_key
from tests.support.keys import scrypt_hash


def test_a_key_is_stored_as_its_sha256_and_checked_exactly() -> None:
    key = "lf_" + secrets.token_urlsafe(24)
    stored = hash_key(key)
    assert stored == "sha256$" + hashlib.sha256(key.encode()).hexdigest()
    assert key not in stored
    assert verify_key(key, stored)
    assert not verify_key(key[:-1] + ("A" if key[-1] != "A" else "B"), stored)
    assert not verify_key(key, "plain text")
    assert not verify_key(key, "scrypt$not$a$valid$hash")
    assert not needs_upgrade(stored)
    assert needs_upgrade(scrypt_hash(key))
