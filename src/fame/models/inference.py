"""Inference backends: the shared trunk and the heads behind one small interface.

Detection (:mod:`fame.detector`) needs three things from the models: the trunk states of a
batch of texts (one tokenisation, one trunk pass per distinct text), the score of a named
head on some rows of those states, and the pooled embedding of some rows (the novelty
path). :class:`InferenceBackend` is that interface; the detector never touches torch or
onnxruntime itself.

Backends:

- ``onnx`` (:class:`OnnxBackend`, the default): the trunk and every head exported to ONNX
  (:mod:`fame.models.export`) and run by onnxruntime on the CPU, fp32 or int8 (dynamic
  quantisation). Numpy in, numpy out; onnxruntime uses every core of the machine.
- ``torch`` (:class:`TorchBackend`): the PyTorch modules as trained, in fp32.
- ``reference`` (:class:`PerStageTorchBackend`): the paper's architecture as written, for
  benchmarks and equivalence tests: every stage (gate, selector, expert) is a separate full
  encoder (embeddings, all layers, classifier) run in fp32, one text at a time, without any
  sharing between stages.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from fame.config import PRECISIONS
from fame.errors import BundleError, ConfigError
from fame.models.encoder import tokenize
from fame.models.heads import Head
from fame.models.trunk import Trunk, run_layers

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Encoded:
    """Trunk states of one batch of texts.

    Attributes:
        texts: The texts, in batch order.
        hidden: ``[B, S, H]`` states of the experts' trunk (numpy or torch, per backend).
        mask: ``[B, S]`` padding mask (1 = real token).
        router_hidden: The router's trunk states (the same object when the router shares
            the experts' trunk).
        router_mask: Their padding mask.
    """

    texts: list[str]
    hidden: Any
    mask: Any
    router_hidden: Any
    router_mask: Any


class InferenceBackend(Protocol):
    """What detection asks of the models."""

    name: str
    workers: int
    """Chunks the backend can score at once from several threads (1: one at a time)."""

    def encode(self, texts: list[str]) -> Encoded:
        """Tokenises the texts once and runs the trunk(s) over them."""
        ...

    def score(self, head: str, encoded: Encoded, rows: Sequence[int] | None = None) -> NDArray:
        """Scores of head ``head`` on ``rows`` of a batch (all rows when None).

        Returns ``[R]`` probabilities for a binary head and ``[R, C]`` for a multiclass one.
        """
        ...

    def pooled(self, encoded: Encoded, rows: Sequence[int]) -> NDArray[np.float32]:
        """L2-normalised mean trunk state of ``rows`` (the novelty path's embedding)."""
        ...


def pooled_states(hidden: NDArray[np.float32], mask: NDArray) -> NDArray[np.float32]:
    """L2-normalised masked mean of padded states ``[B, S, H]`` (numpy)."""
    weights = mask[..., None].astype(np.float32)
    summed = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1.0)
    norms = np.linalg.norm(summed, axis=1, keepdims=True)
    return np.asarray(summed / np.maximum(norms, 1e-12), dtype=np.float32)


def _select(array: Any, rows: Sequence[int] | None) -> Any:
    if rows is None:
        return array
    return array[list(rows)]


def _trim(hidden: Any, mask: Any) -> tuple[Any, Any]:
    """Cuts the padding columns no row of the batch uses (after selecting rows)."""
    if mask.shape[0] == 0:
        return hidden, mask
    width = int(mask.sum(axis=1).max())
    return hidden[:, :width], mask[:, :width]


