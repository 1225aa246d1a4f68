"""The shared frozen trunk: embeddings plus the lower transformer layers, computed once per line.

Paper III-D2 freezes the embeddings and all but the top two transformer layers of every expert,
and every expert starts from the same Phase 1 checkpoint (III-D1). The frozen part is therefore
identical across experts; this project also puts the router (gate and selector, III-C) on it.
So each line goes through the trunk once, and every head (its own copy of the top layers plus a
linear layer, see :mod:`fame.models.heads`) runs on the cached trunk output. Training a head
never re-runs the trunk, which is what makes training several heads affordable on a CPU.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Sequence
from typing import Self

import torch
from torch import nn
from tqdm import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fame.errors import ConfigError, InputError
from fame.models.encoder import MAX_TOKENS, EncoderKind, check_encoder, encoder_layers

logger = logging.getLogger(__name__)

TrunkState = torch.Tensor
"""Trunk output of one line: ``[n_tokens, hidden]``, real tokens only ([CLS] first)."""


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
    """Turns a ``[B, S]`` padding mask into the additive attention mask the layers expect.

    In transformers 5.x, ``BertModel`` builds this mask once (``create_bidirectional_mask``) and
    passes it to every ``BertLayer``; for the eager and SDPA attention implementations it is a
    float tensor added to the attention scores: 0 on real tokens, the dtype's minimum on
    padding. ``[B, 1, 1, S]`` broadcasts over heads and query positions. The 4.x "extended
    attention mask" had the same form, so this also matches older versions for BERT.

    Args:
        mask: 1/True on real tokens, 0/False on padding.
        dtype: Dtype of the hidden states.

    Returns:
        ``[B, 1, 1, S]`` additive mask, or ``None`` when nothing is padded (lets SDPA use its
        unmasked fast path).
    """
    if bool(mask.all()):
        return None
    keep = mask[:, None, None, :].to(dtype)
    return (1.0 - keep) * torch.finfo(dtype).min


def run_layers(
    layers: Iterable[nn.Module], hidden: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Runs BERT or DistilBERT transformer layers over padded hidden states.

    Args:
        layers: ``BertLayer`` or DistilBERT ``TransformerBlock`` modules, bottom first.
        hidden: ``[B, S, H]`` hidden states.
        mask: ``[B, S]`` padding mask (1 = real token).

    Returns:
        ``[B, S, H]`` output of the last layer (padding positions hold garbage; ignore them).
    """
    attention = additive_mask(mask, hidden.dtype)
    for layer in layers:
        out = layer(hidden, attention)
        # transformers 4.x layers returned tuples; 5.x returns the tensor.
        hidden = out[0] if isinstance(out, tuple) else out
    return hidden


