"""Encryption at rest for private keys (Fernet: AES-128-CBC + HMAC-SHA256).

The keys live outside the database: ``SECRETS_KEYS`` (the first encrypts, all
of them decrypt, so keys can be rotated), or for the demo and the tests only a
key file generated on first use (``SECRETS_KEY_FILE``). Every worker machine
must be given the same SECRETS_KEYS.
"""

from __future__ import annotations

import logging
import os
import stat
import tempfile
from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings

from .errors import CertificateProblem

logger = logging.getLogger(__name__)

KeyOrKeys = bytes | str | Sequence[bytes | str]


def secret_keys() -> list[str | bytes]:
    """Keys for private keys at rest: SECRETS_KEYS (first encrypts, all decrypt),
    else the demo's key file, generated on first use."""
    keys = [key for key in getattr(settings, "SECRETS_KEYS", []) or [] if key]
    if keys:
        return keys
    if not getattr(settings, "DEVELOPMENT", False):
        # A key made up here would differ on every worker machine.
        raise CertificateProblem(
            "No encryption key is configured for stored private keys: set SECRETS_KEYS "
            "(the same on every machine) and restart.",
            code="no_key",
        )
    return [load_or_create_key_file(settings.SECRETS_KEY_FILE)]


def generate_key() -> bytes:
    """A new random Fernet key (url-safe base64, 44 bytes)."""
    return Fernet.generate_key()


def _multi_fernet(key: KeyOrKeys) -> MultiFernet:
    # A list of keys allows rotation: the first key encrypts, all of them are
    # tried for decryption, so old secrets stay readable after a key change.
    keys = [key] if isinstance(key, (bytes, str)) else list(key)
    if not keys:
        raise CertificateProblem(
            "No encryption key is configured for stored private keys. Set the key "
            "(see the dashboard's settings) and try again.",
            code="no_key",
        )
    try:
        return MultiFernet([Fernet(k) for k in keys])
    except (ValueError, TypeError):
        raise CertificateProblem(
            "The encryption key for stored private keys is invalid: it must be 32 "
            "random bytes in url-safe Base64 (44 characters), as produced by "
            "generate_key(). Check the key file or setting.",
            code="bad_encryption_key",
        ) from None


def encrypt_secret(plaintext: bytes, key: KeyOrKeys) -> bytes:
    """Encrypt ``plaintext`` with the first of ``key`` (a key or a list of keys)."""
    return _multi_fernet(key).encrypt(plaintext)


def decrypt_secret(token: bytes, key: KeyOrKeys) -> bytes:
    """Decrypt a token from :func:`encrypt_secret`, trying every key given."""
    try:
        return _multi_fernet(key).decrypt(token)
    except (InvalidToken, TypeError):
        raise CertificateProblem(
            "A stored private key could not be decrypted: the encryption key is not "
            "the one it was encrypted with, or the stored data is damaged. Restore the "
            "original key file (or list the old key after the new one while rotating "
            "keys), or upload the private key again.",
            code="decrypt_failed",
        ) from None


def rotate_secret(token: bytes, keys: Sequence[bytes | str]) -> bytes:
    """Re-encrypt ``token`` under ``keys[0]`` (it may be under any of ``keys``)."""
    try:
        return _multi_fernet(keys).rotate(token)
    except (InvalidToken, TypeError):
        raise CertificateProblem(
            "A stored private key could not be re-encrypted because none of the "
            "configured keys can decrypt it. Keep the old key in the list until every "
            "secret has been rotated.",
            code="decrypt_failed",
        ) from None


def load_or_create_key_file(path: str | os.PathLike[str]) -> bytes:
    """Read the Fernet key from ``path``, creating it (mode 0600) if missing.

    Meant for demos and single-host installs; production should provide the
    key from a secret store.  Creation writes to a private temporary file and
    hard-links it into place, so two processes starting at once cannot end up
    with different keys or read a half-written file.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.exists(path):
        os.makedirs(directory, mode=0o700, exist_ok=True)
        # mkstemp creates the file with mode 0600 regardless of umask.
        fd, tmp_path = tempfile.mkstemp(dir=directory, prefix=".fernet-key-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(generate_key() + b"\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp_path, 0o600)
            try:
                os.link(tmp_path, path)
            except FileExistsError:
                pass  # another process won the race; use its key
        finally:
            os.unlink(tmp_path)

    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        # Not fatal (the admin may have reasons), but worth shouting about.
        logger.warning(
            "Key file %s is accessible by other users (mode %o); chmod 600 it.",
            path,
            mode,
        )

    with open(path, "rb") as handle:
        key = handle.read().strip()
    try:
        Fernet(key)
    except (ValueError, TypeError):
        raise CertificateProblem(
            f"The key file {path} does not contain a valid encryption key. Restore it "
            "from backup; if no private keys were stored with it yet, delete it and a "
            "new one will be created.",
            code="bad_encryption_key",
        ) from None
    return key
