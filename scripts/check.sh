#!/usr/bin/env bash
# Static checks that CI runs: formatting, lint, types.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
$BIN/ruff format --check src tests benchmarks
$BIN/ruff check src tests benchmarks
$BIN/mypy