def pad_states(
    states: Sequence[torch.Tensor], dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pads per-line trunk states into one batch.

    Args:
        states: ``[n_i, H]`` tensors (possibly stored in half precision).
        dtype: Dtype of the returned hidden tensor.

    Returns:
        ``hidden [B, S, H]`` (zeros on padding) and ``mask [B, S]`` (int64, 1 = real token),
        ``S = max n_i``. Always a fresh tensor, so it can enter autograd even when the states
        were created under ``torch.inference_mode``.

    Raises:
        InputError: No states, or states of different widths.
    """
    if len(states) == 0:
        raise InputError("pad_states got no states; expected at least one line")
    width = states[0].shape[-1]
    lengths = [int(s.shape[0]) for s in states]
    if any(s.dim() != 2 or s.shape[-1] != width for s in states):
        raise InputError(
            f"pad_states expects [n_tokens, {width}] tensors from the same trunk; got shapes "
            f"{sorted({tuple(s.shape) for s in states})[:3]}"
        )
    hidden = torch.zeros(len(states), max(lengths), width, dtype=dtype)
    mask = torch.zeros(len(states), max(lengths), dtype=torch.long)
    for i, (state, n) in enumerate(zip(states, lengths, strict=True)):
        hidden[i, :n] = state
        mask[i, :n] = 1
    return hidden, mask


BUCKET_POOL_BATCHES = 50
"""Batches per pool in :func:`length_batches`: enough to find lines of similar length, small
enough that batch composition stays random."""


def length_batches(
    lengths: Sequence[int],
    batch_size: int,
    generator: torch.Generator,
    *,
    pool_batches: int = BUCKET_POOL_BATCHES,
) -> list[list[int]]:
    """Random training batches of lines of similar length (one epoch).

    Cost grows with the padded length, and log lines are very uneven (BGL: mean 17 tokens,
    max 128), so fully random batches are padded about five-fold. Here indices are shuffled,
    cut into pools of ``pool_batches`` batches, sorted by length within each pool, cut into
    batches, and the batch order is shuffled again: still random, with little padding.

    Args:
        lengths: Token count of each line.
        batch_size: Lines per batch.
        generator: Seeded generator (determinism).
        pool_batches: Batches per sorting pool.

    Returns:
        Batches of indices covering every line once.
    """
    order = torch.randperm(len(lengths), generator=generator).tolist()
    pool = max(1, pool_batches) * batch_size
    batches: list[list[int]] = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lambda i: lengths[i])
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    shuffled = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in shuffled]


class Trunk(nn.Module):
    """Frozen embeddings + lower transformer layers of a (Phase 1) encoder.

    The modules are copies of the encoder's, always in eval mode with gradients off, so the
    trunk never changes after Phase 1 whatever happens to the encoder object.

    Attributes:
        kind: Encoder layout, ``"bert"`` or ``"distilbert"``.
        embeddings: Copy of the encoder's embedding module.
        layers: Copies of the first ``n_frozen_layers`` transformer layers.
    """

    def __init__(self, encoder: PreTrainedModel, n_frozen_layers: int) -> None:
        """Copies the embeddings and the first ``n_frozen_layers`` layers of an encoder.

        Args:
            encoder: Bare BERT/DistilBERT encoder (after Phase 1).
            n_frozen_layers: ``total layers - trainable_layers`` (paper: 10 of 12 for
                bert-base; 4 of 6 for MiniLM with the default 2 trainable layers).

        Raises:
            ConfigError: Unsupported encoder or ``n_frozen_layers`` out of ``[0, total - 1]``
                (at least one layer must be left for the heads).
        """
        super().__init__()
        kind = check_encoder(encoder)
        all_layers = encoder_layers(encoder)
        if not 0 <= n_frozen_layers < len(all_layers):
            raise ConfigError(
                f"n_frozen_layers={n_frozen_layers} but the encoder has {len(all_layers)} "
                f"layers; expected 0..{len(all_layers) - 1} so that the heads keep at least one "
                "trainable layer; lower n_frozen_layers or raise trainable_layers"
            )
        self.kind: EncoderKind = kind
        self.embeddings: nn.Module = copy.deepcopy(getattr(encoder, "embeddings"))  # noqa: B009
        self.layers = nn.ModuleList(copy.deepcopy(all_layers[i]) for i in range(n_frozen_layers))
        self.requires_grad_(False)
        self.eval()

    @property
    def n_frozen_layers(self) -> int:
        """Number of frozen transformer layers in the trunk."""
        return len(self.layers)

    @property
    def hidden_size(self) -> int:
        """Width H of the trunk states."""
        word = getattr(self.embeddings, "word_embeddings", None)
        if not isinstance(word, nn.Embedding):  # pragma: no cover - both layouts have it
            raise ConfigError("trunk embeddings have no word_embeddings table")
        return int(word.embedding_dim)

    def train(self, mode: bool = True) -> Self:
        """Keeps the trunk in eval mode whatever is asked (no dropout on frozen layers).

        Args:
            mode: Ignored.

        Returns:
            self.
        """
        return super().train(False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Computes trunk hidden states for a tokenized batch.

        Args:
            input_ids: ``[B, S]`` token ids.
            attention_mask: ``[B, S]`` padding mask (1 = real token).

        Returns:
            ``[B, S, H]`` hidden states after the frozen layers.
        """
        with torch.inference_mode():
            hidden = self.embeddings(input_ids=input_ids)
            return run_layers(self.layers, hidden, attention_mask)

    def encode(
        self,
        texts: Sequence[str],
        tokenizer: PreTrainedTokenizerBase,
        *,
        batch_size: int = 64,
        max_tokens: int = MAX_TOKENS,
        dtype: torch.dtype = torch.float32,
        progress: bool = False,
    ) -> list[TrunkState]:
        """Computes the trunk state of every line.

        Identical lines are encoded once and share one tensor object in the result (log
        corpora repeat lines heavily, so this saves both time and memory). Lines are sorted by
        token count before batching so that batches carry little padding; the result follows
        the input order.

        Memory: one state holds ``n_tokens x H`` values, about 45 KB in float32 for a typical
        30-token BGL line with H = 384; pass ``dtype=torch.bfloat16`` to halve it.

        Args:
            texts: Lines (already stripped of labels); longer than ``max_tokens`` tokens are
                truncated.
            tokenizer: The encoder's fast tokenizer.
            batch_size: Lines per forward pass.
            max_tokens: Token budget per line.
            dtype: Storage dtype of the returned states.
            progress: Show a tqdm bar on stderr.

        Returns:
            One ``[n_tokens, H]`` tensor per input line.

        Raises:
            ConfigError: ``batch_size`` < 1 or ``max_tokens`` < 2.
            InputError: A text is not a string.
        """
        if batch_size < 1:
            raise ConfigError(f"batch_size={batch_size}; expected >= 1; use 64")
        if max_tokens < 2:
            raise ConfigError(f"max_tokens={max_tokens}; expected >= 2; use {MAX_TOKENS}")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InputError(f"text #{i} is a {type(text).__name__}; expected str")
        unique: dict[str, int] = {}
        for text in texts:
            unique.setdefault(text, len(unique))
        distinct = list(unique)
        if not distinct:
            return []
        ids: list[list[int]] = tokenizer(
            distinct, truncation=True, max_length=max_tokens, return_token_type_ids=False
        )["input_ids"]
        order = sorted(range(len(distinct)), key=lambda i: len(ids[i]))
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        states: list[TrunkState | None] = [None] * len(distinct)
        with tqdm(total=len(distinct), desc="trunk", unit="line", disable=not progress) as bar:
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                width = max(len(ids[i]) for i in chunk)
                input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for row, i in enumerate(chunk):
                    input_ids[row, : len(ids[i])] = torch.tensor(ids[i], dtype=torch.long)
                    mask[row, : len(ids[i])] = 1
                hidden = self(input_ids, mask)
                for row, i in enumerate(chunk):
                    # clone(): a slice would keep the whole padded batch alive in memory.
                    states[i] = hidden[row, : len(ids[i])].to(dtype).clone()
                bar.update(len(chunk))
        by_text = [s for s in states if s is not None]
        return [by_text[unique[text]] for text in texts]
