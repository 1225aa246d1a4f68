"""K-shot sampling (paper III-A) on constructed offline regions with known answers."""

from __future__ import annotations

import json

import pytest

from fame.errors import BundleError, ConfigError, InputError, TrainingDataError
from fame.sampling import KShotSample, LabeledLine, sample_kshot

# index:   0      1     2      3     4      5     6     7      8     9      10    11
EVENTS = ["A", "A", "B", "A", "A", "C", "A", "A", "B", "A", "A", "B"]
LABELS: list[bool | None] = [
    False,
    True,
    False,
    None,
    False,
    None,
    True,
    False,
    True,
    False,
    True,
    False,
]
TEXTS = [f"{e.lower()}{i}" for i, e in enumerate(EVENTS)]
TEMPLATES = {"A": "template a", "B": "template b", "C": "template c"}


def _sample(k: int) -> KShotSample:
    return sample_kshot(EVENTS, TEXTS, LABELS, TEMPLATES, k)


def test_k_most_recent_labelled_lines_split_chronologically() -> None:
    sample = _sample(5)
    # A's labelled lines are 0 1 4 6 7 9 10: the 5 most recent are 4 6 7 9 10, and
    # floor(5 * 0.2) = 1 goes to calibration. B has 3 labelled lines: floor(0.6) = 0.
    assert [ln.index for ln in sample.train] == [2, 4, 6, 7, 8, 9, 11]
    assert [ln.index for ln in sample.calibration] == [10]
    assert sample.calibration[0] == LabeledLine(10, "A", "a10", True)
    assert sample.labeled_count == 8
    assert [ln.index for ln in sample.lines()] == [2, 4, 6, 7, 8, 9, 10, 11]


def test_unlabelled_lines_are_never_sampled() -> None:
    sample = _sample(100)
    chosen = {ln.index for ln in sample.lines()}
    assert 3 not in chosen and 5 not in chosen
    assert sample.events["A"].n_labeled == 7


def test_signals_counts_and_representatives() -> None:
    sample = _sample(5)
    a, b, c = sample.events["A"], sample.events["B"], sample.events["C"]
    assert (a.count, a.n_labeled, a.has_normal, a.has_anomaly) == (8, 5, True, True)
    assert (a.normal_example, a.anomaly_example) == ("a9", "a10")
    assert a.template == "template a"
    assert (b.count, b.n_labeled, b.normal_example, b.anomaly_example) == (3, 3, "b11", "b8")
    # C occurs offline but has no labelled line: stats with both signals off.
    assert (c.count, c.n_labeled, c.has_normal, c.has_anomaly) == (1, 0, False, False)
    assert c.normal_example is None and c.anomaly_example is None
    assert list(sample.events) == ["A", "B", "C"]
    assert sample.n_offline == len(EVENTS)


def test_pu_normal_pool_excludes_only_sampled_anomalies() -> None:
    sample = _sample(5)
    # Anomalies in the sample: 6, 8, 10. Line 1 is anomalous but outside A's K-shot sample,
    # so under the K-shot budget it is unlabelled and belongs to the PU-normal pool.
    assert sample.pu_normal == [0, 1, 2, 3, 4, 5, 7, 9, 11]


def test_k_one_takes_only_the_latest_labelled_line() -> None:
    sample = _sample(1)
    assert [ln.index for ln in sample.train] == [10, 11]
    assert sample.calibration == []
    assert sample.events["B"].has_anomaly is False


@pytest.mark.parametrize(("n", "n_train", "n_cal"), [(4, 4, 0), (5, 4, 1), (10, 8, 2), (15, 12, 3)])
def test_split_rounding_is_floor_of_twenty_percent(n: int, n_train: int, n_cal: int) -> None:
    events = ["X"] * n + ["Y"]
    labels: list[bool | None] = [i % 2 == 0 for i in range(n)] + [True]
    sample = sample_kshot(events, [str(i) for i in range(n + 1)], labels, {}, 100)
    assert sum(ln.event_id == "X" for ln in sample.train) == n_train
    assert sum(ln.event_id == "X" for ln in sample.calibration) == n_cal
    # The calibration lines are the latest ones.
    cal = [ln.index for ln in sample.calibration if ln.event_id == "X"]
    assert cal == list(range(n - n_cal, n))


@pytest.mark.parametrize("k", [0, -3])
def test_k_below_one_is_a_config_error(k: int) -> None:
    with pytest.raises(ConfigError, match="k must be"):
        _sample(k)


def test_bad_calibration_fraction_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="calibration_fraction"):
        sample_kshot(EVENTS, TEXTS, LABELS, TEMPLATES, 5, calibration_fraction=1.0)


def test_misaligned_inputs_are_an_input_error() -> None:
    with pytest.raises(InputError, match="lengths"):
        sample_kshot(EVENTS, TEXTS[:-1], LABELS, TEMPLATES, 5)


def test_no_anomalous_label_is_a_training_data_error() -> None:
    labels = [False if label else label for label in LABELS]
    with pytest.raises(TrainingDataError, match="no anomalous line"):
        sample_kshot(EVENTS, TEXTS, labels, TEMPLATES, 5)


def test_no_normal_label_is_a_training_data_error() -> None:
    labels: list[bool | None] = [None if label is None else True for label in LABELS]
    with pytest.raises(TrainingDataError, match="no normal line"):
        sample_kshot(EVENTS, TEXTS, labels, TEMPLATES, 5)


def test_anomalies_outside_the_sample_are_reported_with_a_k_hint() -> None:
    events = ["A", "A", "A"]
    labels: list[bool | None] = [True, False, False]
    with pytest.raises(TrainingDataError, match="increase k"):
        sample_kshot(events, ["x", "y", "z"], labels, {}, 2)


def test_json_round_trip() -> None:
    sample = _sample(5)
    restored = KShotSample.from_json(json.loads(json.dumps(sample.to_json())))
    assert restored == sample
    light = KShotSample.from_json(json.loads(json.dumps(sample.to_json(include_lines=False))))
    assert light.train == [] and light.calibration == []
    assert light.events == sample.events and light.pu_normal == sample.pu_normal


def test_pu_normal_is_stored_as_ranges() -> None:
    data = _sample(5).to_json()
    assert data["pu_normal_ranges"] == [[0, 6], [7, 8], [9, 10], [11, 12]]


@pytest.mark.parametrize("data", [{}, {"format": "other"}, {"format": "fame-kshot/1", "k": 5}])
def test_malformed_json_is_a_bundle_error(data: dict[str, object]) -> None:
    with pytest.raises(BundleError):
        KShotSample.from_json(data)