class TorchBackend:
    """The trained PyTorch modules, fp32, batched, trunk shared by every head."""

    name = "torch"
    workers = 1  # torch parallelises inside each operation

    def __init__(
        self,
        *,
        tokenizer: Any,
        trunk: Trunk,
        heads: Mapping[str, Head],
        max_tokens: int,
        router_trunk: Trunk | None = None,
        router_tokenizer: Any = None,
        router_heads: Sequence[str] = (),
    ) -> None:
        self.tokenizer = tokenizer
        self.trunk = trunk
        self.heads = dict(heads)
        self.max_tokens = max_tokens
        self.router_trunk = router_trunk if router_trunk is not None else trunk
        self.router_tokenizer = router_tokenizer if router_tokenizer is not None else tokenizer
        self.router_heads = frozenset(router_heads) if self.router_trunk is not trunk else set()

    def _run(self, trunk: Trunk, tokenizer: Any, texts: list[str]) -> tuple[Any, Any]:
        enc = tokenize(tokenizer, texts, self.max_tokens)
        return trunk(enc["input_ids"], enc["attention_mask"]), enc["attention_mask"]

    def encode(self, texts: list[str]) -> Encoded:
        """See :class:`InferenceBackend`."""
        hidden, mask = self._run(self.trunk, self.tokenizer, texts)
        if self.router_trunk is self.trunk:
            return Encoded(texts, hidden, mask, hidden, mask)
        r_hidden, r_mask = self._run(self.router_trunk, self.router_tokenizer, texts)
        return Encoded(texts, hidden, mask, r_hidden, r_mask)

    def score(self, head: str, encoded: Encoded, rows: Sequence[int] | None = None) -> NDArray:
        """See :class:`InferenceBackend`."""
        router = head in self.router_heads
        hidden = encoded.router_hidden if router else encoded.hidden
        mask = encoded.router_mask if router else encoded.mask
        h, m = _trim(_select(hidden, rows), _select(mask, rows))
        with torch.inference_mode():
            return np.asarray(self.heads[head].score(h, m).numpy(), dtype=np.float64)

    def pooled(self, encoded: Encoded, rows: Sequence[int]) -> NDArray[np.float32]:
        """See :class:`InferenceBackend`."""
        hidden = _select(encoded.hidden, rows).float().numpy()
        return pooled_states(hidden, _select(encoded.mask, rows).numpy())


class _FullModel(nn.Module):
    """One stage as a separate full encoder: embeddings, all layers, classifier."""

    def __init__(self, trunk: Trunk, head: Head) -> None:
        super().__init__()
        self.embeddings = copy.deepcopy(trunk.embeddings)
        self.layers = nn.ModuleList(
            [copy.deepcopy(layer) for layer in trunk.layers]
            + [copy.deepcopy(layer) for layer in head.layers]
        )
        self.classifier = copy.deepcopy(head.classifier)
        self.binary = head.n_outputs == 1
        self.eval()

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = run_layers(self.layers, self.embeddings(input_ids=input_ids), mask)
        logits = self.classifier(out[:, 0])
        return torch.sigmoid(logits[:, 0]) if self.binary else torch.softmax(logits, dim=-1)


class PerStageTorchBackend:
    """The paper's architecture as written (III-C, III-D): a full model per stage.

    Every head becomes a separate full encoder (its trunk's embeddings and frozen layers
    copied, then its own layers and classifier), and each text is tokenised and run through
    each stage's model on its own, in fp32: nothing is shared between stages or lines. The
    arithmetic is the same as :class:`TorchBackend`'s, so verdicts agree; it exists to
    measure what the shared trunk, batching and the ONNX engine buy.
    """

    name = "reference"
    workers = 1

    def __init__(
        self,
        *,
        tokenizer: Any,
        trunk: Trunk,
        heads: Mapping[str, Head],
        max_tokens: int,
        router_trunk: Trunk | None = None,
        router_tokenizer: Any = None,
        router_heads: Sequence[str] = (),
    ) -> None:
        router_trunk = router_trunk if router_trunk is not None else trunk
        router_tokenizer = router_tokenizer if router_tokenizer is not None else tokenizer
        self.max_tokens = max_tokens
        self.trunk = trunk
        self.tokenizer = tokenizer
        self.models: dict[str, tuple[_FullModel, Any]] = {}
        for name, head in heads.items():
            own = name in router_heads
            model = _FullModel(router_trunk if own else trunk, head)
            self.models[name] = (model, router_tokenizer if own else tokenizer)

    def encode(self, texts: list[str]) -> Encoded:
        """Nothing is shared: each stage tokenises and encodes for itself in :meth:`score`."""
        return Encoded(list(texts), None, None, None, None)

    def score(self, head: str, encoded: Encoded, rows: Sequence[int] | None = None) -> NDArray:
        """See :class:`InferenceBackend`; one text per forward pass."""
        model, tokenizer = self.models[head]
        picked = encoded.texts if rows is None else [encoded.texts[i] for i in rows]
        out = []
        with torch.inference_mode():
            for text in picked:
                enc = tokenize(tokenizer, [text], self.max_tokens)
                out.append(model(enc["input_ids"], enc["attention_mask"])[0].numpy())
        if not out:
            return np.zeros((0,), dtype=np.float64)
        return np.asarray(np.stack(out), dtype=np.float64)

    def pooled(self, encoded: Encoded, rows: Sequence[int]) -> NDArray[np.float32]:
        """The novelty path's embedding, from the trunk, one text at a time."""
        out = []
        for i in rows:
            enc = tokenize(self.tokenizer, [encoded.texts[i]], self.max_tokens)
            hidden = self.trunk(enc["input_ids"], enc["attention_mask"]).float().numpy()
            out.append(pooled_states(hidden, enc["attention_mask"].numpy())[0])
        return np.asarray(np.stack(out), dtype=np.float32)


