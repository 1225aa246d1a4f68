"""The LLM proposer against the real offline model, in process and behind a real server.

Needs ``llama-cpp-python`` (with its ``[server]`` extra) and the verified Qwen2.5-Coder-1.5B
GGUF (``fame local-model``; ``make install-llm`` does both). Where they are missing the tests
are skipped with the reason, unless ``FAME_REQUIRE_LLM=1`` (set by ``.ci/run``) turns the
absence into a failure, so CI cannot pass without running them. About 2-3 minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fame.certification import CertifiedPartition, DomainKind
from fame.cli import main
from fame.llm import DEFAULT_LOCAL_MODEL, RecordingClient, get_provider
from fame.llm.model_files import LOCAL_MODEL_SIZE
from fame.partition import UNIVERSAL_NORMAL, Partition, get_proposer
from fame.partition.llm import LLMProposer
from fame.sampling import KShotSample

pytestmark = pytest.mark.slow


def _model_path() -> Path:
    path = Path(os.environ.get("FAME_LLM_MODEL", str(DEFAULT_LOCAL_MODEL))).expanduser()
    problem = None
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        problem = "llama-cpp-python is not installed (make install-llm)"
    if problem is None and not (path.is_file() and path.stat().st_size == LOCAL_MODEL_SIZE):
        problem = f"the local model is not at {path} (fame local-model --out {path})"
    if problem is not None:
        if os.environ.get("FAME_REQUIRE_LLM") == "1":
            pytest.fail(f"FAME_REQUIRE_LLM=1 but {problem}")
        pytest.skip(problem)
    return path


@pytest.fixture(scope="module")
def model() -> Path:
    return _model_path()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def server(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """llama-cpp-python's OpenAI-compatible server on 127.0.0.1 with the same GGUF."""
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llama_cpp.server",
                "--model",
                str(model),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--n_ctx",
                "8192",
                "--model_alias",
                "qwen-local",
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"the llama.cpp server exited: {log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail("the llama.cpp server did not start within 180 s")
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def _check(
    proposer: LLMProposer,
    sample: KShotSample,
    certify_bgl_2k: Callable[[Partition], CertifiedPartition],
) -> None:
    partition = proposer.propose(sample)
    assigned = [e for ids in partition.domains.values() for e in ids]
    assert sorted(assigned) == sorted(sample.events), "each EventID in exactly one domain"
    assert UNIVERSAL_NORMAL in partition.domains
    certified = certify_bgl_2k(partition)
    experts = [d for d, kind in certified.domains.items() if kind != DomainKind.UNIVERSAL]
    assert experts, f"no failure domain survived certification: {partition.domains}"
    assert proposer.client.model_calls >= 1
    assert proposer.client.calls[-1]["response"]


def test_in_process_local_model_proposes_a_certified_partition(
    model: Path,
    bgl_sample: KShotSample,
    certify_bgl_2k: Callable[[Partition], CertifiedPartition],
) -> None:
    provider = get_provider("local", model=str(model), context_tokens=8192)
    _check(LLMProposer(RecordingClient(provider, None)), bgl_sample, certify_bgl_2k)


def test_openai_compatible_provider_against_a_local_server(
    server: str,
    bgl_sample: KShotSample,
    certify_bgl_2k: Callable[[Partition], CertifiedPartition],
) -> None:
    provider = get_provider("openai", model="qwen-local", base_url=server, timeout=600)
    assert provider.remote is False
    _check(LLMProposer(RecordingClient(provider, None)), bgl_sample, certify_bgl_2k)


def test_partition_command_writes_a_reviewable_file_and_reuses_answers(
    model: Path, bgl_2k: Path, bgl_sample: KShotSample, tmp_path: Path
) -> None:
    out = tmp_path / "partition.json"
    argv = [
        "partition",
        str(bgl_2k),
        "--proposer",
        "llm",
        "--provider",
        "local",
        "--model",
        str(model),
        "--llm-cache-dir",
        str(tmp_path / "answers"),
        "--out",
        str(out),
        "-q",
    ]
    assert main(argv) == 0
    first = json.loads(out.read_text("utf-8"))
    assert first["proposer"] == "llm" and first["llm_audit"]
    assert first["domains"][-1]["name"] == UNIVERSAL_NORMAL
    assert any("template" in entry for d in first["domains"] for entry in d["event_ids"])
    # A rerun answers every call from the cache, with the same proposal.
    assert main(argv) == 0
    second = json.loads(out.read_text("utf-8"))
    assert all(call["cached"] for call in second["llm_audit"])
    assert second["domains"] == first["domains"]
    # The reviewed file is what setup reads with --partition.
    proposed = get_proposer("file", path=str(out)).propose(bgl_sample)
    assert {d["name"] for d in first["domains"]} == set(proposed.domains)
