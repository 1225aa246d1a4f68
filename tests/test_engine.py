"""The CPU engine on a real bundle (BGL_2k): ONNX against PyTorch, the cache, the export.

Tolerances: the onnx fp32 graphs compute the same arithmetic as the PyTorch modules, so
scores agree within 1e-4 and verdicts are identical; int8 (dynamic quantisation of the
weights) moves scores by a few hundredths on average and flips lines near a threshold, so
it is held to an average change and a share of identical verdicts.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from fame import bundle as bundle_io
from fame.detector import Detector
from fame.errors import BundleError
from fame.evaluation.evaluate import EvaluationResult
from fame.follow import run_detection_loop
from fame.logs import read_records

FP32_TOLERANCE = 1e-4
INT8_MEAN_TOLERANCE = 0.02  # mean absolute score change of int8 against fp32
INT8_MIN_AGREEMENT = 0.97  # share of lines with the fp32 verdict


@pytest.fixture(scope="module")
def bundle(bgl_2k_run: EvaluationResult) -> Path:
    return bgl_2k_run.out / "bundle"


@pytest.fixture(scope="module")
def lines(bgl_2k: Path) -> list[str]:
    """BGL_2k's last 600 lines plus lines that do not fit the format, and repeats."""
    raw = bgl_2k.read_text(encoding="utf-8").splitlines()[-600:]
    messy = ["", "not a bgl line at all", "- 1 2 3", "\u00e9t\u00e9 \ufffd binary?", "x" * 5000]
    return raw + messy + raw[:50]


def _detect(detector: Detector, lines: list[str]) -> list[dict[str, Any]]:
    return [d.to_json() for d in detector.detect_lines(lines, batch_size=128)]


@pytest.fixture(scope="module")
def torch_results(bundle: Path, lines: list[str]) -> list[dict[str, Any]]:
    return _detect(Detector.load(bundle, engine="torch", cache_size=0), lines)


def test_setup_seals_an_onnx_export_into_the_bundle(bundle: Path) -> None:
    manifest = bundle_io.check_bundle(bundle)
    index = json.loads((bundle / "onnx" / "export.json").read_text())
    assert "onnx/trunk.int8.onnx" in manifest["files"]
    assert set(index["heads"]) >= {"gate", "expert/UNIVERSAL_NORMAL"}
    detector = Detector.load(bundle, engine="onnx", precision="int8")
    assert detector.backend.name == "onnx-int8"


def test_onnx_fp32_matches_torch(
    bundle: Path, lines: list[str], torch_results: list[dict[str, Any]]
) -> None:
    onnx = _detect(Detector.load(bundle, engine="onnx", precision="fp32", cache_size=0), lines)
    assert len(onnx) == len(lines) == len(torch_results)
    for a, b in zip(onnx, torch_results, strict=True):
        assert a["line"] == b["line"]
        assert (a["anomaly"], a["route"], a["domain"]) == (b["anomaly"], b["route"], b["domain"])
        assert a["score"] == pytest.approx(b["score"], abs=FP32_TOLERANCE)
        assert a["gate"] == pytest.approx(b["gate"], abs=FP32_TOLERANCE)
    assert any(r["anomaly"] for r in onnx) and not all(r["anomaly"] for r in onnx)


def test_onnx_int8_stays_close_to_fp32(
    bundle: Path, lines: list[str], torch_results: list[dict[str, Any]]
) -> None:
    int8 = _detect(Detector.load(bundle, engine="onnx", precision="int8", cache_size=0), lines)
    agree = sum(a["anomaly"] == b["anomaly"] for a, b in zip(int8, torch_results, strict=True))
    assert agree / len(lines) >= INT8_MIN_AGREEMENT
    changes = [abs(a["score"] - b["score"]) for a, b in zip(int8, torch_results, strict=True)]
    assert sum(changes) / len(changes) <= INT8_MEAN_TOLERANCE


def test_reference_engine_gives_the_same_verdicts(
    bundle: Path, lines: list[str], torch_results: list[dict[str, Any]]
) -> None:
    """The paper's per-stage, per-line architecture computes the same models."""
    subset = lines[:60] + lines[600:605]
    reference = Detector.load(bundle, engine="reference", cache_size=0)
    ref = [d.to_json() for d in reference.detect_lines(subset, batch_size=1)]
    expected = torch_results[:60] + torch_results[600:605]
    for a, b in zip(ref, expected, strict=True):
        assert (a["anomaly"], a["route"], a["domain"]) == (b["anomaly"], b["route"], b["domain"])
        assert a["score"] == pytest.approx(b["score"], abs=FP32_TOLERANCE)