class OnnxBackend:
    """Trunk and heads as ONNX graphs run by onnxruntime (fp32 or int8).

    Tokenisation uses the bundle's fast tokenizer once per batch and per trunk; the trunk's
    states feed every head without copies back to torch.
    """

    name = "onnx"

    def __init__(
        self,
        directory: Path,
        *,
        tokenizer: Any,
        max_tokens: int,
        precision: str = "int8",
        threads: int = 0,
        router_tokenizer: Any = None,
    ) -> None:
        """Opens the exported graphs of a bundle.

        Args:
            directory: Folder written by :func:`fame.models.export.export_onnx`.
            tokenizer: The experts' trunk tokenizer.
            max_tokens: Token limit per line.
            precision: ``int8`` or ``fp32``.
            threads: Chunks scored at once, each on one core (0: one per core). Measured
                on 2 cores: two single-threaded runs side by side encode 1.3x as many lines
                per second as one run with two intra-op threads.
            router_tokenizer: The router trunk's tokenizer when it has its own trunk.

        Raises:
            BundleError: The export is missing, incomplete or unreadable.
            ConfigError: Unknown precision, or onnxruntime is not installed.
        """
        from fame.models.export import read_export_index

        if precision not in PRECISIONS:
            raise ConfigError(f"precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - a dependency of fame
            raise ConfigError(
                "the onnx engine needs onnxruntime; install it (pip install onnxruntime) or "
                "use --engine torch"
            ) from exc
        self.name = f"onnx-{precision}"
        self.precision = precision
        self.max_tokens = max_tokens
        self.tokenizer = tokenizer
        self.router_tokenizer = router_tokenizer if router_tokenizer is not None else tokenizer
        index = read_export_index(directory)
        options = ort.SessionOptions()
        self.workers = threads or os.cpu_count() or 1
        # Sessions run concurrently from the detector's workers, one core each.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3

        def session(file: str) -> Any:
            path = directory / file
            try:
                return ort.InferenceSession(
                    str(path), sess_options=options, providers=["CPUExecutionProvider"]
                )
            except Exception as exc:  # onnxruntime raises its own error types
                raise BundleError(
                    f"ONNX graph {path} is unreadable ({exc}); delete {directory} to export "
                    "it again, or use --engine torch"
                ) from exc

        graphs = index["graphs"]
        self.trunk = session(graphs["trunk"][precision])
        self.router_trunk = (
            session(graphs["router_trunk"][precision]) if "router_trunk" in graphs else None
        )
        self.heads = {name: session(files[precision]) for name, files in index["heads"].items()}
        self.router_heads = (
            frozenset(index.get("router_heads", [])) if self.router_trunk else frozenset()
        )

    def _run(self, session: Any, tokenizer: Any, texts: list[str]) -> tuple[Any, Any]:
        enc = tokenize(tokenizer, texts, self.max_tokens, tensors="np")
        ids, mask = enc["input_ids"], enc["attention_mask"]
        (hidden,) = session.run(None, {"input_ids": ids, "attention_mask": mask})
        return hidden, mask

    def encode(self, texts: list[str]) -> Encoded:
        """See :class:`InferenceBackend`."""
        hidden, mask = self._run(self.trunk, self.tokenizer, texts)
        if self.router_trunk is None:
            return Encoded(texts, hidden, mask, hidden, mask)
        r_hidden, r_mask = self._run(self.router_trunk, self.router_tokenizer, texts)
        return Encoded(texts, hidden, mask, r_hidden, r_mask)

    def score(self, head: str, encoded: Encoded, rows: Sequence[int] | None = None) -> NDArray:
        """See :class:`InferenceBackend`."""
        router = head in self.router_heads
        hidden = encoded.router_hidden if router else encoded.hidden
        mask = encoded.router_mask if router else encoded.mask
        h, m = _trim(_select(hidden, rows), _select(mask, rows))
        if h.shape[0] == 0:
            return np.zeros((0,), dtype=np.float64)
        (scores,) = self.heads[head].run(
            None, {"hidden": np.ascontiguousarray(h), "attention_mask": m}
        )
        return np.asarray(scores, dtype=np.float64)

    def pooled(self, encoded: Encoded, rows: Sequence[int]) -> NDArray[np.float32]:
        """See :class:`InferenceBackend`."""
        return pooled_states(_select(encoded.hidden, rows), _select(encoded.mask, rows))
