"""Shared test setup: tiny tensors run on one torch thread."""

import socket

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny tensors: one thread avoids OpenMP barrier stalls when other processes share the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def no_network(monkeypatch):
    """Any DNS lookup or connect fails, as on a machine without network."""
    def refuse(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


@pytest.fixture
def no_tf32():
    """CUDA float32 as on the CPU: by default cuDNN convolutions round their inputs to TF32 (10-bit mantissa)."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


@pytest.fixture(scope="session")
def npx_study(tmp_path_factory):
    """``(root, params)`` of test_neuropixels' TINY study after its data and extract stages: one synthetic
    Neuropixels session, built once for the modules that read it (test_neuropixels, test_neuropixels_training)."""
    import yaml

    from meiscope import pipeline
    from meiscope.config import load_params
    from test_neuropixels import TINY

    root = tmp_path_factory.mktemp("npx")
    (root / "params.yaml").write_text(yaml.safe_dump(TINY))
    params = load_params(root / "params.yaml")
    pipeline.stage("data").run(params, root)
    pipeline.stage("extract").run(params, root)
    return root, params
