"""Phase 1: domain-adaptive masked-language-model pre-training (paper III-D1).

General-purpose encoders were pre-trained on web text, a poor lexical match for log syntax, so
the encoder first continues MLM pre-training on the UNIVERSAL_NORMAL PU-normal pool (normal-only,
so the language model never learns anomalous patterns; at most 200,000 uniformly sampled
lines). Every head then starts from this one checkpoint, which is what lets them share the
frozen trunk (:mod:`fame.models.trunk`).

CPU budget: the paper trains for an unstated number of steps on a GPU. Here training stops
after one epoch over the sample or ``max_steps`` steps, whichever comes first; the default
:data:`MLM_MAX_STEPS` (600 steps of 32 lines, roughly 19,000 masked lines, a few minutes on two
cores with MiniLM) is this project's choice, not the paper's.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm import tqdm
from transformers import AutoModelForMaskedLM, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from fame.errors import ConfigError, InputError, TrainingDataError
from fame.models.encoder import (
    MAX_TOKENS,
    check_encoder,
    load_encoder,
    load_tokenizer,
    resolve_encoder,
)
from fame.models.trunk import length_batches

logger = logging.getLogger(__name__)

MLM_MASK_PROB = 0.15
"""Share of tokens selected for prediction (BERT's rate, paper III-D1)."""
MLM_MAX_LINES = 200_000
"""Cap on the Phase 1 corpus, uniformly sampled (paper III-D1)."""
MLM_MAX_STEPS = 600
"""CPU budget on optimiser steps (this project's default; the paper states none)."""
MLM_BATCH_SIZE = 32
MLM_LR = 5e-5
"""AdamW rate of the encoder weights (standard BERT continued pre-training rate)."""
MLM_HEAD_LR = 1e-3
"""AdamW rate of a newly initialised MLM head (MiniLM ships none): at the encoder's rate the
head would take most of the budget just to become useful, leaving the encoder unadapted."""
MLM_WARMUP = 0.1
"""Share of steps with linearly rising learning rate, then linear decay to zero (BERT's
schedule); warm-up keeps a fresh head's early gradients from disturbing the encoder."""
PROBE_LINES = 256
"""Lines of the fixed, identically masked probe set on which initial and final loss are
measured (drawn from the training sample: it measures fit to the domain, not generalisation)."""


@dataclass
class Phase1Report:
    """What Phase 1 did.

    Attributes:
        lines: Input lines.
        unique_lines: Distinct input lines.
        sampled_lines: Distinct lines kept after the ``max_lines`` cap.
        steps: Optimiser steps taken.
        batch_size: Lines per step.
        initial_loss: MLM loss on the probe set before training.
        final_loss: MLM loss on the probe set after training.
        probe_lines: Lines in the probe set.
        seconds: Wall time.
    """

    lines: int
    unique_lines: int
    sampled_lines: int
    steps: int
    batch_size: int
    initial_loss: float
    final_loss: float
    probe_lines: int
    seconds: float


def adapt_mlm(
    encoder_name: str,
    texts: Sequence[str],
    *,
    mask_prob: float = MLM_MASK_PROB,
    max_lines: int = MLM_MAX_LINES,
    max_steps: int = MLM_MAX_STEPS,
    batch_size: int = MLM_BATCH_SIZE,
    lr: float = MLM_LR,
    head_lr: float = MLM_HEAD_LR,
    max_tokens: int = MAX_TOKENS,
    seed: int = 0,
    allow_download: bool = False,
    progress: bool = True,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, Phase1Report]:
    """Continues MLM pre-training of an encoder on normal log lines.

    Identical lines are removed first: they teach the language model nothing new, and log
    pools are highly repetitive (the 71,543-line BGL sample holds 28,626 distinct texts, the
    full BGL log far fewer per line). Deduplicating also makes the 200,000-line cap cover
    more of the vocabulary, a deliberate departure from sampling raw lines. The distinct
    lines are then sampled uniformly (seeded) down to ``max_lines`` and trained on for one
    epoch or ``max_steps`` steps. Masking follows BERT: ``mask_prob`` of the real, non-special
    tokens are predicted, of which 80% are replaced by [MASK], 10% by a random token and 10%
    kept. The MLM head is the encoder's own when the checkpoint has one, else newly
    initialised (MiniLM); its decoder is tied to the word embeddings.

    Args:
        encoder_name: Anything :func:`~fame.models.encoder.resolve_encoder` accepts.
        texts: The PU-normal pool (label tokens already stripped).
        mask_prob: Share of tokens to predict.
        max_lines: Cap on distinct lines used.
        max_steps: Cap on optimiser steps.
        batch_size: Lines per step.
        lr: AdamW rate of the encoder.
        head_lr: AdamW rate of the MLM head's own (non-tied) weights.
        max_tokens: Token budget per line; longer lines are truncated.
        seed: Seeds sampling, masking, initialisation and dropout (global RNG restored).
        allow_download: Let ``transformers`` fetch a model id that is not cached.
        progress: Show a tqdm bar on stderr.

    Returns:
        The adapted bare encoder (same class as :func:`~fame.models.encoder.load_encoder`
        returns; eval mode), its tokenizer and a :class:`Phase1Report`.

    Raises:
        ConfigError: A setting is out of range.
        TrainingDataError: No usable line.
        InputError: The encoder cannot be loaded.
    """
    _check_settings(mask_prob, max_lines, max_steps, batch_size, lr, head_lr)
    started = time.perf_counter()
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InputError(f"text #{i} is a {type(text).__name__}; expected str")
    distinct = [t for t in dict.fromkeys(texts) if t.strip()]
    if not distinct:
        raise TrainingDataError(
            "Phase 1 got no non-empty line; expected the normal pool of the offline logs; "
            "check the input file and the parser"
        )
    rng = random.Random(seed)
    sample = rng.sample(distinct, max_lines) if len(distinct) > max_lines else list(distinct)
    rng.shuffle(sample)
    logger.info(
        "Phase 1: %d lines, %d distinct, %d sampled", len(texts), len(distinct), len(sample)
    )

    tokenizer = load_tokenizer(encoder_name, allow_download=allow_download)
    encoder = load_encoder(encoder_name, allow_download=allow_download)
    kind = check_encoder(encoder)
    if tokenizer.mask_token_id is None:
        raise ConfigError(
            f"the tokenizer of {encoder_name!r} has no [MASK] token; MLM needs one; pick a "
            "BERT-family encoder"
        )
    ids: list[list[int]] = tokenizer(
        sample, truncation=True, max_length=max_tokens, return_token_type_ids=False
    )["input_ids"]
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
    pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    steps_total = min(max_steps, math.ceil(len(ids) / batch_size))

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mlm = _masked_lm(encoder_name, encoder, allow_download)
        base: nn.Module = getattr(mlm, mlm.base_model_prefix)
        masker = _Masker(
            mask_prob=mask_prob,
            mask_id=int(tokenizer.mask_token_id),
            vocab_size=int(encoder.config.vocab_size),
            special=special,
        )
        probe_gen = torch.Generator().manual_seed(seed + 1)
        probe = [
            _batch(ids[i : i + batch_size], pad_id)
            for i in range(0, min(PROBE_LINES, len(ids)), batch_size)
        ]
        probe_masked = [masker(input_ids, mask, probe_gen) for input_ids, mask in probe]
        initial_loss = _probe_loss(mlm, base, kind, probe, probe_masked)

        head_params = [p for n, p in mlm.named_parameters() if not _in_base(n, mlm)]
        base_params = [p for n, p in mlm.named_parameters() if _in_base(n, mlm)]
        optimizer = torch.optim.AdamW(
            [{"params": base_params, "lr": lr}, {"params": head_params, "lr": head_lr}],
            weight_decay=0.01,
        )
        warmup = max(1, int(MLM_WARMUP * steps_total))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda s: min(
                (s + 1) / warmup, max(0.0, (steps_total - s) / (steps_total - warmup + 1))
            ),
        )
        gen = torch.Generator().manual_seed(seed + 2)
        mlm.train()
        step = 0
        with tqdm(
            total=steps_total, desc="phase 1 (MLM)", unit="step", disable=not progress
        ) as bar:
            # Batches of similar length (little padding): see trunk.length_batches.
            batches = length_batches([len(r) for r in ids], batch_size, gen)[:steps_total]
            for chunk in batches:
                input_ids, mask = _batch([ids[i] for i in chunk], pad_id)
                masked_ids, labels = masker(input_ids, mask, gen)
                loss = _mlm_loss(mlm, base, kind, masked_ids, mask, labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(mlm.parameters(), 1.0)
                optimizer.step()
                schedule.step()
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        final_loss = _probe_loss(mlm, base, kind, probe, probe_masked)

    # Copy the adapted weights back into the bare encoder: it keeps the pooler (which the MLM
    # model lacks), so the result is the same class load_encoder() returns.
    missing, unexpected = encoder.load_state_dict(base.state_dict(), strict=False)
    if unexpected or any(not k.startswith("pooler.") for k in missing):
        raise ConfigError(  # pragma: no cover - same architecture on both sides
            f"adapted weights do not fit the encoder (missing {missing}, unexpected "
            f"{unexpected}); use a BERT or DistilBERT encoder"
        )
    encoder.eval()
    report = Phase1Report(
        lines=len(texts),
        unique_lines=len(distinct),
        sampled_lines=len(sample),
        steps=step,
        batch_size=batch_size,
        initial_loss=initial_loss,
        final_loss=final_loss,
        probe_lines=sum(len(b[0]) for b in probe),
        seconds=time.perf_counter() - started,
    )
    logger.info(
        "Phase 1: %d steps, probe MLM loss %.3f -> %.3f, %.0f s",
        step, initial_loss, final_loss, report.seconds,
    )  # fmt: skip
    return encoder, tokenizer, report


class _Masker:
    """BERT masking: pick ``mask_prob`` of real tokens; 80% [MASK], 10% random, 10% kept."""

    def __init__(
        self, *, mask_prob: float, mask_id: int, vocab_size: int, special: torch.Tensor
    ) -> None:
        self.mask_prob = mask_prob
        self.mask_id = mask_id
        self.vocab_size = vocab_size
        self.special = special

    def __call__(
        self, input_ids: torch.Tensor, mask: torch.Tensor, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        eligible = mask.bool() & ~torch.isin(input_ids, self.special)
        draw = torch.rand(input_ids.shape, generator=gen)
        chosen = eligible & (draw < self.mask_prob)
        # Short lines can draw no token at all; predict one per such line so that every line
        # contributes and a batch never has an empty (NaN) loss.
        empty = ~chosen.any(dim=1) & eligible.any(dim=1)
        if bool(empty.any()):
            pick = torch.where(eligible, draw, torch.full_like(draw, 2.0)).argmin(dim=1)
            chosen[empty, pick[empty]] = True
        labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
        action = torch.rand(input_ids.shape, generator=gen)
        masked = input_ids.clone()
        masked[chosen & (action < 0.8)] = self.mask_id
        random_slots = chosen & (action >= 0.8) & (action < 0.9)
        masked[random_slots] = torch.randint(
            self.vocab_size, (int(random_slots.sum()),), generator=gen
        )
        return masked, labels


def _masked_lm(encoder_name: str, encoder: PreTrainedModel, allow_download: bool) -> Any:
    """Builds the MLM model: the checkpoint's own head if it has one, else a fresh one."""
    # transformers prints a load report (pooler unused, MLM head missing) that is expected
    # here; silence it for this call and log one line of our own instead.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        mlm, info = AutoModelForMaskedLM.from_pretrained(
            resolve_encoder(encoder_name),
            local_files_only=not allow_download,
            trust_remote_code=False,
            output_loading_info=True,
        )
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"cannot build a masked-LM model for encoder {encoder_name!r} ({exc}); use a "
            "BERT or DistilBERT encoder"
        ) from exc
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = sorted(info.get("missing_keys", []))
    if missing:
        logger.info("Phase 1: newly initialised MLM head weights: %s", ", ".join(missing))
    base = getattr(mlm, mlm.base_model_prefix)
    # from_pretrained read the same files; copying anyway makes the start point exactly the
    # encoder's weights whatever key renaming the MLM class applies.
    base.load_state_dict(
        {k: v for k, v in encoder.state_dict().items() if not k.startswith("pooler.")},
        strict=False,
    )
    output = mlm.get_output_embeddings()
    if output is not None and output.weight is not base.get_input_embeddings().weight:
        mlm.tie_weights()
    return mlm


