"""SSH keys of the lab: the client key (made once) and one host key per device."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["ensure_keypair", "public_key"]


def ensure_keypair(path: Path, comment: str) -> tuple[bytes, str]:
    """Return (private key in OpenSSH PEM, public key line), generating them when missing."""
    pub = path.with_name(path.name + ".pub")
    if path.exists() and pub.exists():
        return path.read_bytes(), pub.read_text().strip()
    from cryptography.hazmat.primitives import serialization  # only when a key is made
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH,
    ).decode() + f" {comment}"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private)
    pub.write_text(public + "\n")
    return private, public


def public_key(path: Path) -> str:
    """Return the public key line stored beside a private key."""
    return path.with_name(path.name + ".pub").read_text().strip()
