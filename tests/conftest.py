"""Suite-wide settings.

One intra-op thread for every test: the tests use tiny models, where OpenMP barriers cost more
than they save, and on a busy 2-core machine two threads made a tiny forward/backward up to
~300x slower (measured while several test runs shared the machine). Subprocess tests
(torchrun, Ray workers) set their own threads.
"""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
