"""Classification heads on the shared trunk: the gate, the selector and the experts.

A head is its own trainable copy of the top ``trainable_layers`` transformer layers of the
Phase 1 encoder plus a linear layer on the [CLS] position (paper III-D2: freeze the embeddings
and the lower layers, train the top two layers and the head). The frozen part below is the
shared :class:`~fame.models.trunk.Trunk`, so heads train and score on cached trunk states.

Training follows the stopping rules of the paper, one named :class:`StopRule` per component:

* gate (III-C1): binary focal loss; stop once validation recall at 0.5 reaches 0.95;
* selector (III-C2): weighted cross-entropy (Eq. 1); stop at validation accuracy 0.80 or when
  it fails to improve for one epoch;
* experts (III-D2): binary focal loss; under 4,000 training lines a fixed 500 steps with
  validation AUROC every 50 steps, else epochs with AUROC patience 3; best weights kept.

Persistence uses safetensors only (no pickle): one file for all heads, described by a JSON
document in the file's metadata.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from sklearn.metrics import roc_auc_score
from torch import nn
from tqdm import tqdm
from transformers import PretrainedConfig, PreTrainedModel

from fame.errors import BundleError, ConfigError, TrainingDataError
from fame.models.encoder import EncoderKind, check_encoder, encoder_layers
from fame.models.encoder import load_saved_encoder as load_saved_encoder  # re-export
from fame.models.encoder import save_encoder as save_encoder  # re-export
from fame.models.losses import FOCAL_ALPHA, FOCAL_GAMMA, focal_loss, selector_class_weights
from fame.models.trunk import length_batches, pad_states, run_layers

logger = logging.getLogger(__name__)

TRAINABLE_LAYERS = 2
"""Top transformer layers each head trains (paper III-D2 trains the top 2 of 12)."""

HEAD_DROPOUT = 0.1
"""Dropout on the [CLS] vector before the linear layer (BERT's own classifier default)."""

BATCH_SIZE = 32
LR_LAYERS = 5e-5
"""AdamW learning rate of the copied transformer layers (standard BERT fine-tuning rate)."""
LR_LINEAR = 1e-3
"""AdamW learning rate of the freshly initialised linear layer: it starts from scratch, so a
higher rate lets it catch up within the few hundred steps the small experts get."""
WEIGHT_DECAY = 0.01
MAX_GRAD_NORM = 1.0
SCORE_BATCH_SIZE = 64
"""Lines per scoring pass: measured fastest on 2 CPU cores (256 was half as fast)."""

HEADS_FORMAT = "fame-heads/1"
# Floor on router training steps before its stopping rules may fire (ours, not the paper's:
# on small offline regions one epoch is a handful of steps).
ROUTER_MIN_STEPS = 100
# The validation-loss fallback counts an evaluation as an improvement only past this margin,
# so that a loss creeping towards zero does not keep a tiny expert training to the cap.
LOSS_MIN_DELTA = 1e-3
_META_KEY = "fame_heads"

Metric = Literal["recall", "accuracy", "auroc"]


@dataclass(frozen=True)
class StopRule:
    """When head training stops and which weights it keeps.

    Use the named constructors :meth:`gate`, :meth:`selector` and :meth:`expert`.

    Attributes:
        name: Rule name, reported in :class:`HeadReport`.
        metric: Validation metric (higher is better).
        target: Stop as soon as the metric reaches this value (``None``: no target).
        patience: Stop after this many evaluations without strict improvement (``None``: off).
        max_epochs: Cap on passes over the training set in epoch mode.
        small_data_lines: Training sets with fewer lines use step mode (fixed steps).
        fixed_steps: Gradient steps in step mode.
        eval_every: Steps between evaluations in step mode (epoch mode evaluates per epoch).
        restore_best: Return the best-metric weights instead of the last ones.
        threshold: Decision threshold of the recall metric.
        min_steps: Gradient steps before a target or patience may stop training. On tiny
            training sets an epoch is a single step, and the paper's epoch rules would stop
            an untrained router (a gate that flags everything meets a recall target).
    """

    name: str
    metric: Metric
    target: float | None = None
    patience: int | None = None
    max_epochs: int = 5
    small_data_lines: int = 0
    fixed_steps: int = 500
    eval_every: int = 50
    restore_best: bool = True
    threshold: float = 0.5
    min_steps: int = 0

    @classmethod
    def gate(
        cls, *, target_recall: float = 0.95, max_epochs: int = 5, min_steps: int = ROUTER_MIN_STEPS
    ) -> StopRule:
        """Gate rule (III-C1): stop once validation recall at 0.5 reaches ``target_recall``.

        The last weights are kept: the paper stops at the first epoch that meets the target
        (an earlier, higher-recall epoch could simply flag everything). ``max_epochs`` is this
        project's cap; the paper gives none.

        Args:
            target_recall: Recall to reach (paper: 0.95).
            max_epochs: Cap on epochs.
            min_steps: Steps before the target may stop training (this project's floor).

        Returns:
            The rule.
        """
        return cls(
            name="gate",
            metric="recall",
            target=target_recall,
            max_epochs=max_epochs,
            restore_best=False,
            min_steps=min_steps,
        )

    @classmethod
    def selector(
        cls,
        *,
        target_accuracy: float = 0.80,
        patience: int = 1,
        max_epochs: int = 5,
        min_steps: int = ROUTER_MIN_STEPS,
    ) -> StopRule:
        """Selector rule (III-C2): stop at validation accuracy 0.80, or after one flat epoch.

        The best-accuracy weights are kept when training stops without reaching the target.

        Args:
            target_accuracy: Accuracy to reach (paper: 0.80).
            patience: Epochs without improvement before stopping (paper: 1).
            max_epochs: Cap on epochs (this project's; the paper gives none).

        Returns:
            The rule.
        """
        return cls(
            name="selector",
            metric="accuracy",
            target=target_accuracy,
            patience=patience,
            max_epochs=max_epochs,
            min_steps=min_steps,
        )

    @classmethod
    def expert(
        cls,
        *,
        small_data_lines: int = 4000,
        fixed_steps: int = 500,
        eval_every: int = 50,
        patience: int = 3,
        max_epochs: int = 10,
    ) -> StopRule:
        """Expert rule (III-D2): AUROC early stopping, keeping the best weights.

        Under ``small_data_lines`` training lines: at most ``fixed_steps`` steps with
        validation AUROC every ``eval_every`` steps; ``patience`` checks without improvement
        end training early (the paper's "AUROC-based early stopping is checked every 50
        steps"; its patience there is unstated, this reuses P2). Otherwise: epochs with AUROC
        ``patience``, at most ``max_epochs`` (this project's cap). In step mode training also
        ends once validation AUROC is 1.0, since no later checkpoint could replace it.

        Args:
            small_data_lines: Step-mode threshold (paper: 4,000).
            fixed_steps: Steps in step mode (paper: 500).
            eval_every: Evaluation interval in step mode (paper: 50).
            patience: Evaluations without improvement before stopping (paper P2: 3).
            max_epochs: Epoch-mode cap.

        Returns:
            The rule.
        """
        return cls(
            name="expert",
            metric="auroc",
            patience=patience,
            max_epochs=max_epochs,
            small_data_lines=small_data_lines,
            fixed_steps=fixed_steps,
            eval_every=eval_every,
        )


@dataclass
class HeadReport:
    """What one head's training did.

    Attributes:
        rule: Stop rule name.
        metric: Metric used for stopping: the rule's, or ``"val_loss"`` when the rule's metric
            is undefined on the validation set (e.g. AUROC with one class), or ``"none"``
            without validation data.
        best_metric: Best validation value seen (lowest for ``val_loss``), if any.
        final_metric: Value at the last evaluation, if any.
        steps: Gradient steps taken.
        epochs: Passes over the training set started.
        stop_reason: ``"target"``, ``"patience"``, ``"max_epochs"``, ``"fixed_steps"``,
            ``"perfect_auroc"``, with notes on fallbacks.
        seconds: Wall time of training including validation.
        train_lines: Training lines.
        val_lines: Validation lines.
        restored_step: Step whose weights were returned.
        history: ``(step, metric value)`` at each evaluation.
    """

    rule: str
    metric: str
    best_metric: float | None
    final_metric: float | None
    steps: int
    epochs: int
    stop_reason: str
    seconds: float
    train_lines: int
    val_lines: int
    restored_step: int
    history: list[tuple[int, float]] = field(default_factory=list)


class Head(nn.Module):
    """Top transformer layers + [CLS] linear classifier, run on trunk states.

    Build it with :meth:`from_encoder` (training) or get it from :func:`load_heads`.

    Attributes:
        kind: Encoder layout of the layers.
        layers: The head's own transformer layers, bottom first.
        dropout: Dropout on the [CLS] vector.
        classifier: ``Linear(hidden, n_outputs)``.
        n_outputs: 1 for a binary head (score = sigmoid), C for a C-class head (softmax).
        class_names: Names of the C classes of a multiclass head (empty for binary).
    """

    def __init__(
        self,
        layers: nn.ModuleList,
        classifier: nn.Linear,
        *,
        kind: EncoderKind,
        dropout: float = HEAD_DROPOUT,
        class_names: Sequence[str] = (),
    ) -> None:
        """Stores the modules and settings.

        Args:
            layers: Transformer layers (the top layers of the encoder).
            classifier: Linear layer on the [CLS] vector.
            kind: Encoder layout of ``layers``.
            dropout: Dropout probability before the classifier.
            class_names: Class names of a multiclass head.
        """
        super().__init__()
        self.kind: EncoderKind = kind
        self.layers = layers
        self.dropout = nn.Dropout(dropout)
        self.classifier = classifier
        self.class_names: tuple[str, ...] = tuple(class_names)

    @classmethod
    def from_encoder(
        cls,
        encoder: PreTrainedModel,
        *,
        trainable_layers: int = TRAINABLE_LAYERS,
        n_outputs: int = 1,
        class_names: Sequence[str] = (),
        dropout: float = HEAD_DROPOUT,
        seed: int = 0,
    ) -> Head:
        """Copies the top layers of an encoder and adds a fresh linear layer.

        Args:
            encoder: Bare BERT/DistilBERT encoder (after Phase 1).
            trainable_layers: Top layers to copy; the trunk must hold the others.
            n_outputs: 1 (binary) or the number of classes (>= 2).
            class_names: ``n_outputs`` names for a multiclass head; empty for binary.
            dropout: Dropout before the linear layer.
            seed: Seed of the linear layer's initialisation (the global RNG is left alone).

        Returns:
            The untrained head.

        Raises:
            ConfigError: Bad ``trainable_layers``, ``n_outputs`` or ``class_names``.
        """
        kind = check_encoder(encoder)
        all_layers = encoder_layers(encoder)
        if not 1 <= trainable_layers <= len(all_layers):
            raise ConfigError(
                f"trainable_layers={trainable_layers} but the encoder has {len(all_layers)} "
                f"layers; expected 1..{len(all_layers)}; the paper trains the top 2"
            )
        _check_outputs(n_outputs, class_names)
        layers = nn.ModuleList(
            copy.deepcopy(all_layers[i])
            for i in range(len(all_layers) - trainable_layers, len(all_layers))
        )
        hidden = int(encoder.config.hidden_size)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            classifier = nn.Linear(hidden, n_outputs)
        head = cls(layers, classifier, kind=kind, dropout=dropout, class_names=class_names)
        head.requires_grad_(True)
        return head

    @property
    def n_outputs(self) -> int:
        """1 for binary heads, the number of classes otherwise."""
        return int(self.classifier.out_features)

    @property
    def trainable_layers(self) -> int:
        """Number of transformer layers the head holds."""
        return len(self.layers)

    @property
    def hidden_size(self) -> int:
        """Width of the trunk states the head expects."""
        return int(self.classifier.in_features)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Computes logits from padded trunk states.

        Args:
            hidden: ``[B, S, H]`` trunk states.
            mask: ``[B, S]`` padding mask (1 = real token).

        Returns:
            ``[B, n_outputs]`` logits.
        """
        out = run_layers(self.layers, hidden, mask)
        return self.classifier(self.dropout(out[:, 0]))

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Maps logits to scores: sigmoid ``[B]`` (binary) or softmax ``[B, C]``.

        Args:
            logits: ``[B, n_outputs]``.

        Returns:
            Probabilities in [0, 1].
        """
        if self.n_outputs == 1:
            return torch.sigmoid(logits[:, 0])
        return torch.softmax(logits, dim=-1)

    def score(
        self, hidden: torch.Tensor, mask: torch.Tensor, *, batch_size: int = SCORE_BATCH_SIZE
    ) -> torch.Tensor:
        """Scores padded trunk states in eval mode.

        Args:
            hidden: ``[B, S, H]`` trunk states (e.g. ``Trunk.forward`` output).
            mask: ``[B, S]`` padding mask.
            batch_size: Rows per forward pass.

        Returns:
            ``[B]`` anomaly/membership probability (binary) or ``[B, C]`` class probabilities.
        """
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                parts = [
                    self.probabilities(
                        self(
                            hidden[i : i + batch_size].to(torch.float32),
                            mask[i : i + batch_size],
                        )
                    )
                    for i in range(0, hidden.shape[0], batch_size)
                ]
        finally:
            self.train(was_training)
        if not parts:
            shape = (0,) if self.n_outputs == 1 else (0, self.n_outputs)
            return torch.zeros(shape)
        return torch.cat(parts)

    def score_states(
        self,
        states: Sequence[torch.Tensor],
        *,
        batch_size: int = SCORE_BATCH_SIZE,
        progress: bool = False,
    ) -> torch.Tensor:
        """Scores per-line trunk states, batching lines of similar length together.

        Args:
            states: ``[n_i, H]`` trunk states (``Trunk.encode`` output).
            batch_size: Lines per forward pass.
            progress: Show a tqdm bar on stderr.

        Returns:
            Scores in input order: ``[N]`` (binary) or ``[N, C]``.
        """
        order = sorted(range(len(states)), key=lambda i: int(states[i].shape[0]))
        shape: tuple[int, ...] = (
            (len(states),) if self.n_outputs == 1 else (len(states), self.n_outputs)
        )
        result = torch.zeros(shape)
        for start in tqdm(
            range(0, len(order), batch_size), desc="score", unit="batch", disable=not progress
        ):
            chunk = order[start : start + batch_size]
            hidden, mask = pad_states([states[i] for i in chunk])
            result[chunk] = self.score(hidden, mask, batch_size=batch_size)
        return result


def fit_binary_head(
    head: Head,
    states: Sequence[torch.Tensor],
    labels: Sequence[int],
    *,
    val_states: Sequence[torch.Tensor],
    val_labels: Sequence[int],
    rule: StopRule,
    gamma: float = FOCAL_GAMMA,
    alpha: float = FOCAL_ALPHA,
    batch_size: int = BATCH_SIZE,
    lr_layers: float = LR_LAYERS,
    lr_linear: float = LR_LINEAR,
    seed: int = 0,
    progress: bool = True,
) -> HeadReport:
    """Trains a binary head (gate or expert) with focal loss (Eq. 2) in place.

    Args:
        head: Head with ``n_outputs == 1``.
        states: Training trunk states.
        labels: 1 = positive (anomalous / expert domain), 0 = negative.
        val_states: Validation trunk states (may be empty: then no early stopping).
        val_labels: Validation labels.
        rule: :meth:`StopRule.gate` or :meth:`StopRule.expert`.
        gamma: Focal exponent.
        alpha: Positive-class weight.
        batch_size: Lines per step.
        lr_layers: AdamW rate of the transformer layers.
        lr_linear: AdamW rate of the linear layer.
        seed: Seeds shuffling and dropout (the global RNG state is restored afterwards).
        progress: Show a tqdm bar on stderr.

    Returns:
        The training report; ``head`` holds the selected weights, in eval mode.

    Raises:
        ConfigError: Head is not binary, or bad batch size.
        TrainingDataError: Empty data, mismatched lengths, labels other than 0/1, or a single
            class in the training labels.
    """
    if head.n_outputs != 1:
        raise ConfigError(
            f"fit_binary_head got a head with {head.n_outputs} outputs; expected 1; use "
            "fit_multiclass_head"
        )
    y = _labels_tensor(labels, states, "training", n_classes=2)
    val_y = _labels_tensor(val_labels, val_states, "validation", n_classes=2, allow_empty=True)
    if len(set(y.tolist())) < 2:
        raise TrainingDataError(
            f"{rule.name} training labels are all {int(y[0])}; a binary head needs both "
            "positive and negative lines; add lines of the missing class"
        )

    def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return focal_loss(logits[:, 0], target.to(torch.float32), gamma=gamma, alpha=alpha)

    return _fit(
        head, states, y, val_states, val_y, rule, loss_fn,
        batch_size=batch_size, lr_layers=lr_layers, lr_linear=lr_linear, seed=seed,
        progress=progress,
    )  # fmt: skip


def fit_multiclass_head(
    head: Head,
    states: Sequence[torch.Tensor],
    labels: Sequence[int],
    *,
    val_states: Sequence[torch.Tensor],
    val_labels: Sequence[int],
    rule: StopRule,
    class_weights: torch.Tensor | None = None,
    batch_size: int = BATCH_SIZE,
    lr_layers: float = LR_LAYERS,
    lr_linear: float = LR_LINEAR,
    seed: int = 0,
    progress: bool = True,
) -> HeadReport:
    """Trains a multiclass head (the selector) with weighted cross-entropy in place.

    Args:
        head: Head with ``n_outputs >= 2``.
        states: Training trunk states.
        labels: Class indices in ``[0, n_outputs)``.
        val_states: Validation trunk states (may be empty).
        val_labels: Validation class indices.
        rule: Normally :meth:`StopRule.selector`.
        class_weights: ``[n_outputs]`` loss weights; ``None`` computes Eq. 1 from ``labels``
            (:func:`~fame.models.losses.selector_class_weights`); pass ones for none.
        batch_size: Lines per step.
        lr_layers: AdamW rate of the transformer layers.
        lr_linear: AdamW rate of the linear layer.
        seed: Seeds shuffling and dropout (the global RNG state is restored afterwards).
        progress: Show a tqdm bar on stderr.

    Returns:
        The training report; ``head`` holds the selected weights, in eval mode.

    Raises:
        ConfigError: Head is binary, ``class_weights`` has the wrong shape, or bad batch size.
        TrainingDataError: Empty data, mismatched lengths or labels out of range.
    """
    n_classes = head.n_outputs
    if n_classes < 2:
        raise ConfigError(
            "fit_multiclass_head got a binary head; expected n_outputs >= 2; use fit_binary_head"
        )
    y = _labels_tensor(labels, states, "training", n_classes=n_classes)
    val_y = _labels_tensor(
        val_labels, val_states, "validation", n_classes=n_classes, allow_empty=True
    )
    weights = (
        selector_class_weights(y.tolist(), n_classes) if class_weights is None else class_weights
    )
    if tuple(weights.shape) != (n_classes,):
        raise ConfigError(
            f"class_weights has shape {tuple(weights.shape)}; expected ({n_classes},), one per "
            "class"
        )
    weights = weights.to(torch.float32)

    def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target, weight=weights)

    return _fit(
        head, states, y, val_states, val_y, rule, loss_fn,
        batch_size=batch_size, lr_layers=lr_layers, lr_linear=lr_linear, seed=seed,
        progress=progress,
    )  # fmt: skip


