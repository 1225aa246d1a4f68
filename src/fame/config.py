"""One typed definition of every setting, shared by the CLI, the config file and the API.

Each field of :class:`Settings` carries its help text and the commands that use it in its
metadata; the CLI builds its options from these fields (``k`` becomes ``--k``,
``phase1_max_steps`` becomes ``--phase1-max-steps``) and a TOML config file uses the same
names, so a setting is written down exactly once. Values are validated when the object is
built: a wrong value fails at once, naming what was expected.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fame.errors import ConfigError

SETUP = "setup"
DETECT = "detect"
FORMAT = "format"
SERVE = "serve"

# Detection engines and precisions (see fame.models.inference). int8 is the default because
# it was measured not to cost F1: on the BGL sample's test region at K=100 int8 and fp32 gave
# the same F1 (0.714, identical TP/FP/FN), at twice the lines/s (benchmarks/bench_detect.py).
ENGINES = ("onnx", "torch", "reference")
PRECISIONS = ("int8", "fp32")
DEFAULT_ENGINE = "onnx"
DEFAULT_PRECISION = "int8"


def _opt(default: Any, help: str, *groups: str, choices: tuple[str, ...] | None = None) -> Any:
    """Declare a setting: its default, its help text and the command groups that use it."""
    meta = {"help": help, "groups": groups, "choices": choices}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: default.copy(), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class Settings:
    """Every setting of fame, with the paper's values as defaults where the paper has one.

    Attributes are documented by their ``help`` metadata; ``fame setup --help`` prints them.
    """

    # -- reading logs ----------------------------------------------------------------------
    format: str = _opt("bgl", "log format: bgl, thunderbird or custom", FORMAT)
    header: str | None = _opt(
        None, "custom format: Loghub-style header, e.g. '<Label> <Date> <Content>'", FORMAT
    )
    regex: str | None = _opt(None, "custom format: regex with named groups incl. Content", FORMAT)
    model_fields: str | None = _opt(
        None,
        "comma-separated fields the models see (default per format; bgl: Component,Level,Content)",
        FORMAT,
    )
    triage_labels: str | None = _opt(
        None,
        "triage state file whose operator-confirmed verdicts label the matching unlabelled "
        "offline lines (setup)",
        SETUP,
    )
    labels_csv: str | None = _opt(
        None, "CSV 'line,label' for logs without inline labels (setup/evaluate)", SETUP
    )
    max_line_chars: int = _opt(20_000, "lines longer than this are cut (characters)", FORMAT)

    threads: int = _opt(
        0,
        "CPU threads for torch, and the onnx engine's scoring workers (0: one per core); use 1 "
        "when another busy process shares a small machine, where spinning threads slow "
        "training many times",
        SETUP,
        DETECT,
    )

    # -- template parsing (III-A) ----------------------------------------------------------
    drain_sim_th: float = _opt(0.5, "Drain3 similarity threshold (paper: 0.5)", SETUP)
    drain_depth: int = _opt(4, "Drain3 tree depth (paper: 4)", SETUP)

    # -- K-shot sampling (III-A) -----------------------------------------------------------
    k: int = _opt(100, "at most K labelled lines per EventID (paper default 100)", SETUP)
    calibration_fraction: float = _opt(
        0.2, "share of each EventID's K-shot lines kept for calibration (paper: 0.2)", SETUP
    )

    # -- partition and certification (III-B) -----------------------------------------------
    proposer: str = _opt(
        "tfidf",
        "failure-domain proposer ('single': no domains, one global model; an ablation)",
        SETUP,
        choices=("tfidf", "file", "llm", "single"),
    )
    partition_file: str | None = _opt(
        None,
        "JSON partition: read by --proposer file; otherwise the proposal is written there",
        SETUP,
    )
    llm_provider: str = _opt(
        "local",
        "llm: 'local' (GGUF in this process, nothing leaves the machine), 'openai' "
        "(any OpenAI-compatible server) or 'anthropic'",
        SETUP,
        DETECT,
        choices=("local", "openai", "anthropic"),
    )
    llm_model: str | None = _opt(
        None,
        "llm: model name, or for 'local' a GGUF path (default: Qwen2.5-Coder-1.5B "
        "assembled from its PyPI parts under ~/.cache/fame/models)",
        SETUP,
        DETECT,
    )
    llm_base_url: str | None = _opt(
        None,
        "llm: API root of an OpenAI-compatible server, e.g. http://host:8000/v1",
        SETUP,
        DETECT,
    )
    llm_key_env: str | None = _opt(
        None,
        "llm: environment variable holding the API key (default OPENAI_API_KEY or "
        "ANTHROPIC_API_KEY); keys are never read from options or written anywhere",
        SETUP,
        DETECT,
    )
    llm_timeout: float = _opt(600.0, "llm: seconds per remote request", SETUP, DETECT)
    llm_context_tokens: int = _opt(8192, "llm: context window of the local model", SETUP, DETECT)
    llm_prompt_tokens: int = _opt(
        5000,
        "llm proposer: token budget of one grouping prompt; larger listings are split into "
        "several calls and merged",
        SETUP,
    )
    llm_chunk_events: int = _opt(
        12,
        "llm proposer: most EventIDs per grouping call (small local models lose track of "
        "long listings; raise it for large hosted models)",
        SETUP,
    )
    llm_max_output_tokens: int = _opt(2048, "llm proposer: answer token limit per call", SETUP)
    llm_retries: int = _opt(
        2, "llm proposer: retries with the errors shown after an invalid answer", SETUP
    )
    llm_max_normal_events: int = _opt(
        60,
        "llm proposer: most normal-only EventIDs shown (those most similar to anomalous ones)",
        SETUP,
    )
    llm_redact: str = _opt(
        "all",
        "rules applied to log text sent to a remote provider: 'all', 'none' or a list of "
        "url,email,user,mac,ip,path,host,node,hex,number",
        SETUP,
        DETECT,
    )
    llm_redact_extra: str | None = _opt(
        None, "extra regular expressions to redact, separated by ';;'", SETUP
    )
    llm_cache_dir: str = _opt(
        "~/.cache/fame/llm",
        "directory of cached model answers (by request hash); '' turns the cache off",
        SETUP,
        DETECT,
    )
    tfidf_threshold: float = _opt(
        0.5, "tfidf proposer: cosine similarity needed to share a domain", SETUP
    )
    max_pure_similarity: float = _opt(
        0.9,
        "certification: a pure-anomaly domain at least this TF-IDF-similar to the "
        "UNIVERSAL_NORMAL normal pool is dissolved",
        SETUP,
    )

    # -- models (III-C, III-D) -------------------------------------------------------------
    encoder: str = _opt(
        "minilm",
        "encoder for the experts: 'minilm' (bundled all-MiniLM-L6-v2), a local directory "
        "or a Hugging Face id",
        SETUP,
    )
    router_encoder: str = _opt(
        "shared",
        "encoder for gate and selector: 'shared' runs them on the experts' Phase 1 trunk "
        "(one trunk pass per line); or a model name as for --encoder",
        SETUP,
    )
    trainable_layers: int = _opt(
        2, "top transformer layers each head trains (paper III-D2: 2)", SETUP
    )
    max_tokens: int = _opt(128, "tokens per line the models see; longer lines are cut", SETUP)
    train_batch_size: int = _opt(32, "batch size for training", SETUP)
    seed: int = _opt(0, "random seed for sampling and training", SETUP)
    routing: str = _opt(
        "gated",
        "router layout: 'gated' (paper III-C: a gate for UNIVERSAL_NORMAL against the expert "
        "domains, then a selector among them) or 'symmetric' (no gate: UNIVERSAL_NORMAL is "
        "one more selector class; the paper's No-Gate ablation)",
        SETUP,
        choices=("gated", "symmetric"),
    )
    router_max_lines: int = _opt(
        20_000, "cap on distinct offline lines used to train gate and selector", SETUP
    )
    phase1: bool = _opt(True, "run Phase 1 MLM adaptation (III-D1)", SETUP)
    phase1_max_lines: int = _opt(200_000, "Phase 1 corpus cap (paper: 200,000 lines)", SETUP)
    phase1_max_steps: int = _opt(
        600, "Phase 1 step budget (a CPU budget; the paper trains to convergence)", SETUP
    )
    expert_max_epochs: int = _opt(10, "epoch cap for large expert training sets", SETUP)
    min_recall: float = _opt(0.90, "calibration: recall floor for thresholds (III-E)", SETUP)
    threshold_tie_break: str = _opt(
        "highest",
        "calibration: among thresholds tied on F1 take the highest or the middle of their "
        "band (the paper does not say)",
        SETUP,
        choices=("middle", "highest"),
    )

    # -- lines of never-seen templates (beyond the paper) ----------------------------------
    novelty: bool = _opt(
        True,
        "train (setup) and use (detect) the calibrated decision for lines of templates never "
        "seen offline (--no-novelty: the paper's routing decides them)",
        SETUP,
        DETECT,
    )
    novel_min_recall: float = _opt(
        0.9,
        "novelty path operating point: recall floor on held-out templates' anomalies in the "
        "template-level cross-validation (higher catches more new failures, with more alerts)",
        SETUP,
    )

    triage: bool = _opt(
        False,
        "ask the LLM (--llm-provider, local by default) once per never-seen template for a "
        "verdict, in the background; lines before the verdict use the novelty path",
        DETECT,
    )
    triage_state: str | None = _opt(
        None,
        "triage state file (verdicts and new templates; default: BUNDLE.triage.json beside "
        "the bundle); a restart reuses it",
        DETECT,
    )
    triage_min_precision: float = _opt(
        0.8,
        "triage: apply the LLM's verdicts only if, asked about offline templates with known "
        "labels (once per model), its 'anomalous' verdicts reached this precision; 0 always "
        "applies them",
        DETECT,
    )
    triage_calls_per_minute: int = _opt(30, "triage: most LLM calls per minute", DETECT)
    triage_budget: int = _opt(500, "triage: most LLM calls per process", DETECT)

    novel_min_precision: float = _opt(
        0.5,
        "novelty path: disable it when its cross-validated precision on held-out templates "
        "stays under this (it would raise more false alarms than it finds new failures)",
        SETUP,
    )

    # -- detection -------------------------------------------------------------------------
    batch_size: int = _opt(
        1024,
        "most lines per detection batch (a batch is also cut at flush_ms); larger batches "
        "give the engine more distinct lines to spread over the cores",
        DETECT,
    )
    cache_size: int = _opt(
        100_000, "results cached by model-visible text; 0 turns the cache off", DETECT
    )
    route_known_templates: bool = _opt(
        True,
        "route lines of a known template by the certified partition; the gate and selector "
        "then route only never-seen templates (--no-route-known-templates: the paper's "
        "routing of every line by the models)",
        DETECT,
    )
    flush_ms: int = _opt(
        200,
        "longest wait (ms) between a line arriving and its result being written: a batch "
        "smaller than batch_size is scored once this much time passed since its first line",
        DETECT,
    )
    engine: str = _opt(
        DEFAULT_ENGINE,
        "detection engine: onnx (onnxruntime on the CPU), torch, or reference (the paper's "
        "architecture: a full fp32 model per stage, one line at a time; for comparisons)",
        DETECT,
        choices=ENGINES,
    )
    precision: str = _opt(
        DEFAULT_PRECISION,
        "onnx engine precision: int8 (dynamic quantisation) or fp32; see the README for "
        "the measured F1 of each",
        DETECT,
        choices=PRECISIONS,
    )
    onnx_cache_dir: str | None = _opt(
        None,
        "where to keep the ONNX export of a bundle that carries none (default "
        "~/.cache/fame/onnx, or $FAME_ONNX_CACHE)",
        DETECT,
    )

    # -- the detection service (fame serve) ------------------------------------------------
    host: str = _opt(
        "127.0.0.1",
        "address to listen on; any address but loopback requires a bearer token",
        SERVE,
    )
    port: int = _opt(8080, "TCP port to listen on", SERVE)
    token_env: str = _opt(
        "FAME_SERVE_TOKEN",
        "environment variable holding the bearer token clients must send (Authorization: "
        "Bearer TOKEN); tokens are never read from options or logged",
        SERVE,
    )
    token_file: str | None = _opt(
        None, "file holding the bearer token (instead of the environment variable)", SERVE
    )
    database_url: str | None = _opt(
        None,
        "where anomalous detections are kept: a SQLAlchemy URL, e.g. "
        "postgresql://user@host/db (default: SQLite file BUNDLE.detections.sqlite beside the "
        "bundle)",
        SERVE,
    )
    retention_hours: float = _opt(
        168.0, "stored detections older than this are deleted (hours)", SERVE
    )
    request_max_bytes: int = _opt(
        16 * 1024 * 1024, "largest request body accepted (bytes; larger: 413)", SERVE
    )
    request_max_lines: int = _opt(10_000, "most lines per request (more: 413)", SERVE)
    request_max_line_chars: int = _opt(
        20_000, "longest line accepted in a request (characters; longer: 422)", SERVE
    )
    alert_webhook_url: str | None = _opt(
        None,
        "URL that receives an Alertmanager-style JSON alert when a domain's anomaly count "
        "within alert_window_s reaches alert_threshold",
        SERVE,
    )
    alert_threshold: int = _opt(10, "anomalies of one domain within the window that alert", SERVE)
    alert_window_s: float = _opt(300.0, "alerting window (seconds)", SERVE)
    alert_cooldown_s: float = _opt(
        900.0, "after an alert, seconds before the same domain alerts again", SERVE
    )
    shutdown_timeout_s: float = _opt(
        30.0, "on SIGTERM, how long accepted requests may take to finish (seconds)", SERVE
    )

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every value; raise :class:`ConfigError` naming the first bad one."""
        positive_ints = (
            "k",
            "drain_depth",
            "trainable_layers",
            "max_tokens",
            "train_batch_size",
            "router_max_lines",
            "phase1_max_lines",
            "phase1_max_steps",
            "expert_max_epochs",
            "batch_size",
            "max_line_chars",
            "flush_ms",
            "llm_context_tokens",
            "llm_prompt_tokens",
            "llm_chunk_events",
            "triage_calls_per_minute",
            "triage_budget",
            "llm_max_output_tokens",
            "llm_max_normal_events",
            "request_max_bytes",
            "request_max_lines",
            "request_max_line_chars",
            "alert_threshold",
        )
        for name in positive_ints:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"setting {name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.llm_retries, int) or self.llm_retries < 0:
            raise ConfigError(
                f"setting llm_retries must be an integer >= 0, got {self.llm_retries}"
            )
        if self.llm_timeout <= 0:
            raise ConfigError(f"setting llm_timeout must be > 0 seconds, got {self.llm_timeout}")
        if self.cache_size < 0:
            raise ConfigError(f"setting cache_size must be >= 0, got {self.cache_size}")
        if not isinstance(self.threads, int) or self.threads < 0:
            raise ConfigError(f"setting threads must be an integer >= 0, got {self.threads!r}")
        for name in (
            "drain_sim_th",
            "tfidf_threshold",
            "max_pure_similarity",
            "min_recall",
            "novel_min_recall",
            "novel_min_precision",
            "triage_min_precision",
        ):
            value = getattr(self, name)
            if not 0.0 <= float(value) <= 1.0:
                raise ConfigError(f"setting {name} must lie in [0, 1], got {value!r}")
        if not 0.0 <= self.calibration_fraction < 1.0:
            raise ConfigError(
                f"setting calibration_fraction must lie in [0, 1), got {self.calibration_fraction}"
            )
        if self.proposer == "file" and not self.partition_file:
            raise ConfigError(
                "proposer 'file' needs --partition-file PATH (a JSON partition); write one "
                "with 'fame setup --partition-file PATH' using the tfidf proposer first"
            )
        self._validate_serve()
        choices = dataclasses.fields(self)
        for f in choices:
            allowed = f.metadata.get("choices")
            if allowed and getattr(self, f.name) not in allowed:
                raise ConfigError(
                    f"setting {f.name} must be one of {', '.join(allowed)}; "
                    f"got {getattr(self, f.name)!r}"
                )

    def _validate_serve(self) -> None:
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ConfigError(f"setting port must be an integer in [0, 65535], got {self.port!r}")
        for name in ("retention_hours", "alert_window_s", "shutdown_timeout_s"):
            if not float(getattr(self, name)) > 0:
                raise ConfigError(f"setting {name} must be > 0, got {getattr(self, name)!r}")
        if float(self.alert_cooldown_s) < 0:
            raise ConfigError(f"setting alert_cooldown_s must be >= 0, got {self.alert_cooldown_s}")
        url = self.alert_webhook_url
        if url and not url.startswith(("http://", "https://")):
            raise ConfigError(
                "setting alert_webhook_url must be an http:// or https:// URL (the value "
                "given is not shown: URLs can hold secrets)"
            )

    def model_field_list(self) -> list[str] | None:
        """The ``model_fields`` setting as a list, or None for the format's default."""
        if not self.model_fields:
            return None
        return [part.strip() for part in self.model_fields.split(",") if part.strip()]

    def to_dict(self) -> dict[str, Any]:
        """All settings as a plain JSON-able dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Settings:
        """Build settings from a mapping, rejecting unknown names with the valid ones."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(
                f"unknown setting(s) {', '.join(unknown)}; valid names: {', '.join(sorted(known))}"
            )
        return cls(**dict(values))

    def replace(self, **changes: Any) -> Settings:
        """A copy with some settings changed (validated)."""
        return dataclasses.replace(self, **changes)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file whose keys are setting names (a ``[fame]`` table or top level).

    Raises:
        ConfigError: the file is missing or is not valid TOML.
    """
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {p} does not exist; pass an existing TOML file") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {p} is not valid TOML: {exc}") from exc
    table = data.get("fame", data)
    if not isinstance(table, dict):
        raise ConfigError(f"config file {p}: the [fame] entry must be a table of settings")
    return table


def setting_fields(*groups: str) -> list[dataclasses.Field[Any]]:
    """The settings used by the given command groups, in definition order."""
    return [
        f
        for f in dataclasses.fields(Settings)
        if not groups or set(f.metadata.get("groups", ())) & set(groups)
    ]
