"""Encrypting small secrets at rest (identity providers' client secrets) with AES-GCM.

The key is derived from the platform secret (HKDF), so nothing else must be kept, and a
database dump alone reveals no client secret.
"""

from __future__ import annotations

import os

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


class SecretBox:
    def __init__(self, secret: str, purpose: bytes) -> None:
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(secret.encode())
        self._aead = AESGCM(key)
        self._purpose = purpose

    def seal(self, plaintext: str) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, plaintext.encode(), self._purpose)

    def open(self, sealed: bytes) -> str:
        return self._aead.decrypt(sealed[:12], sealed[12:], self._purpose).decode()
