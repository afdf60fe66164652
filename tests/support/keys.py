"""Keys as rows written before the fast hash hold them."""

import hashlib
import secrets


def scrypt_hash(key: str, p: int = 1) -> str:
    """A key's hash as rows written before the fast hash hold it (p=16: 16 times slower)."""
    n, r, salt = 2**14, 8, secrets.token_bytes(16)
    digest = hashlib.scrypt(key.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
    return f"scrypt${n}${r}${p}${salt.hex()}${digest.hex()}"
