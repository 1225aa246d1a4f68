"""The bundle: the one directory that passes from offline setup to online detection.

Layout (every file but the weights is JSON or text; weights are safetensors)::

    manifest.json        format version, provenance, sha256 of every other file
    settings.json        the settings setup ran with
    format.json          the log format (fields, model-visible fields)
    templates.json       frozen Drain3 templates
    kshot.json           K-shot statistics per EventID
    partition.json       the proposer's partition
    certification.json   certified domains and every decision with its reason
    calibration.json     thresholds per mixed domain, UNIVERSAL_NORMAL fusion
    heads.safetensors    gate, selector and expert heads; heads.json describes them
    encoder/             the Phase 1 encoder (safetensors) and its tokenizer
    router_encoder/      only when the router has its own encoder
    report.json          what setup measured (timings, training reports)

Loading never runs code from the bundle: no pickle, no ``trust_remote_code``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from fame.errors import BundleError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_VERSIONED_PACKAGES = ("fame", "torch", "transformers", "drain3", "numpy", "scikit-learn")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def package_versions() -> dict[str, str]:
    """Versions of the packages whose behaviour shapes a bundle."""
    versions = {"python": platform.python_version()}
    for name in _VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def write_json(path: Path, data: Any) -> None:
    """Write JSON with stable formatting."""
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def read_json(path: Path) -> Any:
    """Read a bundle JSON file, turning every failure into a :class:`BundleError`."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise BundleError(
            f"bundle file {path.name} is missing from {path.parent}; the bundle is incomplete: "
            "run 'fame setup' again to rebuild it"
        ) from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(
            f"bundle file {path} is corrupt ({exc}); run 'fame setup' again to rebuild it"
        ) from exc


def _bundle_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(root: Path, provenance: Mapping[str, Any]) -> None:
    """Seal a bundle: record the format version, provenance and a hash of every file."""
    files = {str(p.relative_to(root)): sha256_file(p) for p in _bundle_files(root)}
    manifest = {
        "format_version": FORMAT_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "packages": package_versions(),
        "provenance": dict(provenance),
        "files": files,
    }
    write_json(root / MANIFEST, manifest)


def check_bundle(root: str | Path, *, verify_hashes: bool = True) -> dict[str, Any]:
    """Check that a bundle is complete, intact and of this format version.

    Args:
        root: The bundle directory.
        verify_hashes: Re-hash every file against the manifest (catches corruption).

    Returns:
        The manifest.

    Raises:
        BundleError: the directory, a file or the manifest is missing, a file's hash differs,
            or the format version is not the one this fame reads.
    """
    path = Path(root)
    if not path.is_dir():
        raise BundleError(
            f"bundle directory {path} does not exist; create one with "
            "'fame setup LOG --out DIR' and pass that DIR"
        )
    manifest = read_json(path / MANIFEST)
    if not isinstance(manifest, dict) or "format_version" not in manifest:
        raise BundleError(f"{path / MANIFEST} is not a fame manifest; rebuild the bundle")
    version = manifest["format_version"]
    if version != FORMAT_VERSION:
        raise BundleError(
            f"bundle {path} has format version {version}, this fame reads version "
            f"{FORMAT_VERSION}; rebuild it with 'fame setup' from this version"
        )
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise BundleError(f"{path / MANIFEST} lists no files; rebuild the bundle")
    for name, expected in files.items():
        file = path / name
        if not file.is_file():
            raise BundleError(
                f"bundle {path} is incomplete: {name} is missing; rebuild it with 'fame setup'"
            )
        if verify_hashes and sha256_file(file) != expected:
            raise BundleError(
                f"bundle file {file} does not match its recorded hash (corrupt or edited); "
                "rebuild the bundle with 'fame setup'"
            )
    return manifest


def hash_inputs(paths: Iterable[str | Path]) -> dict[str, str]:
    """SHA-256 of each input file, for provenance (stdin is recorded as such)."""
    out = {}
    for p in paths:
        path = Path(p)
        out[str(p)] = sha256_file(path) if path.is_file() else "not a file"
    return out
