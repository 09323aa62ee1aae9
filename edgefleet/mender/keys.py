"""The artifact signing key: ECDSA P-256, the private half 0600, its public half beside it (`.pub.pem`)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from ..errors import EdgefleetError, InputError

__all__ = ["make_signing_key", "public_key_path", "SigningKeyError"]


class SigningKeyError(EdgefleetError):
    """The key could not be made or read."""


def public_key_path(private: Path) -> Path:
    """Return where the public half of `private` lives: beside it, `<stem>.pub.pem`."""
    return private.with_name(private.name.removesuffix(".pem") + ".pub.pem")


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)  # never world-readable
    with open(fd, "wb") as f:
        f.write(data)


def _pem_pair() -> tuple[bytes, bytes]:
    """Return a new P-256 key pair as (private SEC 1 PEM, public SubjectPublicKeyInfo PEM).

    SEC 1 (`EC PRIVATE KEY`): mender-artifact 3.9 does not read a PKCS#8 EC key.
    """
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec
    except ImportError:
        return _pem_pair_openssl()
    key = ec.generate_private_key(ec.SECP256R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


def _pem_pair_openssl() -> tuple[bytes, bytes]:
    if shutil.which("openssl") is None:
        raise SigningKeyError("neither the cryptography package nor the openssl command is here to make a key")
    private = subprocess.run(["openssl", "ecparam", "-genkey", "-name", "prime256v1", "-noout"],
                             capture_output=True, check=True, timeout=60).stdout
    public = subprocess.run(["openssl", "ec", "-pubout"], input=private, capture_output=True, check=True,
                            timeout=60).stdout
    return private, public


def make_signing_key(path: Path) -> tuple[Path, Path]:
    """Write a new ECDSA P-256 signing key at `path` (0600) and its public key beside it; refuse to overwrite."""
    public = public_key_path(path)
    for existing in (path, public):
        if existing.exists():
            raise InputError(f"{existing} exists already; move it away first (artifacts signed with it verify "
                             f"only with its public key)")
    private_pem, public_pem = _pem_pair()
    _write_private(path, private_pem)
    public.write_bytes(public_pem)
    return path, public
