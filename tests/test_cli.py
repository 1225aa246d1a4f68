"""Bad input through the command line: a clear message and exit code 2, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from fame.cli import EXIT_BAD_INPUT, main


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.err


@pytest.fixture
def tiny_log(tmp_path: Path, bgl_2k: Path) -> Path:
    """The first 300 real BGL lines (enough to reach setup's training-data checks)."""
    path = tmp_path / "tiny.log"
    with bgl_2k.open("rb") as src:
        path.write_bytes(b"".join(src.readline() for _ in range(300)))
    return path


def test_missing_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(["setup", str(tmp_path / "nope.log"), "--out", str(tmp_path / "b")], capsys)
    assert code == EXIT_BAD_INPUT
    assert "nope.log" in err and "Traceback" not in err


def test_unknown_format(tiny_log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(
        ["setup", str(tiny_log), "--out", str(tmp_path / "b"), "--format", "nginx"], capsys
    )
    assert code == EXIT_BAD_INPUT and "valid formats are bgl, thunderbird, custom" in err
    code, err = _run(
        ["setup", str(tiny_log), "--out", str(tmp_path / "b"), "--format", "custom"], capsys
    )
    assert code == EXIT_BAD_INPUT and "custom" in err


def test_k_below_one(tiny_log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(["setup", str(tiny_log), "--out", str(tmp_path / "b"), "--k", "0"], capsys)
    assert code == EXIT_BAD_INPUT
    assert "k must be an integer >= 1" in err


def test_empty_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.log"
    empty.write_bytes(b"")
    code, err = _run(["setup", str(empty), "--out", str(tmp_path / "b")], capsys)
    assert code == EXIT_BAD_INPUT
    assert "empty" in err


def test_no_anomalous_labels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Loghub's first 5,001 BGL lines are all normal: setup cannot learn anomalies from them.
    head = Path(__file__).resolve().parents[2] / "shared" / "data" / "bgl" / "BGL_head_5001.log"
    if not head.exists():
        pytest.skip("shared BGL head sample not present")
    code, err = _run(["setup", str(head), "--out", str(tmp_path / "b")], capsys)
    assert code == EXIT_BAD_INPUT
    assert "anomal" in err.lower()


def test_no_normal_labels(tmp_path: Path, bgl_2k: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = [ln for ln in bgl_2k.read_bytes().splitlines(keepends=True) if not ln.startswith(b"-")]
    only_anomalies = tmp_path / "anomalies.log"
    only_anomalies.write_bytes(b"".join(lines))
    code, err = _run(["setup", str(only_anomalies), "--out", str(tmp_path / "b")], capsys)
    assert code == EXIT_BAD_INPUT
    assert "normal" in err.lower()


def test_detect_with_missing_or_corrupt_bundle(
    tiny_log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _run(["detect", "--bundle", str(tmp_path / "none"), str(tiny_log)], capsys)
    assert code == EXIT_BAD_INPUT and "does not exist" in err
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "manifest.json").write_text("{broken")
    code, err = _run(["detect", "--bundle", str(fake), str(tiny_log)], capsys)
    assert code == EXIT_BAD_INPUT and "corrupt" in err


def test_bad_config_value(
    tiny_log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "fame.toml"
    cfg.write_text("[fame]\nmin_recall = 3.0\n")
    code, err = _run(
        ["setup", str(tiny_log), "--out", str(tmp_path / "b"), "--config", str(cfg)], capsys
    )
    assert code == EXIT_BAD_INPUT and "min_recall must lie in [0, 1]" in err
