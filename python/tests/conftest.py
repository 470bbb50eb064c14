"""Fixtures of the Python package's tests: mock Hubs (the test suite's own, run as
`cargo run --example mock_hub`) serving the real all-MiniLM-L6-v2 files, a tiny ONNX model with
external data, a gated repo, and a large file on a slow CDN.

The mock Hub binary is `$MODELFS_MOCK_HUB`, else `target/debug/examples/mock_hub` (built by
scripts/test_python.sh).
"""

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "python"))

import consumers  # noqa: E402  (the fixtures of tests/consumers.rs, shared)

MINILM = consumers.MINILM_REPO
ONNX = consumers.ONNX_REPO
GATED = "lib/gated-model"
BIG = "lib/big"
#: The mock Hub's one valid token.
TOKEN = "hf_mock_token"


def mock_hub_binary() -> Path:
    path = Path(os.environ.get("MODELFS_MOCK_HUB", ROOT / "target/debug/examples/mock_hub"))
    if not path.is_file():
        pytest.fail(f"{path} is missing: run scripts/test_python.sh (it builds the mock Hub)")
    return path


class MockHub:
    def __init__(self, repos: Path, *args: str):
        self.proc = subprocess.Popen(
            [str(mock_hub_binary()), "--dir", str(repos), "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        line = self.proc.stdout.readline().strip()
        if not line.startswith("endpoint "):
            self.proc.kill()
            pytest.fail(f"the mock Hub did not start: {line!r}")
        self.endpoint = line.split(" ", 1)[1]

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture(scope="session")
def repos(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("repos")
    consumers.fixture_minilm(out)
    consumers.fixture_onnx(out)
    gated = out / GATED
    gated.mkdir(parents=True)
    (gated / "config.json").write_text('{"gated": true}\n')
    big = out / BIG
    big.mkdir(parents=True)
    (big / "weights.bin").write_bytes(random.Random(7).randbytes(12 << 20))
    return out


@pytest.fixture(scope="session")
def hub(repos):
    h = MockHub(repos, "--gated", GATED)
    yield h
    h.stop()


@pytest.fixture(scope="session")
def slow_hub(repos):
    """A CDN that sends each answer at 4 MB/s: a 12 MiB file takes seconds."""
    h = MockHub(repos, "--cdn-rate", str(4 << 20))
    yield h
    h.stop()


@pytest.fixture
def store(tmp_path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def cache(hub, store):
    import modelfs

    return modelfs.ModelCache(store=store, endpoint=hub.endpoint, token=TOKEN, read_timeout=10)


@pytest.fixture
def disk(repos):
    """The source files of a repo on disk."""
    return lambda repo, path="": repos / repo / path

