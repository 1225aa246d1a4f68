"""Bundle sealing and checking: incomplete, corrupt and foreign bundles are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fame import bundle
from fame.errors import BundleError


def _sealed(tmp_path: Path) -> Path:
    root = tmp_path / "b"
    root.mkdir()
    bundle.write_json(root / "settings.json", {"k": 1})
    (root / "heads.safetensors").write_bytes(b"weights")
    bundle.write_manifest(root, {"inputs": {}})
    return root


def test_sealed_bundle_checks(tmp_path: Path) -> None:
    manifest = bundle.check_bundle(_sealed(tmp_path))
    assert manifest["format_version"] == bundle.FORMAT_VERSION
    assert set(manifest["files"]) == {"settings.json", "heads.safetensors"}
    assert "torch" in manifest["packages"]


def test_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        bundle.check_bundle(tmp_path / "none")


def test_incomplete(tmp_path: Path) -> None:
    root = _sealed(tmp_path)
    (root / "heads.safetensors").unlink()
    with pytest.raises(BundleError, match=r"incomplete: heads\.safetensors is missing"):
        bundle.check_bundle(root)


def test_corrupt_file(tmp_path: Path) -> None:
    root = _sealed(tmp_path)
    (root / "heads.safetensors").write_bytes(b"flipped")
    with pytest.raises(BundleError, match="does not match its recorded hash"):
        bundle.check_bundle(root)


def test_corrupt_manifest_and_other_version(tmp_path: Path) -> None:
    root = _sealed(tmp_path)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["format_version"] = 99
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="format version 99"):
        bundle.check_bundle(root)
    (root / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="corrupt"):
        bundle.check_bundle(root)
