"""The two GPU scripts run their own logic on the CPU, so they cannot rot between sessions
that have a GPU: scripts/gpu_check_training.py --dry-run (SIGKILL + --resume bit-exact, CPU
bf16 autocast, speed rows on a tiny model) and benchmarks/gpu_bench.py --smoke (every latency
setting but compile, and the training comparison with torchvision, on a tiny model)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)


def test_gpu_training_check_dry_run(tmp_path: Path) -> None:
    out = tmp_path / "check.json"
    proc = _run(["scripts/gpu_check_training.py", "--dry-run", "--json", str(out)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {r["check"]: r for r in json.loads(out.read_text())["rows"]}
    resume = rows["SIGKILL + --resume, bit-exact"]
    # killed after its 2nd checkpoint of 6 steps, and every tensor of the final model equal
    assert resume["ok"] and "tensors differ (max |diff| 0)" in resume["detail"] and " 0/" in resume["detail"]
    assert rows["AMP bfloat16"]["ok"]
    assert "skipped" in rows["SyncBatchNorm + loss normaliser (NCCL)"]["detail"]
    assert len(rows) == 7


def test_gpu_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = _run(["benchmarks/gpu_bench.py", "--smoke", "--json", str(out)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "end to end ms" in proc.stdout and "speed vs R50-FPN" in proc.stdout
