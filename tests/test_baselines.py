"""The paper IV-B baselines on Loghub's BGL_2k sample (first 1700 lines offline, last 300 test).

Measured at k=20, seed=0 (2-core CPU, whole file about 15 s):

=============  =========  ======  ======  ======  ======================
baseline       precision  recall  F1      AUROC   tp / fp / fn / tn
=============  =========  ======  ======  ======  ======================
drain_rf       1.000      0.125   0.222   0.707   3 / 0 / 21 / 276
tfidf_iforest  0.126      1.000   0.224   0.784   24 / 166 / 0 / 110
sbert_lr       1.000      0.333   0.500   0.9997  8 / 0 / 16 / 276
=============  =========  ======  ======  ======  ======================

The floors below sit a little under these values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pytest

from fame.config import Settings
from fame.errors import ConfigError
from fame.evaluation.baselines import BASELINES, BaselineResult, run_baseline
from fame.setup import OfflineData, read_offline

N_OFFLINE = 1700
K = 20
# name -> (AUROC floor, F1 floor), a little under the measured values in the module docstring.
FLOORS = {
    "drain_rf": (0.65, 0.18),
    "tfidf_iforest": (0.72, 0.18),
    "sbert_lr": (0.95, 0.40),
}


@dataclass
class Split:
    """The BGL_2k offline region and test lines."""

    offline: OfflineData
    texts: list[str]
    contents: list[str]
    labels: list[bool]


@pytest.fixture(scope="module")
def split(bgl_2k: Path) -> Split:
    """BGL_2k split chronologically: first 1700 lines offline, last 300 test."""
    data = read_offline([bgl_2k], Settings())
    offline = OfflineData(
        data.contents[:N_OFFLINE], data.texts[:N_OFFLINE], data.labels[:N_OFFLINE]
    )
    return Split(
        offline,
        data.texts[N_OFFLINE:],
        data.contents[N_OFFLINE:],
        [bool(label) for label in data.labels[N_OFFLINE:]],
    )


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_baseline_on_bgl_2k(split: Split, name: str) -> None:
    result = run_baseline(name, split.offline, split.texts, split.contents, split.labels, k=K)
    assert isinstance(result, BaselineResult)
    assert (result.name, result.k, result.seed) == (name, K, 0)
    assert result.tp + result.fp + result.fn + result.tn == len(split.labels) == 300
    assert result.tp + result.fn == sum(split.labels)
    p, r = result.precision, result.recall
    assert result.f1 == pytest.approx(0.0 if p + r == 0 else 2 * p * r / (p + r))
    assert p == pytest.approx(result.tp / (result.tp + result.fp) if result.tp + result.fp else 0)
    assert r == pytest.approx(result.tp / (result.tp + result.fn))
    assert result.auroc is not None
    for value in (p, r, result.f1, result.auroc):
        assert 0.0 <= value <= 1.0
    assert math.isfinite(result.threshold)
    assert result.seconds >= 0.0
    auroc_floor, f1_floor = FLOORS[name]
    assert result.auroc > auroc_floor
    assert result.f1 > f1_floor


def test_unknown_baseline_lists_names(split: Split) -> None:
    with pytest.raises(ConfigError) as info:
        run_baseline("nope", split.offline, split.texts, split.contents, split.labels, k=K)
    for name in BASELINES:
        assert name in str(info.value)