def _fit(
    head: Head,
    states: Sequence[torch.Tensor],
    y: torch.Tensor,
    val_states: Sequence[torch.Tensor],
    val_y: torch.Tensor,
    rule: StopRule,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    batch_size: int,
    lr_layers: float,
    lr_linear: float,
    seed: int,
    progress: bool,
) -> HeadReport:
    """Shared training loop of both head kinds (see the module docstring for the rules)."""
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size}; expected >= 1; use {BATCH_SIZE}")
    if rule.max_epochs < 1 or rule.fixed_steps < 1 or rule.eval_every < 1:
        raise ConfigError(
            f"stop rule {rule.name!r} needs max_epochs, fixed_steps and eval_every >= 1"
        )
    started = time.perf_counter()
    n = len(states)
    step_mode = n < rule.small_data_lines
    batches_per_epoch = math.ceil(n / batch_size)
    total_steps = rule.fixed_steps if step_mode else rule.max_epochs * batches_per_epoch
    total_steps = max(total_steps, rule.min_steps)

    evaluator = _Evaluator(head, val_states, val_y, rule, loss_fn)
    history: list[tuple[int, float]] = []
    best_value: float | None = None
    best_state: dict[str, torch.Tensor] | None = None
    best_step = 0
    stale = 0
    stop_reason = "fixed_steps" if step_mode else "max_epochs"
    step = 0
    epochs = 0

    optimizer = torch.optim.AdamW(
        [
            {"params": list(head.layers.parameters()), "lr": lr_layers},
            {"params": list(head.classifier.parameters()), "lr": lr_linear},
        ],
        weight_decay=WEIGHT_DECAY,
    )
    generator = torch.Generator().manual_seed(seed)
    lengths = [int(s.shape[0]) for s in states]

    def evaluate() -> bool:
        """Evaluates, tracks the best weights and says whether to stop now."""
        nonlocal best_value, best_state, best_step, stale, stop_reason
        value = evaluator()
        if value is None:
            return False
        history.append((step, value))
        improved = best_value is None or evaluator.better(value, best_value)
        if improved:
            best_value, best_step, stale = value, step, 0
            if rule.restore_best:
                best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
        else:
            stale += 1
        if step < rule.min_steps:
            return False
        if evaluator.uses_rule_metric and rule.target is not None and value >= rule.target:
            stop_reason = "target"
            return True
        if step_mode and evaluator.uses_rule_metric and rule.metric == "auroc" and value >= 1.0:
            # Best weights are kept on strict improvement only: nothing later can win.
            stop_reason = "perfect_auroc"
            return True
        # Early stopping (III-D2) in both modes: in step mode "checked every 50 steps" means
        # ``patience`` checks without improvement end training before the fixed budget.
        if rule.patience is not None and stale >= rule.patience:
            stop_reason = "patience"
            return True
        return False

    with (
        torch.random.fork_rng(devices=[]),
        tqdm(total=total_steps, desc=rule.name, unit="step", disable=not progress) as bar,
    ):
        torch.manual_seed(seed)
        head.train()
        stop = False
        while not stop and step < total_steps:
            epochs += 1
            for chunk in length_batches(lengths, batch_size, generator):
                hidden, mask = pad_states([states[i] for i in chunk])
                loss = loss_fn(head(hidden, mask), y[chunk])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(head.parameters(), MAX_GRAD_NORM)
                optimizer.step()
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
                if step_mode and step % rule.eval_every == 0 and evaluate():
                    stop = True
                    break
                if step >= total_steps:
                    break
            if not stop and not step_mode:
                stop = evaluate()
        if step_mode and (not history or history[-1][0] != step) and not stop:
            evaluate()

    if rule.restore_best and best_state is not None:
        head.load_state_dict(best_state)
        restored = best_step
    else:
        restored = step
    head.eval()
    if evaluator.note:
        stop_reason = f"{stop_reason} ({evaluator.note})"
    report = HeadReport(
        rule=rule.name,
        metric=evaluator.metric_name,
        best_metric=best_value,
        final_metric=history[-1][1] if history else None,
        steps=step,
        epochs=epochs,
        stop_reason=stop_reason,
        seconds=time.perf_counter() - started,
        train_lines=n,
        val_lines=len(val_states),
        restored_step=restored,
        history=history,
    )
    logger.info(
        "%s head: %d steps, %d epochs, %s best %s, stop: %s, %.1f s",
        rule.name, step, epochs, report.metric,
        "n/a" if best_value is None else f"{best_value:.4f}", stop_reason, report.seconds,
    )  # fmt: skip
    return report


