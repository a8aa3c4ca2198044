"""Ed25519 bundle signatures: a device with the owner's public key loads only the owner's bundles."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stethoedge.runtime.bundle import load_bundle
from stethoedge.runtime.errors import BundleError, StethoedgeError
from stethoedge.runtime.signing import SIGNATURE_NAME, generate_keypair, sign_bundle, verify_bundle


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("keys")
    generate_keypair(d / "owner.pem", d / "owner.pub")
    generate_keypair(d / "other.pem", d / "other.pub")
    return {"private": d / "owner.pem", "public": d / "owner.pub", "other_private": d / "other.pem",
            "other_public": d / "other.pub"}


@pytest.fixture
def signed(bundle_dir: Path, tmp_path: Path, keys) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(bundle_dir, dst)
    sign_bundle(dst, keys["private"])
    return dst


def test_keys_are_written_with_safe_permissions(keys):
    assert keys["private"].stat().st_mode & 0o777 == 0o600
    assert b"PRIVATE KEY" in keys["private"].read_bytes() and b"PUBLIC KEY" in keys["public"].read_bytes()
    with pytest.raises(StethoedgeError, match="refusing to overwrite"):
        generate_keypair(keys["private"], keys["public"])


def test_signed_bundle_loads_with_the_owner_key(signed: Path, keys):
    verify_bundle(signed, keys["public"])
    assert load_bundle(signed, require_signature=keys["public"]).artifacts


def test_wrong_key_is_refused(signed: Path, keys):
    with pytest.raises(BundleError, match="signature check FAILED"):
        load_bundle(signed, require_signature=keys["other_public"])


def test_unsigned_bundle_is_refused_when_a_signature_is_required(bundle_dir: Path, keys):
    assert not (bundle_dir / SIGNATURE_NAME).exists()
    with pytest.raises(BundleError, match="not signed"):
        load_bundle(bundle_dir, require_signature=keys["public"])
    assert load_bundle(bundle_dir).artifacts  # without the requirement it still loads


def test_manifest_edited_after_signing_is_refused(signed: Path, keys):
    path = signed / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["artifacts"][0]["tolerance"] = 100.0  # a consistent, schema-valid but unsigned change
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    assert load_bundle(signed).artifacts
    with pytest.raises(BundleError, match="signature check FAILED"):
        load_bundle(signed, require_signature=keys["public"])


def test_garbage_signature_and_bad_keys_are_typed_errors(signed: Path, keys, tmp_path: Path):
    (signed / SIGNATURE_NAME).write_text("not base64 !!\n")
    with pytest.raises(BundleError, match="not a base64 signature"):
        verify_bundle(signed, keys["public"])
    (tmp_path / "junk.pem").write_text("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    with pytest.raises(BundleError, match="not a PEM public key"):
        verify_bundle(signed, tmp_path / "junk.pem")
    with pytest.raises(BundleError, match="cannot read key"):
        verify_bundle(signed, tmp_path / "missing.pem")
    with pytest.raises(BundleError, match="not a PEM private key"):
        sign_bundle(signed, keys["public"])


def test_cli_keygen_sign_verify(bundle_dir: Path, tmp_path: Path):
    bundle = tmp_path / "b"
    shutil.copytree(bundle_dir, bundle)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "stethoedge", *map(str, args)], capture_output=True, text=True,
                              timeout=120)

    assert cli("keygen", tmp_path / "k.pem", tmp_path / "k.pub").returncode == 0
    assert cli("sign", bundle, "--key", tmp_path / "k.pem").returncode == 0
    ok = cli("verify", bundle, "--key", tmp_path / "k.pub")
    assert ok.returncode == 0 and "signature by" in ok.stdout
    generate_keypair(tmp_path / "x.pem", tmp_path / "x.pub")
    bad = cli("verify", bundle, "--key", tmp_path / "x.pub")
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr
