"""``torchspine profile``: measured counts beside the official figures."""

from __future__ import annotations

import json
import re

from torchspine.cli import main


def test_profile_spinenet49_prints_measured_and_official(capsys, tmp_path) -> None:
    out_json = tmp_path / "rows.json"
    assert main(["profile", "spinenet49", "--json", str(out_json)]) == 0
    text = capsys.readouterr().out
    assert "spinenet49 @ 640x640" in text
    # Official backbone+endpoints parameters (tensorflow/tpu models/official/detection/utils/benchmark_utils.py
    # semantics; MODEL_ZOO.md): measured == official.
    row = re.search(r"params \(trainable\)\s+([\d,]+)\s+([\d,]+)\s+([\d.]+)", text)
    assert row and row.group(1) == row.group(2) == "21,831,488" and row.group(3) == "1.0000"
    # Conv MACs 28.26B (tensorflow/tpu models/official/detection/utils/benchmark_utils.py semantics;
    # MODEL_ZOO.md), and the official tf.profiler figure 28.5B.
    row = re.search(r"MACs, conv\+linear\s+([\d.]+)B\s+([\d.]+)B\s+([\d.]+)", text)
    assert row and row.group(1) == row.group(2) == "28.26"
    assert abs(float(row.group(3)) - 1) < 0.01
    assert re.search(r"MACs, official tf.profiler\s+28.50B", text)
    rows = json.loads(out_json.read_text())
    assert rows[0]["params"] == rows[0]["official_params"] == 21_831_488
    assert abs(rows[0]["macs_b"] / 28.26 - 1) < 0.01


def test_profile_unknown_model_is_a_clear_error(capsys) -> None:
    assert main(["profile", "spinenet50"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'spinenet50'" in err