class _Evaluator:
    """Computes the rule's validation metric, falling back to validation loss if undefined."""

    def __init__(
        self,
        head: Head,
        states: Sequence[torch.Tensor],
        y: torch.Tensor,
        rule: StopRule,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> None:
        self.head = head
        self.states = states
        self.y = y
        self.rule = rule
        self.loss_fn = loss_fn
        self.note = ""
        classes = set(y.tolist())
        if len(states) == 0:
            self.metric_name = "none"
            self.note = "no validation data: trained to the cap, last weights kept"
        elif rule.metric == "auroc" and len(classes) < 2:
            self.metric_name = "val_loss"
            self.note = "validation has one class, AUROC undefined: validation loss used"
        elif rule.metric == "recall" and 1 not in classes:
            self.metric_name = "val_loss"
            self.note = "validation has no positive line, recall undefined: validation loss used"
        else:
            self.metric_name = (
                rule.metric if rule.metric != "recall" else f"recall@{rule.threshold}"
            )
        self.uses_rule_metric = self.metric_name not in ("none", "val_loss")

    def better(self, value: float, best: float) -> bool:
        """Strict improvement (lower is better for the loss fallback)."""
        if self.metric_name == "val_loss":
            return value < best - LOSS_MIN_DELTA
        return value > best

    def __call__(self) -> float | None:
        """Evaluates the head on the validation set; ``None`` without validation data."""
        if self.metric_name == "none":
            return None
        if self.metric_name == "val_loss":
            return self._loss()
        scores = self.head.score_states(self.states)
        y = self.y.numpy()
        if self.rule.metric == "auroc":
            return float(roc_auc_score(y, scores.numpy()))
        if self.rule.metric == "recall":
            predicted = scores.numpy() >= self.rule.threshold
            return float(predicted[y == 1].mean())
        return float((scores.argmax(dim=-1).numpy() == y).mean())

    def _loss(self) -> float:
        was_training = self.head.training
        self.head.eval()
        total = 0.0
        order = sorted(range(len(self.states)), key=lambda i: int(self.states[i].shape[0]))
        with torch.inference_mode():
            for start in range(0, len(order), SCORE_BATCH_SIZE):
                chunk = order[start : start + SCORE_BATCH_SIZE]
                hidden, mask = pad_states([self.states[i] for i in chunk])
                total += float(self.loss_fn(self.head(hidden, mask), self.y[chunk])) * len(chunk)
        self.head.train(was_training)
        return total / len(order)


def _labels_tensor(
    labels: Sequence[int],
    states: Sequence[torch.Tensor],
    what: str,
    *,
    n_classes: int,
    allow_empty: bool = False,
) -> torch.Tensor:
    if len(labels) != len(states):
        raise TrainingDataError(
            f"{len(states)} {what} states but {len(labels)} labels; expected one label per line"
        )
    if len(labels) == 0:
        if allow_empty:
            return torch.zeros(0, dtype=torch.long)
        raise TrainingDataError(f"no {what} lines; expected at least one labelled line")
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    if int(y.min()) < 0 or int(y.max()) >= n_classes:
        raise TrainingDataError(
            f"{what} labels must lie in [0, {n_classes}); got values from {int(y.min())} to "
            f"{int(y.max())}"
        )
    return y


def _check_outputs(n_outputs: int, class_names: Sequence[str]) -> None:
    if n_outputs < 1:
        raise ConfigError(f"n_outputs={n_outputs}; expected 1 (binary) or >= 2 (classes)")
    if n_outputs == 1 and class_names:
        raise ConfigError("a binary head (n_outputs=1) takes no class_names")
    if class_names and len(class_names) != n_outputs:
        raise ConfigError(
            f"{len(class_names)} class_names for n_outputs={n_outputs}; expected one per class"
        )


# ----------------------------------------------------------------------------- persistence


def save_heads(heads: Mapping[str, Head], path: str | os.PathLike[str]) -> None:
    """Writes heads to one safetensors file, described in the file's metadata.

    Tensor keys are ``"h<i>.<parameter name>"`` (``i`` = position in ``heads``), so head
    names may hold any character (e.g. ``"expert/MEMORY"``). The metadata entry
    ``fame_heads`` is a JSON document with the format version and, per head, its name, key,
    layout, ``n_outputs``, ``trainable_layers``, ``hidden_size``, dropout and class names. The
    file is written under a temporary name and renamed, so a crash never leaves a
    half-written file behind.

    Args:
        heads: Heads by name (non-empty names).
        path: Target file (conventionally ``heads.safetensors``).

    Raises:
        ConfigError: No heads or an empty name.
    """
    if not heads:
        raise ConfigError("save_heads got no heads; expected at least one")
    tensors: dict[str, torch.Tensor] = {}
    described: list[dict[str, Any]] = []
    for i, (name, head) in enumerate(heads.items()):
        if not name:
            raise ConfigError("save_heads got a head with an empty name; name every head")
        key = f"h{i}"
        for param, value in head.state_dict().items():
            tensors[f"{key}.{param}"] = value.detach().to("cpu").contiguous().clone()
        described.append(
            {
                "name": name,
                "key": key,
                "kind": head.kind,
                "n_outputs": head.n_outputs,
                "trainable_layers": head.trainable_layers,
                "hidden_size": head.hidden_size,
                "dropout": float(head.dropout.p),
                "class_names": list(head.class_names),
            }
        )
    metadata = {_META_KEY: json.dumps({"format": HEADS_FORMAT, "heads": described})}
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, target)


