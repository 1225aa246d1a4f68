"""The three non-routed line-level baselines of paper section IV-B.

Every baseline sees exactly what FAME sees: Drain templates learned on the offline region,
the same K-shot sample (:func:`fame.sampling.sample_kshot`, per-EventID chronological 80/20
train / calibration split) and the same PU-normal pool. Each baseline produces an anomaly
score per line; its decision threshold is calibrated on the K-shot calibration subset with
:func:`fame.calibration.calibrate_threshold` (a baseline with hard 0/1 predictions would use
0.5 instead). The test lines are then scored once and counted with
:class:`fame.evaluation.metrics.Confusion`.

* ``drain_rf``: Drain+Random Forest (paper IV-B "RForest").
* ``tfidf_iforest``: TF-IDF+Isolation Forest (paper IV-B "IForest").
* ``sbert_lr``: SBERT+Logistic Regression (paper IV-B "LR", Reimers and Gurevych 2019).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from sklearn.ensemble import IsolationForest, RandomForestClassifier
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from fame.calibration import calibrate_threshold
from fame.errors import ConfigError, InputError
from fame.evaluation.metrics import Confusion
from fame.models.encoder import MAX_TOKENS, load_encoder, load_tokenizer, resolve_encoder, tokenize
from fame.parsing import TemplateParser
from fame.sampling import KShotSample, LabeledLine, sample_kshot
from fame.setup import OfflineData

logger = logging.getLogger(__name__)

#: Threshold of baselines whose predictions are hard 0/1 decisions.
HARD_THRESHOLD = 0.5
#: Column of the one-hot EventID encoding taken by lines no offline template matches.
UNKNOWN_EVENT = "unknown"
#: Cap on the distinct PU-normal texts the TF-IDF+Isolation Forest baseline is fitted on.
IFOREST_POOL_CAP = 50_000
#: Batch size of the frozen sentence-embedding pass.
EMBED_BATCH = 64

Scores = NDArray[np.float64]


@dataclass
class BaselineResult:
    """Message-level test metrics of one baseline run.

    Attributes:
        name: Baseline name (a key of :data:`BASELINES`).
        k: K-shot labelling budget per EventID.
        seed: Random seed.
        precision: Test precision.
        recall: Test recall.
        f1: Test F1.
        auroc: Test AUROC of the scores; None when the test set holds one class only.
        tp: True positives.
        fp: False positives.
        fn: False negatives.
        tn: True negatives.
        threshold: Decision threshold (``score >= threshold`` is anomalous).
        seconds: Wall-clock time of the whole run (parsing, training, scoring).
    """

    name: str
    k: int
    seed: int
    precision: float
    recall: float
    f1: float
    auroc: float | None
    tp: int
    fp: int
    fn: int
    tn: int
    threshold: float
    seconds: float


@dataclass
class BaselineContext:
    """What every baseline is given: the offline data, its parser and its K-shot sample.

    Attributes:
        offline: The offline region.
        parser: Drain parser learned on the offline contents.
        event_ids: EventID of every offline line.
        sample: The K-shot sample (train, calibration, PU-normal pool).
        seed: Random seed.
    """

    offline: OfflineData
    parser: TemplateParser
    event_ids: list[str]
    sample: KShotSample
    seed: int


@dataclass
class BaselineScores:
    """Scores a baseline gives the calibration and test lines.

    Attributes:
        calibration: Scores of the K-shot calibration lines, in sample order.
        test: Scores of the test lines.
        hard: True when the scores are 0/1 decisions (threshold 0.5, no calibration).
    """

    calibration: Scores
    test: Scores
    hard: bool = False


BaselineFn = Callable[[BaselineContext, Sequence[str], Sequence[str]], BaselineScores]


def _labels(lines: Sequence[LabeledLine]) -> NDArray[np.int_]:
    return np.array([int(line.label) for line in lines], dtype=np.int_)


def _constant(n: int, value: float) -> Scores:
    return np.full(n, value, dtype=np.float64)


def drain_rf(
    ctx: BaselineContext, test_texts: Sequence[str], test_contents: Sequence[str]
) -> BaselineScores:
    """Drain+Random Forest (paper IV-B, "RForest").

    A supervised EventID-only baseline: each line is the one-hot vector of its Drain EventID
    (offline lines keep the EventID Drain gave them while learning; calibration and test
    lines are matched against the frozen templates, and unmatched lines share an extra
    ``unknown`` column). A seeded RandomForestClassifier (100 trees, balanced class
    weights) is trained on the K-shot train lines; the score is its anomaly probability.

    Args:
        ctx: Offline data, parser and K-shot sample.
        test_texts: Model-visible test texts (unused: this baseline sees EventIDs only).
        test_contents: Raw test contents, matched against the offline templates.

    Returns:
        Calibration and test scores.
    """
    del test_texts
    columns = {eid: i for i, eid in enumerate(ctx.parser.templates)}
    columns.setdefault(UNKNOWN_EVENT, len(columns))

    def one_hot(ids: Sequence[str]) -> NDArray[np.float64]:
        matrix = np.zeros((len(ids), len(columns)), dtype=np.float64)
        for row, eid in enumerate(ids):
            matrix[row, columns.get(eid, columns[UNKNOWN_EVENT])] = 1.0
        return matrix

    def match(content: str) -> str:
        template = ctx.parser.match(content)
        return UNKNOWN_EVENT if template is None else template.event_id

    train = ctx.sample.train
    y = _labels(train)
    x_cal = one_hot([line.event_id for line in ctx.sample.calibration])
    x_test = one_hot([match(content) for content in test_contents])
    if len(set(y.tolist())) < 2:
        value = float(y[0]) if y.size else 0.0
        logger.warning("drain_rf: K-shot train set has one class; constant score %s", value)
        return BaselineScores(_constant(len(x_cal), value), _constant(len(x_test), value))
    model = RandomForestClassifier(
        n_estimators=100, class_weight="balanced", random_state=ctx.seed, n_jobs=1
    )
    model.fit(one_hot([line.event_id for line in train]), y)
    positive = list(model.classes_).index(1)

    def score(x: NDArray[np.float64]) -> Scores:
        if len(x) == 0:
            return np.zeros(0, dtype=np.float64)
        return np.asarray(model.predict_proba(x)[:, positive], dtype=np.float64)

    return BaselineScores(score(x_cal), score(x_test))


def tfidf_iforest(
    ctx: BaselineContext, test_texts: Sequence[str], test_contents: Sequence[str]
) -> BaselineScores:
    """TF-IDF+Isolation Forest (paper IV-B, "IForest").

    An unsupervised baseline: TF-IDF over word unigrams and bigrams is fitted on the distinct
    texts of the PU-normal pool (at most :data:`IFOREST_POOL_CAP`, drawn with the seed), and a
    seeded IsolationForest is trained on them. The raw score is ``-decision_function`` (higher
    is more anomalous), mapped to [0, 1] by a min-max fitted on the calibration scores and
    clipped.

    Args:
        ctx: Offline data, parser and K-shot sample.
        test_texts: Model-visible test texts.
        test_contents: Raw test contents (unused).

    Returns:
        Calibration and test scores in [0, 1].

    Raises:
        InputError: If the PU-normal pool is empty.
    """
    del test_contents
    pool = sorted({ctx.offline.texts[i] for i in ctx.sample.pu_normal})
    if not pool:
        raise InputError("tfidf_iforest: the PU-normal pool is empty; nothing to fit on")
    if len(pool) > IFOREST_POOL_CAP:
        pool = random.Random(ctx.seed).sample(pool, IFOREST_POOL_CAP)
    vectorizer = TfidfVectorizer(ngram_range=(1, 2))
    model = IsolationForest(random_state=ctx.seed, n_jobs=1)
    model.fit(vectorizer.fit_transform(pool))

    def raw(texts: Sequence[str]) -> Scores:
        if not texts:
            return np.zeros(0, dtype=np.float64)
        return -np.asarray(model.decision_function(vectorizer.transform(texts)), dtype=np.float64)

    cal = raw([line.text for line in ctx.sample.calibration])
    test = raw(list(test_texts))
    low, high = (float(cal.min()), float(cal.max())) if cal.size else (0.0, 1.0)
    span = high - low if high > low else 1.0
    return BaselineScores(
        np.clip((cal - low) / span, 0.0, 1.0), np.clip((test - low) / span, 0.0, 1.0)
    )


def embed_texts(texts: Sequence[str], *, encoder: str = "minilm") -> NDArray[np.float32]:
    """Frozen sentence embeddings: L2-normalised mean of the last hidden state over real tokens.

    Distinct texts are embedded once, in batches sorted by length, under
    ``torch.inference_mode``; lines are cut to :data:`fame.models.encoder.MAX_TOKENS` tokens.

    Args:
        texts: The lines.
        encoder: Anything :func:`fame.models.encoder.resolve_encoder` accepts (local only).

    Returns:
        One row per input text.
    """
    distinct = sorted(set(texts), key=len)
    source = resolve_encoder(encoder)
    tokenizer = load_tokenizer(source)
    model = load_encoder(source)
    vectors: list[torch.Tensor] = []
    with torch.inference_mode():
        for start in range(0, len(distinct), EMBED_BATCH):
            batch = tokenize(tokenizer, distinct[start : start + EMBED_BATCH], MAX_TOKENS)
            hidden = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
            vectors.append(torch.nn.functional.normalize(pooled, dim=-1).float())
    width = int(model.config.hidden_size)
    table = torch.cat(vectors).numpy() if vectors else np.zeros((0, width), dtype=np.float32)
    row = {text: i for i, text in enumerate(distinct)}
    return np.asarray(table[[row[text] for text in texts]], dtype=np.float32).reshape(
        len(texts), width
    )


def sbert_lr(
    ctx: BaselineContext, test_texts: Sequence[str], test_contents: Sequence[str]
) -> BaselineScores:
    """SBERT+Logistic Regression (paper IV-B, "LR"; Reimers and Gurevych 2019).

    A global semantic baseline: frozen sentence embeddings of the default MiniLM encoder
    (:func:`embed_texts`) feed a LogisticRegression (balanced class weights, 2000
    iterations) trained on the K-shot train lines; the score is its anomaly probability.

    Args:
        ctx: Offline data, parser and K-shot sample.
        test_texts: Model-visible test texts.
        test_contents: Raw test contents (unused).

    Returns:
        Calibration and test scores.
    """
    del test_contents
    train, cal = ctx.sample.train, ctx.sample.calibration
    y = _labels(train)
    if len(set(y.tolist())) < 2:
        value = float(y[0]) if y.size else 0.0
        logger.warning("sbert_lr: K-shot train set has one class; constant score %s", value)
        return BaselineScores(_constant(len(cal), value), _constant(len(test_texts), value))
    texts = [line.text for line in train] + [line.text for line in cal] + list(test_texts)
    x = embed_texts(texts)
    n_train, n_cal = len(train), len(cal)
    model = LogisticRegression(class_weight="balanced", max_iter=2000, random_state=ctx.seed)
    model.fit(x[:n_train], y)
    positive = list(model.classes_).index(1)
    scores = np.asarray(model.predict_proba(x[n_train:])[:, positive], dtype=np.float64)
    return BaselineScores(scores[:n_cal], scores[n_cal:])


#: The baselines of paper IV-B by name.
BASELINES: dict[str, BaselineFn] = {
    "drain_rf": drain_rf,
    "tfidf_iforest": tfidf_iforest,
    "sbert_lr": sbert_lr,
}


def prepare(offline: OfflineData, *, k: int = 100, seed: int = 0) -> BaselineContext:
    """Learn Drain templates on the offline region and draw the same K-shot sample as FAME.

    Args:
        offline: The offline region.
        k: K-shot labelling budget per EventID.
        seed: Random seed.

    Returns:
        The context every baseline is run on.
    """
    parser = TemplateParser()
    event_ids = parser.learn(offline.contents)
    templates = {eid: t.template for eid, t in parser.templates.items()}
    sample = sample_kshot(event_ids, offline.texts, offline.labels, templates, k)
    return BaselineContext(offline, parser, event_ids, sample, seed)


def run_baseline(
    name: str,
    offline: OfflineData,
    test_texts: Sequence[str],
    test_contents: Sequence[str],
    test_labels: Sequence[bool],
    *,
    k: int = 100,
    seed: int = 0,
    context: BaselineContext | None = None,
) -> BaselineResult:
    """Train one baseline on the offline K-shot sample, calibrate it and evaluate it on test.

    Args:
        name: A key of :data:`BASELINES`.
        offline: The offline region (contents, texts, labels).
        test_texts: Model-visible texts of the test lines.
        test_contents: Raw contents of the test lines (same length).
        test_labels: Test labels, True anomalous (same length).
        k: K-shot labelling budget per EventID.
        seed: Random seed.
        context: A context from :func:`prepare` on the same ``offline``, ``k`` and ``seed``,
            to share parsing and sampling between baselines (built here when None).

    Returns:
        The test metrics.

    Raises:
        ConfigError: If ``name`` is not a known baseline.
        InputError: If the test sequences differ in length.
    """
    if name not in BASELINES:
        raise ConfigError(
            f"unknown baseline {name!r}; choose one of: {', '.join(sorted(BASELINES))}"
        )
    if not len(test_texts) == len(test_contents) == len(test_labels):
        raise InputError(
            f"test texts ({len(test_texts)}), contents ({len(test_contents)}) and labels "
            f"({len(test_labels)}) must have the same length"
        )
    started = time.perf_counter()
    _seed(seed)
    ctx = context if context is not None else prepare(offline, k=k, seed=seed)
    if ctx.sample.k != k or ctx.seed != seed:
        raise ConfigError(
            f"the baseline context was prepared for K={ctx.sample.k}, seed={ctx.seed}, not "
            f"K={k}, seed={seed}; prepare one per K and seed"
        )
    scores = BASELINES[name](ctx, test_texts, test_contents)
    if scores.hard:
        threshold = HARD_THRESHOLD
    else:
        threshold = calibrate_threshold(
            scores.calibration, _labels(ctx.sample.calibration)
        ).threshold
    truth = [bool(label) for label in test_labels]
    confusion = Confusion()
    for value, actual in zip(scores.test.tolist(), truth, strict=True):
        confusion.add(value >= threshold, actual)
    auroc = (
        float(roc_auc_score(np.array(truth, dtype=np.int_), scores.test))
        if len(set(truth)) == 2
        else None
    )
    result = BaselineResult(
        name=name,
        k=k,
        seed=seed,
        precision=confusion.precision,
        recall=confusion.recall,
        f1=confusion.f1,
        auroc=auroc,
        tp=confusion.tp,
        fp=confusion.fp,
        fn=confusion.fn,
        tn=confusion.tn,
        threshold=float(threshold),
        seconds=time.perf_counter() - started,
    )
    logger.info("baseline %s: %s", name, _summary(result))
    return result


def _summary(result: BaselineResult) -> dict[str, Any]:
    return {
        "precision": round(result.precision, 4),
        "recall": round(result.recall, 4),
        "f1": round(result.f1, 4),
        "auroc": None if result.auroc is None else round(result.auroc, 4),
        "threshold": round(result.threshold, 4),
    }


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