def test_cache_on_and_off_give_identical_output(bundle: Path, lines: list[str]) -> None:
    on = Detector.load(bundle, precision="int8", cache_size=10_000)
    off = Detector.load(bundle, precision="int8", cache_size=0)
    first = _detect(on, lines)
    misses = on.cache_misses
    second = _detect(on, lines)  # now all from the cache
    assert on.cache_misses == misses and on.cache_hits >= misses
    assert first == second == _detect(off, lines)
    assert off.cache_hits == 0


def test_a_tiny_cache_evicts_and_stays_correct(bundle: Path, lines: list[str]) -> None:
    tiny = Detector.load(bundle, precision="int8", cache_size=3)
    off = Detector.load(bundle, precision="int8", cache_size=0)
    assert _detect(tiny, lines) == _detect(off, lines)
    assert len(tiny._cache) <= 3


def test_order_is_kept_with_threads_and_the_streaming_loop(
    bundle: Path, bgl_2k: Path, tmp_path: Path
) -> None:
    """Results stay one per line, in input order, through the reader thread and onnxruntime's
    own threads, for one and two intra-op threads."""
    log = tmp_path / "mixed.log"
    raw = bgl_2k.read_bytes().splitlines()[-400:]
    log.write_bytes(b"\n".join([*raw[:200], b"\xff\xfe binary \x00 junk", *raw[200:]]) + b"\n")
    outputs = []
    for threads in (1, 2):
        detector = Detector.load(bundle, precision="int8", threads=threads)
        sink = tmp_path / f"out-{threads}.jsonl"
        with sink.open("w", encoding="utf-8") as fh:
            records = read_records(str(log), detector.format)
            loop = run_detection_loop(detector, records, fh, batch_size=32, flush_ms=20)
        rows = [json.loads(x) for x in sink.read_text().splitlines()]
        assert loop.lines == len(rows) == 401
        assert [r["line"] for r in rows] == list(range(1, 402))
        assert rows[200]["malformed"] is True
        outputs.append(rows)
    assert outputs[0] == outputs[1]


def _unexported_copy(bundle: Path, target: Path) -> Path:
    """A copy of the bundle as an older fame wrote it: no onnx/ folder."""
    shutil.copytree(bundle, target)
    shutil.rmtree(target / "onnx")
    manifest = bundle_io.read_json(target / "manifest.json")
    bundle_io.write_manifest(target, manifest["provenance"])
    return target


def test_a_bundle_without_export_is_exported_once_into_the_cache(
    bundle: Path, tmp_path: Path, lines: list[str]
) -> None:
    old = _unexported_copy(bundle, tmp_path / "old")
    cache = tmp_path / "cache"
    first = Detector.load(old, precision="int8", onnx_cache_dir=str(cache))
    exports = list(cache.glob("*/export.json"))
    assert len(exports) == 1
    stamp = exports[0].stat().st_mtime_ns
    second = Detector.load(old, precision="int8", onnx_cache_dir=str(cache))
    assert exports[0].stat().st_mtime_ns == stamp  # reused, not exported again
    sealed = Detector.load(bundle, precision="int8")
    assert _detect(first, lines[:100]) == _detect(second, lines[:100])
    assert _detect(first, lines[:100]) == _detect(sealed, lines[:100])


def test_a_corrupt_export_names_the_fix(bundle: Path, tmp_path: Path) -> None:
    old = _unexported_copy(bundle, tmp_path / "old")
    cache = tmp_path / "cache"
    Detector.load(old, precision="int8", onnx_cache_dir=str(cache))
    (graph,) = [p for p in cache.glob("*/trunk.int8.onnx")]
    graph.write_bytes(b"not an onnx graph")
    with pytest.raises(BundleError, match=r"unreadable.*delete"):
        Detector.load(old, precision="int8", onnx_cache_dir=str(cache))
    # A corrupt graph inside a sealed bundle is caught by the manifest's hashes.
    sealed = tmp_path / "sealed"
    shutil.copytree(bundle, sealed)
    (sealed / "onnx" / "trunk.int8.onnx").write_bytes(b"garbage")
    with pytest.raises(BundleError, match="does not match its recorded hash"):
        Detector.load(sealed)
