"""Deterministic TF-IDF partition proposer: the paper's non-LLM grouping variant.

Table I of the paper reports "FAME w/ TF-IDF grouping", in which the offline expert partition is
produced by TF-IDF similarity instead of by an LLM (Section IV-B). The paper does not spell out
the algorithm; this module implements the following documented, fully deterministic one:

1. One document per EventID: its template plus its representative normal and anomalous lines
   (the same inputs the LLM receives, III-A / III-B1). Documents are tokenised by
   :func:`log_tokens`: lower-cased, masking tokens such as ``<*>`` or ``<NUM>`` removed, only
   purely alphabetic words of at least two letters kept, which drops node identifiers,
   numbers and hexadecimal payloads (the boilerplate III-B1 tells the LLM to ignore).
2. TF-IDF with sublinear term frequency; on corpora of at least
   :data:`MIN_DOCUMENTS_FOR_MAX_DF` documents, words occurring in more than ``max_df`` of them
   are dropped as boilerplate.
3. The EventIDs with an anomaly signal are clustered by average-link agglomerative clustering
   on cosine distance; clusters merge while their average cosine similarity is at least
   ``similarity_threshold``.
4. Every other EventID (normal-only or unlabelled) joins the anomaly-bearing group with the
   highest average cosine similarity when that similarity is at least ``attach_threshold``
   (it shares the group's subsystem); otherwise it stays in ``UNIVERSAL_NORMAL``.
5. Each group is named from the top TF-IDF words of its anomaly-bearing members, upper-cased
   and joined with ``_``; clashes get ``_2``, ``_3``, ... suffixes.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.sparse import csr_matrix
from sklearn.cluster import AgglomerativeClustering
from sklearn.feature_extraction.text import TfidfVectorizer

from fame.errors import ConfigError
from fame.partition.base import UNIVERSAL_NORMAL, Partition
from fame.sampling import EventStats, KShotSample

logger = logging.getLogger(__name__)

#: Masking tokens left by log parsers (Drain3 writes ``<*>`` and masks such as ``<NUM>``).
MASK_PATTERN = re.compile(r"<[^<>\s]*>")

#: Anything that is not a lower-case letter or digit separates tokens.
_TOKEN_SEPARATOR = re.compile(r"[^a-z0-9]+")

#: Shortest word kept; single letters carry no subsystem meaning.
MIN_TOKEN_LENGTH = 2

#: Alphabetic tokens this long made only of the letters a-f (``beeaabff``) are hexadecimal
#: payloads, which III-B1 lists among the boilerplate to ignore; English words of six or more
#: letters drawn only from a-f ("facade") are too rare in logs to matter.
HEX_PAYLOAD_MIN_LENGTH = 6
_HEX_LETTERS = frozenset("abcdef")

#: English function words (articles, prepositions, auxiliaries, pronouns). They say nothing
#: about a subsystem or failure mechanism, so they are dropped like stop words; negations such
#: as "not" and "no" are kept because they change what a message reports.
FUNCTION_WORDS = frozenset(
    {
        "a",
        "an",
        "the",
        "to",
        "of",
        "on",
        "in",
        "at",
        "for",
        "from",
        "by",
        "with",
        "into",
        "onto",
        "via",
        "per",
        "and",
        "or",
        "but",
        "if",
        "as",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "being",
        "has",
        "have",
        "had",
        "do",
        "does",
        "did",
        "it",
        "its",
        "this",
        "that",
        "these",
        "those",
        "there",
        "here",
        "after",
        "before",
        "while",
        "during",
        "than",
        "then",
        "so",
        "such",
    }
)

#: Default cosine similarity at or above which two anomaly-bearing groups merge and a
#: normal-only EventID joins a group. Chosen on the BGL 2k sample (loghub): 0.5 keeps the
#: distinct kernel, storage and application failure families apart while joining templates
#: that share most of their wording; the paper gives no value (its grouping is LLM-made).
DEFAULT_SIMILARITY_THRESHOLD = 0.5

#: Words occurring in more than this share of the EventID documents are boilerplate (III-B1
#: tells the proposer to ignore boilerplate tokens) and are dropped.
DEFAULT_MAX_DF = 0.5

#: Document-frequency pruning needs enough documents to mean anything: below this many
#: EventIDs, a word shared by two of three templates is a topic word, not boilerplate.
MIN_DOCUMENTS_FOR_MAX_DF = 10

#: How many top-weighted words make a domain name ("2-3 most weighted" words read well).
NAME_TERMS = 3

#: Shortest word used in a domain name: two-letter tokens are mostly fragments of node
#: identifiers (``R23-M0-NE``) that survive tokenisation but make poor names.
NAME_MIN_TERM_LENGTH = 3

#: Name used for a group whose documents have no usable word at all.
FALLBACK_DOMAIN_NAME = "DOMAIN"

#: Added to the cosine distance threshold so that a similarity exactly equal to the threshold
#: merges (scikit-learn merges only strictly below ``distance_threshold``).
_DISTANCE_TOLERANCE = 1e-9


def log_tokens(text: str) -> list[str]:
    """Split a log template or line into lower-case alphabetic words.

    Masking tokens (``<*>``, ``<NUM>``, ...) are removed, the text is lower-cased and split on
    every character that is not a letter or digit; only tokens made of at least
    :data:`MIN_TOKEN_LENGTH` letters and not in :data:`FUNCTION_WORDS` are kept, so numbers,
    node identifiers (``r02``) and hexadecimal payloads (``0x1f``) disappear.

    Args:
        text: A template or raw log line.

    Returns:
        The words in order of appearance (repeats kept).
    """
    cleaned = MASK_PATTERN.sub(" ", text.lower())
    return [
        token
        for token in _TOKEN_SEPARATOR.split(cleaned)
        if len(token) >= MIN_TOKEN_LENGTH
        and token.isalpha()
        and token not in FUNCTION_WORDS
        and not _is_hex_payload(token)
    ]


def _is_hex_payload(token: str) -> bool:
    """Tell whether an alphabetic token is most likely a hexadecimal payload.

    Args:
        token: A lower-case alphabetic token.

    Returns:
        True for tokens of at least :data:`HEX_PAYLOAD_MIN_LENGTH` letters all in ``a-f``.
    """
    return len(token) >= HEX_PAYLOAD_MIN_LENGTH and all(ch in _HEX_LETTERS for ch in token)


def make_vectorizer(max_df: float = 1.0, max_features: int | None = None) -> TfidfVectorizer:
    """Build the TF-IDF vectoriser shared by the proposer and certification.

    Args:
        max_df: Drop words occurring in more than this share of the documents.
        max_features: Keep only this many most frequent words (None: all).

    Returns:
        An unfitted vectoriser using :func:`log_tokens`, sublinear tf and l2 normalisation.
    """
    return TfidfVectorizer(
        analyzer=log_tokens,
        sublinear_tf=True,
        max_df=max_df,
        max_features=max_features,
        norm="l2",
        dtype=np.float64,
    )


def fit_tfidf(
    documents: list[str], *, max_df: float = 1.0, max_features: int | None = None
) -> tuple[csr_matrix, list[str], float]:
    """Fit TF-IDF on documents, degrading gracefully when pruning leaves no word.

    Args:
        documents: The documents to vectorise.
        max_df: Requested document-frequency ceiling (ignored on fewer than
            :data:`MIN_DOCUMENTS_FOR_MAX_DF` documents, and dropped if it prunes every word).
        max_features: Optional vocabulary cap.

    Returns:
        The l2-normalised document-term matrix (all-zero rows for documents without words),
        the vocabulary in column order, and the ``max_df`` actually applied.
    """
    applied = max_df if len(documents) >= MIN_DOCUMENTS_FOR_MAX_DF else 1.0
    for candidate in dict.fromkeys((applied, 1.0)):
        vectorizer = make_vectorizer(candidate, max_features)
        try:
            matrix = vectorizer.fit_transform(documents)
        except ValueError:
            # scikit-learn raises ValueError for an empty vocabulary or when max_df prunes
            # every word; retry without pruning, then give up with all-zero vectors.
            continue
        vocabulary = [str(term) for term in vectorizer.get_feature_names_out()]
        return csr_matrix(matrix), vocabulary, candidate
    logger.warning("no usable word in %s documents; every similarity is 0", len(documents))
    return csr_matrix((len(documents), 0), dtype=np.float64), [], 1.0


class TfidfProposer:
    """Group EventIDs into failure domains by TF-IDF cosine similarity (deterministic).

    Attributes:
        name: Registry name, ``"tfidf"``.
        similarity_threshold: Average cosine similarity at or above which anomaly-bearing
            groups merge.
        attach_threshold: Average cosine similarity at or above which a normal-only or
            unlabelled EventID joins an anomaly-bearing group.
        max_df: Boilerplate document-frequency ceiling.
        max_features: Optional vocabulary cap.
    """

    name = "tfidf"

    def __init__(
        self,
        similarity_threshold: float = DEFAULT_SIMILARITY_THRESHOLD,
        *,
        attach_threshold: float | None = None,
        max_df: float = DEFAULT_MAX_DF,
        max_features: int | None = None,
    ) -> None:
        """Configure the proposer.

        Args:
            similarity_threshold: Merge threshold in ``[0, 1]``.
            attach_threshold: Attachment threshold in ``[0, 1]``; None uses
                ``similarity_threshold``. Use a value above 1 to never attach normal-only
                EventIDs.
            max_df: Document-frequency ceiling in ``(0, 1]``.
            max_features: Vocabulary cap (at least 1) or None.

        Raises:
            ConfigError: If a value is out of range.
        """
        if not 0.0 <= similarity_threshold <= 1.0:
            raise ConfigError(
                f"similarity_threshold must be in [0, 1], got {similarity_threshold!r}; "
                f"the default is {DEFAULT_SIMILARITY_THRESHOLD}"
            )
        attach = similarity_threshold if attach_threshold is None else attach_threshold
        if attach < 0.0:
            raise ConfigError(
                f"attach_threshold must be at least 0, got {attach!r}; use a value above 1 "
                "to keep every normal-only EventID in UNIVERSAL_NORMAL"
            )
        if not 0.0 < max_df <= 1.0:
            raise ConfigError(
                f"max_df must be in (0, 1], got {max_df!r}; the default is {DEFAULT_MAX_DF}"
            )
        if max_features is not None and max_features < 1:
            raise ConfigError(f"max_features must be at least 1 or None, got {max_features!r}")
        self.similarity_threshold = float(similarity_threshold)
        self.attach_threshold = float(attach)
        self.max_df = float(max_df)
        self.max_features = max_features

    def propose(self, sample: KShotSample) -> Partition:
        """Propose a partition of the sample's EventIDs.

        Args:
            sample: The K-shot sample (signals, templates and representatives per EventID).

        Returns:
            A partition normalised against ``sample.events``, with provenance in ``details``.
        """
        event_ids = sorted(sample.events)
        documents = [_event_document(sample.events[e]) for e in event_ids]
        matrix, vocabulary, applied_max_df = fit_tfidf(
            documents, max_df=self.max_df, max_features=self.max_features
        )
        similarity = _cosine(matrix)
        anomalous = [i for i, e in enumerate(event_ids) if sample.events[e].has_anomaly]
        others = [i for i, e in enumerate(event_ids) if not sample.events[e].has_anomaly]

        clusters = self._cluster(anomalous, similarity)
        names = _name_groups(clusters, matrix, vocabulary, documents)

        members: dict[str, list[int]] = {
            name: list(c) for name, c in zip(names, clusters, strict=True)
        }
        attached: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        universal: list[str] = []
        ordered = sorted(names)
        for i in others:
            best_name, best_sim = None, -1.0
            for name in ordered:
                sim = float(np.mean(similarity[i, clusters[names.index(name)]]))
                if sim > best_sim:
                    best_name, best_sim = name, sim
            if best_name is not None and best_sim >= self.attach_threshold:
                members[best_name].append(i)
                attached[best_name].append(
                    {"event_id": event_ids[i], "similarity": round(best_sim, 4)}
                )
            else:
                universal.append(event_ids[i])

        domains: dict[str, list[str]] = {
            name: sorted(event_ids[i] for i in members[name]) for name in names
        }
        domains[UNIVERSAL_NORMAL] = universal
        details: dict[str, Any] = {
            "similarity_threshold": self.similarity_threshold,
            "attach_threshold": self.attach_threshold,
            "max_df_applied": applied_max_df,
            "vocabulary_size": len(vocabulary),
            "groups": {
                name: {
                    "terms": _top_terms(matrix, vocabulary, clusters[k]),
                    "anomaly_event_ids": sorted(event_ids[i] for i in clusters[k]),
                    "attached": attached[name],
                }
                for k, name in enumerate(names)
            },
        }
        partition = Partition(domains=domains, proposer=self.name, details=details)
        logger.info(
            "tfidf proposer: %s anomaly-bearing EventIDs in %s groups, %s of %s other EventIDs "
            "attached, %s in %s",
            len(anomalous),
            len(clusters),
            len(others) - len(universal),
            len(others),
            len(universal),
            UNIVERSAL_NORMAL,
        )
        return partition.normalised(sample.events)

    def _cluster(self, rows: list[int], similarity: NDArray[np.float64]) -> list[list[int]]:
        """Average-link cluster the given rows on cosine distance.

        Args:
            rows: Row indices (into ``similarity``) of the anomaly-bearing EventIDs, ascending.
            similarity: The full cosine similarity matrix.

        Returns:
            Clusters as ascending row lists, ordered by their smallest row.
        """
        if len(rows) <= 1:
            return [list(rows)] if rows else []
        distance = 1.0 - similarity[np.ix_(rows, rows)]
        np.clip(distance, 0.0, 2.0, out=distance)
        np.fill_diagonal(distance, 0.0)
        model = AgglomerativeClustering(
            n_clusters=None,
            metric="precomputed",
            linkage="average",
            distance_threshold=1.0 - self.similarity_threshold + _DISTANCE_TOLERANCE,
        )
        labels = model.fit_predict(distance)
        groups: dict[int, list[int]] = {}
        for row, label in zip(rows, labels, strict=True):
            groups.setdefault(int(label), []).append(row)
        return sorted(groups.values(), key=lambda group: group[0])


def _event_document(stats: EventStats) -> str:
    """Build the TF-IDF document of one EventID: template plus representative lines.

    Args:
        stats: The EventID's statistics.

    Returns:
        The document text.
    """
    parts = [stats.template, stats.normal_example or "", stats.anomaly_example or ""]
    return "\n".join(part for part in parts if part)


def _cosine(matrix: csr_matrix) -> NDArray[np.float64]:
    """Return the dense cosine similarity matrix of l2-normalised rows.

    Args:
        matrix: Row-normalised document-term matrix.

    Returns:
        The ``n x n`` similarity matrix (0 for rows without words).
    """
    product = (matrix @ matrix.T).toarray()
    return np.asarray(product, dtype=np.float64)


def _top_terms(matrix: csr_matrix, vocabulary: list[str], rows: list[int]) -> list[str]:
    """Return the top-weighted words of a group's centroid.

    Args:
        matrix: Document-term matrix.
        vocabulary: Words in column order.
        rows: The group's rows.

    Returns:
        Up to :data:`NAME_TERMS` words of at least :data:`NAME_MIN_TERM_LENGTH` letters, by
        descending centroid weight, ties alphabetical.
    """
    if not vocabulary or not rows:
        return []
    centroid = np.asarray(matrix[rows].mean(axis=0)).ravel()
    order = sorted(
        (
            i
            for i in range(len(vocabulary))
            if centroid[i] > 0.0 and len(vocabulary[i]) >= NAME_MIN_TERM_LENGTH
        ),
        key=lambda i: (-round(float(centroid[i]), 12), vocabulary[i]),
    )
    return [vocabulary[i] for i in order[:NAME_TERMS]]


def _name_groups(
    clusters: list[list[int]], matrix: csr_matrix, vocabulary: list[str], documents: list[str]
) -> list[str]:
    """Give every cluster a unique UPPER_SNAKE_CASE name from its top words.

    The top words are written in the order they first appear in the group's documents, so
    names read like the messages ("DATA_TLB_INTERRUPT"). Larger clusters are named first and
    keep the unsuffixed name on a clash.

    Args:
        clusters: Clusters as row lists.
        matrix: Document-term matrix.
        vocabulary: Words in column order.
        documents: The document of every row.

    Returns:
        One name per cluster, in the order of ``clusters``.
    """
    names: list[str] = [""] * len(clusters)
    taken = {UNIVERSAL_NORMAL}
    for k in sorted(range(len(clusters)), key=lambda k: (-len(clusters[k]), clusters[k][0])):
        tokens = [token for row in clusters[k] for token in log_tokens(documents[row])]
        terms = sorted(
            _top_terms(matrix, vocabulary, clusters[k]),
            key=lambda term: tokens.index(term) if term in tokens else len(tokens),
        )
        base = "_".join(terms).upper() or FALLBACK_DOMAIN_NAME
        name, suffix = base, 2
        while name in taken:
            name, suffix = f"{base}_{suffix}", suffix + 1
        taken.add(name)
        names[k] = name
    return names
