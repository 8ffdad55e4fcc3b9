"""Suite-wide settings.

One intra-op thread for every test: the tests use tiny models, where OpenMP barriers cost more
than they save, and on a busy 2-core machine two threads made a tiny forward/backward up to
~300x slower (measured while several test runs shared the machine). Subprocess tests
(torchrun, Ray workers) set their own threads.
"""

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tf_python() -> str:
    """The interpreter of the official TensorFlow stack (``TORCHSPINE_TF_PYTHON``, else the
    project's ``.venv-tf``), for the tests that let the official code write checkpoints or
    outputs; skips those tests where it is absent."""
    cand = os.environ.get("TORCHSPINE_TF_PYTHON") or str(REPO / ".venv-tf" / "bin" / "python")
    if not os.path.exists(cand):
        pytest.skip("official TensorFlow stack absent: run scripts/setup_tf_venv.sh (CI does) or set "
                    "TORCHSPINE_TF_PYTHON to an interpreter with tensorflow-cpu and tf-models-official")
    return cand
