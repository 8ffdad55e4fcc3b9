"""The training engine on a real GPU (``-m gpu``): runs scripts/gpu_check_training.py, which
checks exact resume after SIGKILL, AMP fp16 / bf16, SyncBatchNorm and the NCCL loss
normaliser, and measures latency and images/s."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_training_check(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check_training.py"), "--json",
                           str(tmp_path / "gpu.json")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
