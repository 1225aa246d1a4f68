"""Training of the router and the experts on cached trunk states.

Setup computes each distinct line's trunk state once (:class:`StateCache`) and every head
(gate, selector, experts) trains its top layers on those states. This module turns lists of
texts into the stratified train/validation splits the heads' stopping rules need.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fame.config import Settings
from fame.models.heads import (
    Head,
    HeadReport,
    StopRule,
    fit_binary_head,
    fit_multiclass_head,
)
from fame.models.trunk import Trunk

logger = logging.getLogger(__name__)

# Share of each head's training lines held out for its stopping rule, stratified by class.
# The paper names the validation metrics (III-C, III-D2) but not how the split is drawn.
VALIDATION_FRACTION = 0.1
# Phase 2 small-data rule (III-D2): under 4,000 lines train a fixed 500 steps.
SMALL_DATA_LINES = 4000


class StateCache:
    """Trunk states of distinct texts, computed once and shared by every head.

    Args:
        trunk: The frozen lower layers.
        tokenizer: The trunk's tokenizer.
        max_tokens: Token budget per line.
        progress: Show progress while encoding.
    """

    def __init__(
        self,
        trunk: Trunk,
        tokenizer: PreTrainedTokenizerBase,
        max_tokens: int,
        *,
        progress: bool = False,
    ) -> None:
        self.trunk = trunk
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.progress = progress
        self._states: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._states)

    def get(self, texts: Sequence[str]) -> list[torch.Tensor]:
        """States for ``texts`` in order, encoding the ones not seen before."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._states]
        if missing:
            logger.info("encoding %d new distinct lines with the trunk", len(missing))
            encoded = self.trunk.encode(
                missing,
                self.tokenizer,
                max_tokens=self.max_tokens,
                progress=self.progress and len(missing) > 256,
            )
            self._states.update(zip(missing, encoded, strict=True))
        return [self._states[t] for t in texts]


def _split(n: int, labels: Sequence[int], seed: int) -> tuple[list[int], list[int]]:
    """Stratified train/validation indices; a class with fewer than 2 lines stays in train."""
    rng = random.Random(seed)
    train: list[int] = []
    val: list[int] = []
    by_class: dict[int, list[int]] = {}
    for i in range(n):
        by_class.setdefault(int(labels[i]), []).append(i)
    for members in by_class.values():
        shuffled = members[:]
        rng.shuffle(shuffled)
        # At least one line of every class with two or more, so that AUROC is defined.
        n_val = max(1, int(len(shuffled) * VALIDATION_FRACTION)) if len(shuffled) >= 2 else 0
        val.extend(shuffled[:n_val])
        train.extend(shuffled[n_val:])
    return sorted(train), sorted(val)


@dataclass
class _SplitData:
    """A head's training and held-out lines as trunk states with their labels."""

    train_states: list[torch.Tensor]
    train_labels: list[int]
    val_states: list[torch.Tensor]
    val_labels: list[int]

    @classmethod
    def of(
        cls, states: StateCache, texts: Sequence[str], labels: Sequence[int], seed: int
    ) -> _SplitData:
        train_idx, val_idx = _split(len(texts), labels, seed)
        encoded = states.get(texts)
        return cls(
            [encoded[i] for i in train_idx],
            [int(labels[i]) for i in train_idx],
            [encoded[i] for i in val_idx],
            [int(labels[i]) for i in val_idx],
        )


def _fit_binary(
    encoder: PreTrainedModel,
    states: StateCache,
    texts: Sequence[str],
    labels: Sequence[int],
    rule: StopRule,
    settings: Settings,
    seed: int,
    name: str,
) -> tuple[Head, HeadReport]:
    data = _SplitData.of(states, texts, labels, seed)
    head = Head.from_encoder(encoder, trainable_layers=settings.trainable_layers, seed=seed)
    logger.info(
        "training %s head: %d lines (%d positive), %d held out",
        name,
        len(data.train_labels),
        sum(data.train_labels),
        len(data.val_labels),
    )
    report = fit_binary_head(
        head,
        data.train_states,
        data.train_labels,
        val_states=data.val_states,
        val_labels=data.val_labels,
        rule=rule,
        batch_size=settings.train_batch_size,
        seed=seed,
        progress=states.progress,
    )
    return head, report


def train_gate(
    encoder: PreTrainedModel,
    states: StateCache,
    positives: Sequence[str],
    negatives: Sequence[str],
    *,
    settings: Settings,
    seed: int,
) -> tuple[Head, HeadReport]:
    """The gate (III-C1): expert-domain lines (1) against UNIVERSAL_NORMAL lines (0)."""
    texts = [*positives, *negatives]
    labels = [1] * len(positives) + [0] * len(negatives)
    return _fit_binary(encoder, states, texts, labels, StopRule.gate(), settings, seed, "gate")


def train_selector(
    encoder: PreTrainedModel,
    states: StateCache,
    texts: Sequence[str],
    labels: Sequence[int],
    classes: Sequence[str],
    *,
    settings: Settings,
    seed: int,
) -> tuple[Head, HeadReport]:
    """The selector (III-C2): which expert domain, with the class weights of Eq. 1."""
    data = _SplitData.of(states, texts, labels, seed)
    head = Head.from_encoder(
        encoder,
        trainable_layers=settings.trainable_layers,
        n_outputs=len(classes),
        class_names=list(classes),
        seed=seed,
    )
    logger.info(
        "training selector over %d domains on %d lines", len(classes), len(data.train_labels)
    )
    report = fit_multiclass_head(
        head,
        data.train_states,
        data.train_labels,
        val_states=data.val_states,
        val_labels=data.val_labels,
        rule=StopRule.selector(),
        batch_size=settings.train_batch_size,
        seed=seed,
        progress=states.progress,
    )
    return head, report


def train_expert(
    encoder: PreTrainedModel,
    states: StateCache,
    anomalies: Sequence[str],
    normals: Sequence[str],
    *,
    settings: Settings,
    seed: int,
    name: str,
) -> tuple[Head, HeadReport]:
    """One Phase 2 expert (III-D2): focal loss, the small-set and epoch stopping rules."""
    texts = [*anomalies, *normals]
    labels = [1] * len(anomalies) + [0] * len(normals)
    rule = StopRule.expert(small_data_lines=SMALL_DATA_LINES, max_epochs=settings.expert_max_epochs)
    return _fit_binary(encoder, states, texts, labels, rule, settings, seed, f"expert {name}")


def score_texts(head: Head, states: StateCache, texts: Sequence[str]) -> np.ndarray[Any, Any]:
    """A binary head's scores for texts, as a float64 array."""
    if not texts:
        return np.zeros(0, dtype=np.float64)
    scores = head.score_states(states.get(texts))
    return scores.reshape(-1).numpy().astype(np.float64)