def load_heads(
    path: str | os.PathLike[str],
    encoder_config: PretrainedConfig,
    *,
    configs: Mapping[str, PretrainedConfig] | None = None,
) -> dict[str, Head]:
    """Rebuilds heads saved by :func:`save_heads`.

    Args:
        path: The safetensors file.
        encoder_config: Config of the encoder the heads were cut from (``encoder.config``);
            it defines the layer shapes.
        configs: Per-head-name overrides of ``encoder_config``, for heads cut from another
            encoder (e.g. a separate router encoder).

    Returns:
        Heads by name, in eval mode.

    Raises:
        BundleError: Missing or unreadable file, unknown format, or tensors that do not match
            the described heads or the encoder config.
    """
    source = Path(path)
    if not source.is_file():
        raise BundleError(
            f"heads file {source} is missing; expected the heads.safetensors written at "
            "training time; re-run training or point to the complete bundle"
        )
    try:
        with safe_open(str(source), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise BundleError(
            f"heads file {source} is unreadable or corrupt ({exc}); re-run training to "
            "rebuild the bundle"
        ) from exc
    try:
        document = json.loads(metadata[_META_KEY])
        if document["format"] != HEADS_FORMAT:
            raise BundleError(
                f"heads file {source} has format {document['format']!r}; expected "
                f"{HEADS_FORMAT!r}; re-train with this fame version"
            )
        described: list[dict[str, Any]] = list(document["heads"])
        names = [str(info["name"]) for info in described]
        keys = [str(info["key"]) for info in described]
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(
            f"heads file {source} has no valid '{_META_KEY}' metadata; expected a file "
            "written by fame's save_heads; re-run training"
        ) from exc

    heads: dict[str, Head] = {}
    for name, key, info in zip(names, keys, described, strict=True):
        prefix = f"{key}."
        state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        config = (configs or {}).get(name, encoder_config)
        try:
            head = _build_head(info, config)
            head.load_state_dict(state, strict=True)
        except (KeyError, TypeError, ValueError, RuntimeError, ConfigError) as exc:
            raise BundleError(
                f"head {name!r} in {source} does not match its description or the encoder "
                f"({exc}); the heads and encoder must come from the same training run"
            ) from exc
        head.eval()
        heads[name] = head
    return heads


def _build_head(info: Mapping[str, Any], config: PretrainedConfig) -> Head:
    kind = info["kind"]
    if kind != getattr(config, "model_type", None):
        raise ConfigError(f"head layout {kind!r} but encoder model_type {config.model_type!r}")
    if int(info["hidden_size"]) != int(config.hidden_size):
        raise ConfigError(
            f"head width {info['hidden_size']} but encoder hidden_size {config.hidden_size}"
        )
    n_outputs = int(info["n_outputs"])
    class_names = [str(c) for c in info["class_names"]]
    _check_outputs(n_outputs, class_names)
    # Constructing layers initialises them randomly; keep that off the global RNG.
    with torch.random.fork_rng(devices=[]):
        layers = nn.ModuleList(
            _new_layer(kind, config) for _ in range(int(info["trainable_layers"]))
        )
        classifier = nn.Linear(int(config.hidden_size), n_outputs)
    return Head(
        layers, classifier, kind=kind, dropout=float(info["dropout"]), class_names=class_names
    )


def _new_layer(kind: str, config: PretrainedConfig) -> nn.Module:
    if kind == "bert":
        from transformers.models.bert.modeling_bert import BertLayer

        return BertLayer(config)
    if kind == "distilbert":
        from transformers.models.distilbert.modeling_distilbert import TransformerBlock

        return TransformerBlock(cast(Any, config))
    raise ConfigError(f"unknown head layout {kind!r}; expected 'bert' or 'distilbert'")
