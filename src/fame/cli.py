"""The ``fame`` command line, thin over the API.

Options come from :mod:`fame.config` (one definition per setting); this module only maps
them to argparse, sets up logging and turns errors into exit codes: 2 for bad input or a
bad bundle, 1 for other failures, 130 on interruption.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fame import __version__
from fame.config import DETECT, FORMAT, SETUP, Settings, load_config_file, setting_fields
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
    _add_settings(setup, FORMAT, SETUP)

    detect = sub.add_parser("detect", parents=[common], help="score lines with a bundle")
    detect.add_argument("--bundle", required=True, help="bundle directory from 'fame setup'")
    detect.add_argument("log", nargs="?", default="-", help="log file, or - for stdin (default)")
    detect.add_argument("--output", default="-", help="JSON Lines file, or - for stdout")
    _add_settings(detect, DETECT)

    evaluate = sub.add_parser(
        "evaluate", parents=[common], help="chronological split, setup, detection, metrics"
    )
    evaluate.add_argument("log", help="a labelled log file")
    evaluate.add_argument("--out", required=True, help="directory for bundle and metrics")
    evaluate.add_argument(
        "--test-fraction", type=float, default=0.15, help="last share of lines held out (0.15)"
    )
    _add_settings(evaluate, FORMAT, SETUP, DETECT)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    values: dict[str, Any] = {}
    if args.config:
        values.update(load_config_file(args.config))
    names = {f.name for f in setting_fields()}
    values.update({k: v for k, v in vars(args).items() if k in names})
    return Settings.from_dict(values)


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

    settings = _settings(args)
    result = run_setup(args.logs, settings, args.out, progress=not args.quiet)
    sys.stderr.write(result.partition.summary() + "\n")
    sys.stderr.write(f"bundle written to {result.bundle}\n")
    return EXIT_OK


def _cmd_detect(args: argparse.Namespace) -> int:
    from fame.detector import Detector
    from fame.logs import ReadStats

    settings = _settings(args)
    detector = Detector.load(
        args.bundle,
        cache_size=settings.cache_size,
        route_known_templates=settings.route_known_templates,
    )
    stats = ReadStats()
    if args.output == "-":
        sink = sys.stdout
    else:
        try:
            sink = Path(args.output).open("w", encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            raise InputError(f"cannot write --output {args.output}: {exc.strerror}") from exc
    try:
        batch = settings.batch_size
        for n, detection in enumerate(
            detector.detect_file(args.log, batch_size=batch, stats=stats), start=1
        ):
            sink.write(json.dumps(detection.to_json()) + "\n")
            if n % batch == 0:
                sink.flush()
        sink.flush()
    finally:
        if sink is not sys.stdout:
            sink.close()
    stats.warn_summary(logging.getLogger("fame.detect"))
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
    )
    sys.stdout.write(format_metrics_table(result.metrics) + "\n")
    sys.stdout.write(f"metrics written to {result.out / 'metrics.json'}\n")
    return EXIT_OK


def _error(exc: Exception) -> None:
    """Print an error for a person: the message only, no traceback."""
    sys.stderr.write(f"fame: error: {exc}\n")
    sys.stderr.flush()


COMMANDS = {"setup": _cmd_setup, "detect": _cmd_detect, "evaluate": _cmd_evaluate}


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
