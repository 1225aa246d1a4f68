#!/usr/bin/env bash
# LogLead (PyPI loglead==2.0.0) in its own virtual environment, so that its pins (polars,
# scikit-learn, xgboost, ...) never touch fame's .venv. It needs no torch. `fame benchmark`
# runs src/fame/evaluation/peers/loglead_runner.py with this environment's Python.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${LOGLEAD_VENV:-.venv-loglead}
PYTHON=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet --upgrade pip
"$VENV/bin/pip" install --quiet loglead==2.0.0
"$VENV/bin/python" -c "import loglead, importlib.metadata as m; print('loglead', m.version('loglead'), 'in', '$VENV')"
