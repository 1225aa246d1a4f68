"""Training losses: binary focal loss (paper Eq. 2) and the selector's class weights (Eq. 1)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from fame.errors import InputError

logger = logging.getLogger(__name__)

FOCAL_GAMMA = 2.0
"""Focal exponent gamma of Eq. 2, used by the gate (III-C1) and the experts (III-D2)."""

FOCAL_ALPHA = 0.75
"""Weight alpha of the anomalous (positive) class in Eq. 2; normal lines get 1 - alpha."""


def focal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    gamma: float = FOCAL_GAMMA,
    alpha: float = FOCAL_ALPHA,
) -> torch.Tensor:
    """Binary focal loss from logits, averaged over the batch (paper Eq. 2).

    ``L = -alpha_t (1 - p_t)^gamma log p_t`` with ``p_t = p`` for anomalous targets (1) and
    ``1 - p`` for normal ones (0); ``alpha_t = alpha`` for 1 and ``1 - alpha`` for 0. It
    down-weights easy lines so that the few hard anomalies dominate under heavy imbalance.
    With ``gamma = 0`` it is the alpha-weighted binary cross-entropy.

    Args:
        logits: Raw scores, any shape.
        targets: Same shape, values in {0, 1} (floats in between are accepted as soft labels).
        gamma: Focusing exponent (>= 0).
        alpha: Positive-class weight in [0, 1].

    Returns:
        Scalar mean loss.

    Raises:
        InputError: Shapes differ or a parameter is out of range.
    """
    if logits.shape != targets.shape:
        raise InputError(
            f"focal_loss got logits of shape {tuple(logits.shape)} and targets of shape "
            f"{tuple(targets.shape)}; expected equal shapes; squeeze the head's last dim"
        )
    if gamma < 0 or not 0.0 <= alpha <= 1.0:
        raise InputError(
            f"focal_loss got gamma={gamma}, alpha={alpha}; expected gamma >= 0 and alpha in "
            "[0, 1]; the paper uses gamma=2, alpha=0.75"
        )
    targets = targets.to(logits.dtype)
    # -log p_t, computed from logits in a numerically stable way.
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = torch.exp(-ce)
    alpha_t = alpha * targets + (1.0 - alpha) * (1.0 - targets)
    modulating = (1.0 - p_t).clamp_min(0.0) ** gamma if gamma != 0 else torch.ones_like(ce)
    return (alpha_t * modulating * ce).mean()


def selector_class_weights(labels: Sequence[int], n_classes: int) -> torch.Tensor:
    """Class weights of the selector's cross-entropy (paper Eq. 1).

    ``w_c = N_total / ((C - 1) * count_c)``, where ``C - 1`` is the number of expert classes
    the selector chooses among (UNIVERSAL_NORMAL excluded), i.e. ``n_classes`` here. A
    balanced set gets weight 1 everywhere. A class with no training line gets weight 0 (it
    cannot occur as a target anyway) and a warning.

    Args:
        labels: Training class indices in ``[0, n_classes)``.
        n_classes: Number of selector classes (expert domains).

    Returns:
        Float tensor ``[n_classes]``.

    Raises:
        InputError: No labels, ``n_classes < 1`` or a label out of range.
    """
    if n_classes < 1:
        raise InputError(f"n_classes={n_classes}; expected at least 1 expert class")
    if len(labels) == 0:
        raise InputError("no selector training labels; expected at least one expert-domain line")
    counts = torch.zeros(n_classes, dtype=torch.float64)
    for label in labels:
        if not 0 <= int(label) < n_classes:
            raise InputError(
                f"selector label {label} is outside [0, {n_classes}); expected class indices"
            )
        counts[int(label)] += 1
    weights = torch.zeros(n_classes, dtype=torch.float64)
    present = counts > 0
    weights[present] = len(labels) / (n_classes * counts[present])
    if not bool(present.all()):
        missing = [i for i in range(n_classes) if not bool(present[i])]
        logger.warning("selector classes %s have no training lines; their weight is 0", missing)
    return weights.to(torch.float32)