def _in_base(name: str, mlm: nn.Module) -> bool:
    return name.startswith(f"{getattr(mlm, 'base_model_prefix', '')}.")


def _mlm_loss(
    mlm: Any,
    base: nn.Module,
    kind: str,
    input_ids: torch.Tensor,
    mask: torch.Tensor,
    labels: torch.Tensor,
) -> torch.Tensor:
    """Cross-entropy over the predicted positions only.

    The vocabulary projection (hidden x 30k) dominates the cost of an MLM step on a small
    encoder, so it is applied to the ~15% predicted positions rather than to every token.
    """
    hidden = base(input_ids=input_ids, attention_mask=mask).last_hidden_state
    selected = labels != -100
    chosen = hidden[selected]
    if kind == "bert":
        logits = mlm.cls(chosen)
    else:
        logits = mlm.vocab_projector(
            mlm.vocab_layer_norm(mlm.activation(mlm.vocab_transform(chosen)))
        )
    return nn.functional.cross_entropy(logits, labels[selected])


def _probe_loss(
    mlm: Any,
    base: nn.Module,
    kind: str,
    probe: list[tuple[torch.Tensor, torch.Tensor]],
    masked: list[tuple[torch.Tensor, torch.Tensor]],
) -> float:
    was_training = mlm.training
    mlm.eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for (_, mask), (input_ids, labels) in zip(probe, masked, strict=True):
            n = int((labels != -100).sum())
            if n:
                total += float(_mlm_loss(mlm, base, kind, input_ids, mask, labels)) * n
                count += n
    mlm.train(was_training)
    return total / count if count else float("nan")


def _batch(rows: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return input_ids, mask


def _check_settings(
    mask_prob: float, max_lines: int, max_steps: int, batch_size: int, lr: float, head_lr: float
) -> None:
    if not 0.0 < mask_prob < 1.0:
        raise ConfigError(f"mask_prob={mask_prob}; expected a share in (0, 1); BERT uses 0.15")
    if max_lines < 1 or max_steps < 1 or batch_size < 1:
        raise ConfigError(
            f"max_lines={max_lines}, max_steps={max_steps}, batch_size={batch_size}; expected "
            "all >= 1"
        )
    if lr <= 0 or head_lr <= 0:
        raise ConfigError(f"lr={lr}, head_lr={head_lr}; expected positive learning rates")
