"""Keys: made random (or derived), shown once, stored only as a hash, never logged.

Every key the farm issues holds 192-256 random bits, so nobody can guess one whatever
its hash costs to compute. A key is therefore stored as its SHA-256 (``sha256$<hex>``),
as GitHub and Stripe store their tokens: a check takes about a microsecond, so keys are
checked on every request, and a revoked key stops working on its next one. A slow
password hash (scrypt) only protects secrets that people choose.

Rows written before this hold a salted scrypt hash (``scrypt$N$r$p$salt$digest``, about
30 ms a check). They still verify, read by their prefix, and :func:`needs_upgrade` says
to store the fast hash in their place once the key has checked out.

With ``FARM_KEY_SECRET`` set, a worker's key is derived: ``lf_`` + HMAC-SHA256(secret,
worker id, a random 192-bit nonce kept in the database), 256 bits no one can guess
without the secret. The coordinator can then derive a worker's key again to re-create its
broker account after the broker lost its accounts, without the database holding any
key: a leaked database alone gives nothing. Without the secret, a key is 192 random bits
and a lost broker account needs a key rotation.
"""

import base64
import hashlib
import hmac
import secrets

KEY_PREFIX = "lf_"
_SHA256 = "sha256$"
_SCRYPT = "scrypt$"


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(24)


def new_nonce() -> str:
    return secrets.token_urlsafe(24)


def derive_key(secret: str, worker_id: str, nonce: str) -> str:
    message = f"llama-farm worker key\n{worker_id}\n{nonce}".encode()
    mac = hmac.new(secret.encode(), message, hashlib.sha256).digest()
    return KEY_PREFIX + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def hash_key(key: str) -> str:
    """What is stored of a key."""
    return _SHA256 + hashlib.sha256(key.encode()).hexdigest()


def verify_key(key: str, stored: str) -> bool:
    """Whether ``key`` is the key ``stored`` was made from (either kind of hash)."""
    if stored.startswith(_SHA256):
        return hmac.compare_digest(hash_key(key), stored)
    if stored.startswith(_SCRYPT):
        return _verify_scrypt(key, stored)
    return False


def needs_upgrade(stored: str) -> bool:
    """A hash of the old, slow kind: replace it with :func:`hash_key` once it verified."""
    return stored.startswith(_SCRYPT)


def _verify_scrypt(key: str, stored: str) -> bool:
    try:
        _, n, r, p, salt, digest = stored.split("$")
        candidate = hashlib.scrypt(
            key.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p), dklen=32
        )
    except ValueError:
        return False
    return hmac.compare_digest(candidate.hex(), digest)


def hash_session_token(token: str) -> str:
    """Browser session cookies are random 256-bit tokens: a fast hash is enough."""
    return hashlib.sha256(token.encode()).hexdigest()
