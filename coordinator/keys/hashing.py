"""Worker API keys: shown once, stored only as a salted scrypt hash, never logged.

With ``FARM_KEY_SECRET`` set, a key is derived: ``lf_`` + HMAC-SHA256(secret, worker id,
a random 192-bit nonce kept in the database), 256 bits no one can guess without the
secret. The coordinator can then derive a worker's key again to re-create its broker
account after the broker lost its accounts, without the database holding any key: a
leaked database alone gives nothing. Without the secret, a key is 192 random bits and
a lost broker account needs a key rotation.
"""

import base64
import hashlib
import hmac
import secrets

KEY_PREFIX = "lf_"
_N, _R, _P = 2**14, 8, 1  # ~16 MiB and ~30 ms per check: slow for a guesser, fine for a login


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(24)


def new_nonce() -> str:
    return secrets.token_urlsafe(24)


def derive_key(secret: str, worker_id: str, nonce: str) -> str:
    message = f"llama-farm worker key\n{worker_id}\n{nonce}".encode()
    mac = hmac.new(secret.encode(), message, hashlib.sha256).digest()
    return KEY_PREFIX + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def hash_key(key: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(key.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return f"scrypt${_N}${_R}${_P}${salt.hex()}${digest.hex()}"


def verify_key(key: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        candidate = hashlib.scrypt(
            key.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p), dklen=32
        )
    except ValueError:
        return False
    return hmac.compare_digest(candidate.hex(), digest)


def hash_session_token(token: str) -> str:
    """Browser session cookies are random 256-bit tokens: a fast hash is enough."""
    return hashlib.sha256(token.encode()).hexdigest()
