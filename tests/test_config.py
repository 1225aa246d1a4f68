"""Settings: one definition, validated at once, shared by CLI and config files."""

from __future__ import annotations

from pathlib import Path

import pytest

from fame.cli import build_parser
from fame.config import Settings, load_config_file, setting_fields
from fame.errors import ConfigError


def test_defaults_are_the_papers() -> None:
    s = Settings()
    assert (s.k, s.drain_sim_th, s.drain_depth, s.calibration_fraction) == (100, 0.5, 4, 0.2)
    assert (s.trainable_layers, s.min_recall, s.phase1_max_lines) == (2, 0.9, 200_000)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"k": 0}, "k must be an integer >= 1"),
        ({"k": -3}, "k must be an integer >= 1"),
        ({"drain_sim_th": 1.5}, "drain_sim_th must lie in [0, 1]"),
        ({"cache_size": -1}, "cache_size must be >= 0"),
        ({"threads": -1}, "threads must be an integer >= 0"),
        ({"proposer": "magic"}, "proposer must be one of tfidf, file, llm"),
        ({"proposer": "file"}, "needs --partition-file"),
    ],
)
def test_bad_values_fail_at_once(change: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Settings(**change)  # type: ignore[arg-type]


def test_unknown_setting_lists_valid_names() -> None:
    with pytest.raises(ConfigError, match=r"unknown setting.*kk.*valid names"):
        Settings.from_dict({"kk": 3})


def test_config_file_and_cli_share_names(tmp_path: Path) -> None:
    cfg = tmp_path / "fame.toml"
    cfg.write_text("[fame]\nk = 25\nphase1 = false\n")
    assert load_config_file(cfg) == {"k": 25, "phase1": False}
    args = build_parser().parse_args(["setup", "x.log", "--out", "b", "--k", "7", "--no-phase1"])
    assert args.k == 7 and args.phase1 is False
    args = build_parser().parse_args(["detect", "--bundle", "b", "--threads", "1"])
    assert args.threads == 1
    # Every setup setting has a CLI flag of the same name.
    setup_help = build_parser()._subparsers._group_actions[0].choices["setup"].format_help()  # type: ignore[union-attr]
    for f in setting_fields("setup"):
        assert "--" + f.name.replace("_", "-") in setup_help


def test_bad_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config_file(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("k = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config_file(bad)
