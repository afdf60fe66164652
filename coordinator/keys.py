"""Worker API keys: 192 random bits, shown once, stored only as a salted scrypt hash."""

import hashlib
import hmac
import secrets

KEY_PREFIX = "lf_"
_N, _R, _P = 2**14, 8, 1  # ~16 MiB and ~30 ms per check: slow for a guesser, fine for a login


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(24)


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
