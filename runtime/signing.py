"""Ed25519 signatures over a bundle's manifest, so a device loads only models from its owner.

The manifest lists the sha256 of every file in the bundle, so one signature over its exact
bytes covers the whole bundle. The signature lives next to it as ``manifest.sig`` (raw 64
bytes, base64). Keys are PEM files: PKCS8 private key, SubjectPublicKeyInfo public key.
"""
from __future__ import annotations

import base64
import os
from pathlib import Path

from stethoedge.runtime.errors import BundleError, OutputError, StethoedgeError
from stethoedge.runtime.outputs import atomic_write_bytes, check_output

SIGNATURE_NAME = "manifest.sig"
MANIFEST_NAME = "manifest.json"


def _crypto():
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as exc:  # pragma: no cover - cryptography is a runtime dependency
        raise StethoedgeError("bundle signatures need the 'cryptography' package: pip install cryptography") from exc
    return InvalidSignature, serialization, ed25519


def generate_keypair(private_path: str | os.PathLike, public_path: str | os.PathLike) -> None:
    """Write a new Ed25519 key pair as PEM (the private key readable by its owner only)."""
    _, serialization, ed25519 = _crypto()
    private_path, public_path = Path(private_path), Path(public_path)
    if os.path.realpath(private_path) == os.path.realpath(public_path):
        raise OutputError(f"{private_path}: the private and the public key must be two different files")
    for p in (private_path, public_path):
        if os.path.lexists(p):
            raise StethoedgeError(f"{p} already exists; refusing to overwrite a key")
        check_output(p)
    key = ed25519.Ed25519PrivateKey.generate()
    atomic_write_bytes(private_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()), new_mode=0o600)
    atomic_write_bytes(public_path, key.public_key().public_bytes(serialization.Encoding.PEM,
                                                                  serialization.PublicFormat.SubjectPublicKeyInfo))


def _load_key(path: str | os.PathLike, private: bool):
    _, serialization, ed25519 = _crypto()
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise BundleError(f"{path}: cannot read key ({exc.strerror})") from None
    try:
        key = (serialization.load_pem_private_key(data, password=None) if private
               else serialization.load_pem_public_key(data))
    except (ValueError, TypeError) as exc:
        raise BundleError(f"{path}: not a PEM {'private' if private else 'public'} key ({exc})") from None
    wanted = ed25519.Ed25519PrivateKey if private else ed25519.Ed25519PublicKey
    if not isinstance(key, wanted):
        raise BundleError(f"{path}: not an Ed25519 key ({type(key).__name__})")
    return key


def sign_bundle(bundle: str | os.PathLike, private_key: str | os.PathLike) -> Path:
    """Sign ``bundle``'s manifest.json with an Ed25519 private key; writes manifest.sig."""
    root = Path(bundle)
    manifest = root / MANIFEST_NAME
    if not manifest.is_file():
        raise BundleError(f"{root}: no {MANIFEST_NAME}; not a stethoedge bundle")
    signature = _load_key(private_key, private=True).sign(manifest.read_bytes())
    path = root / SIGNATURE_NAME
    atomic_write_bytes(path, base64.b64encode(signature) + b"\n", inputs=[private_key])
    return path


def verify_bundle(bundle: str | os.PathLike, public_key: str | os.PathLike) -> None:
    """Raise BundleError unless manifest.sig is a valid signature of manifest.json by ``public_key``."""
    root = Path(bundle)
    try:
        data = (root / MANIFEST_NAME).read_bytes()
    except OSError as exc:
        raise BundleError(f"{root}: cannot read {MANIFEST_NAME} ({exc.strerror})") from None
    verify_manifest_bytes(root, data, public_key)


def verify_manifest_bytes(bundle: str | os.PathLike, manifest_bytes: bytes, public_key: str | os.PathLike) -> None:
    """Raise BundleError unless manifest.sig signs exactly ``manifest_bytes`` (the bytes the caller parses).

    ``load_bundle`` reads manifest.json once and passes those bytes here, so the manifest it
    parses is the one whose signature was checked (no second read that could differ).
    """
    invalid, _, _ = _crypto()
    root = Path(bundle)
    key = _load_key(public_key, private=False)
    sig_path = root / SIGNATURE_NAME
    if not sig_path.is_file():
        raise BundleError(f"{root}: bundle is not signed (no {SIGNATURE_NAME}) but a signature by {public_key} is required")
    try:
        signature = base64.b64decode(sig_path.read_bytes().strip(), validate=True)
    except ValueError:
        raise BundleError(f"{sig_path}: not a base64 signature") from None
    try:
        key.verify(signature, manifest_bytes)
    except invalid:
        raise BundleError(
            f"{root}: signature check FAILED: the manifest was changed after signing or was signed by "
            f"another key than {public_key}; refusing to load"
        ) from None
