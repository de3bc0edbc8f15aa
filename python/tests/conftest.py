"""Shared fixtures: a tiny random-weight Llama (nothing downloaded) and test directories on
a real disk (the NVMe tier needs O_DIRECT, which tmpfs lacks)."""

import os
import shutil
import tempfile

import pytest


def test_dir_root():
    """Like tests/temp_dir.h: KVTIER_TEST_DIR, else TMPDIR, else /tmp."""
    for var in ("KVTIER_TEST_DIR", "TMPDIR"):
        if os.environ.get(var):
            return os.environ[var]
    return "/tmp"


@pytest.fixture
def disk_dir():
    root = test_dir_root()
    os.makedirs(root, exist_ok=True)
    path = tempfile.mkdtemp(prefix="kvtier_py_", dir=root)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_llama():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=1000,
        max_position_embeddings=4096,
    )
    model = transformers.LlamaForCausalLM(config).to(torch.float32).eval()
    return model
