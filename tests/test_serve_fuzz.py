"""Schema-driven fuzzing of the service (schemathesis against its OpenAPI description).

Every operation is called with generated inputs, valid and invalid; no answer may be a 5xx.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("schemathesis", reason="the serve test tools are not installed")

from serve_harness import Service

EXAMPLES = 25  # per operation; a few seconds each on loopback


def test_no_server_errors(fame_service: Service, tmp_path: Path) -> None:
    cli = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert cli, "schemathesis is installed but its command is not beside this Python"
    done = subprocess.run(
        [
            cli,
            "run",
            fame_service.url + "/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            str(EXAMPLES),
            "--header",
            f"Authorization: Bearer {fame_service.token}",
            "--seed",
            "0",
            "--request-timeout",
            "120",
            "--exclude-path",
            "/admin/reload",  # reloads the bundle on every call: covered by the API tests
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
