"""Every command on bad input: one message naming the input, a non-zero exit status (2 for
bad input), and no Python traceback unless -v is given.

Commands run in-process through ``torchspine.cli.main(argv)`` (an exception escaping it
would fail the test); one subprocess run checks the real process output and ``-v``.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from torchspine.cli import main
from torchspine.specs import spinenet_spec

SRC = Path(__file__).resolve().parents[1] / "src"


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse refuses an option value: status 2, usage + one error line
        rc = e.code
    out, err = capsys.readouterr()
    text = out + err
    assert "Traceback" not in text, text
    return rc, text


def _spec_file(tmp_path: Path, name: str, mutate) -> Path:
    d = spinenet_spec("49s").to_dict()
    mutate(d)
    path = tmp_path / name
    path.write_text(json.dumps(d))
    return path


def _tiny_coco(tmp_path: Path, *, n: int = 4, size: int = 64, annotations: bool = True) -> tuple[Path, Path]:
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    data = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "thing"}]}
    for i in range(n):
        Image.fromarray(np.full((size, size, 3), 40 * i, np.uint8)).save(images / f"{i}.png")
        data["images"].append({"id": i + 1, "file_name": f"{i}.png", "width": size, "height": size})
        if annotations:
            data["annotations"].append({"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [8, 8, 20, 20],
                                        "area": 400, "iscrowd": 0})
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    return ann, images


# Spec defects and the words each message must carry (the block index and the field).
SPEC_DEFECTS = [
    ("offsets_int.json", lambda d: d["blocks"][3].update(input_offsets=5), ["blocks[3]", "input_offsets", "5"]),
    ("momentum_str.json", lambda d: d["norm"].update(momentum="x"), ["momentum", "'x'"]),
    ("min_level_str.json", lambda d: d.update(min_level="3"), ["min_level", "'3'"]),
    ("is_output_str.json", lambda d: d["blocks"][11].update(is_output="false"), ["blocks[11]", "is_output", "'false'"]),
    ("unknown_key.json", lambda d: d["blocks"][2].update(colour="red"), ["blocks[2]", "unknown key", "colour"]),
    ("output_outside.json", lambda d: (d["blocks"][0].update(is_output=True)),
     ["block 0", "output block at level 2", "outside [min_level=3"]),
]


@pytest.mark.parametrize("name, mutate, words", SPEC_DEFECTS, ids=[s[0] for s in SPEC_DEFECTS])
def test_draw_rejects_bad_specs_naming_block_and_field(tmp_path, capsys, name, mutate, words):
    spec = _spec_file(tmp_path, name, mutate)
    rc, text = run_cli(["draw", spec, "--out", tmp_path / "x.svg"], capsys)
    assert rc == 2
    assert name in text, text
    for w in words:
        assert w in text, (w, text)
    assert not (tmp_path / "x.svg").exists()


def test_folder_given_as_spec(tmp_path, capsys):
    rc, text = run_cli(["draw", tmp_path, "--out", tmp_path / "x.svg"], capsys)
    assert rc == 2 and str(tmp_path) in text and "is a folder" in text


@pytest.mark.parametrize("argv, words", [
    (["profile", "spinenet49s", "--size", "0"], ["--size", "at least 32", "0"]),
    (["profile", "spinenet49s", "--size", "1"], ["--size", "at least 32"]),
    (["profile", "no_such_model"], ["no_such_model"]),
    (["export", "--model", "spinenet49s", "--out", "x.onnx", "--size", "-256"], ["--size", "at least 32", "-256"]),
    (["predict", "x.png", "--out", "o", "--image-size", "0"], ["--image-size", "at least 32", "0"]),
    (["train", "--image-size", "1"], ["--image-size", "at least 32", "1"]),
    (["train", "--batch-size", "0"], ["--batch-size", "at least 1"]),
    (["train", "--device", "gpu7"], ["--device", "gpu7"]),
    (["train", "--set", "no_equals_sign"], ["--set", "no_equals_sign", "KEY=VALUE"]),
])
def test_values_that_cannot_be_honoured_are_errors(tmp_path, capsys, monkeypatch, argv, words):
    monkeypatch.chdir(tmp_path)
    rc, text = run_cli(argv, capsys)
    assert rc == 2
    for w in words:
        assert w in text, (w, text)


def test_full_disk_and_unwritable_folder(tmp_path, capsys, monkeypatch):
    # An output folder below a file cannot be made (and works as root, unlike chmod).
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    rc, text = run_cli(["profile", "spinenet49s", "--json", blocker / "sub" / "rows.json"], capsys)
    assert rc == 2 and "rows.json" in text and "cannot write" in text
    rc, text = run_cli(["data", "synth", "--out", blocker / "data", "--num-train", "1", "--num-val", "1"], capsys)
    assert rc == 2 and str(blocker) in text

    # A full disk: every fsync of an atomic write fails with ENOSPC.
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    rc, text = run_cli(["profile", "spinenet49s", "--json", tmp_path / "rows.json"], capsys)
    assert rc == 2 and "no space left on device" in text and "rows.json" in text
    assert not (tmp_path / "rows.json").exists()


def test_data_check_names_bad_images_and_empty_annotations(tmp_path, capsys):
    ann, images = _tiny_coco(tmp_path, n=3)
    (images / "1.png").write_bytes((images / "1.png").read_bytes()[:60])  # truncated
    (images / "2.png").write_text("not an image")
    rc, text = run_cli(["data", "check", ann, "--images", images], capsys)
    assert rc == 1 and "corrupt_image" in text and "1.png" in text and "2.png" in text
    (tmp_path / "e").mkdir()
    empty, _ = _tiny_coco(tmp_path / "e", n=1, annotations=False)
    rc, text = run_cli(["data", "check", empty], capsys)
    assert rc == 1 and "'annotations' list is empty" in text
    rc, text = run_cli(["data", "check", tmp_path], capsys)  # a folder as the annotation file
    assert rc == 2 and "is a folder" in text


def test_weights_that_are_corrupt_or_of_another_model(tmp_path, capsys):
    from safetensors.torch import save_file

    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00" * 64)
    wrong = tmp_path / "wrong.safetensors"
    save_file({"something.else": torch.zeros(3)}, str(wrong))
    for weights in (corrupt, wrong):
        rc, text = run_cli(["export", "--model", "spinenet49s", "--weights", weights, "--out", tmp_path / "m.onnx",
                            "--set", "filter_size_scale=0.25", "--static", "--no-check"], capsys)
        assert rc == 2 and weights.name in text, text
    ann, images = _tiny_coco(tmp_path)
    rc, text = run_cli(["eval", "--model", "retinanet_spinenet49s", "--weights", corrupt, "--ann", ann, "--images",
                        images, "--model-overrides", '{"filter_size_scale": 0.25}', "--device", "cpu"], capsys)
    assert rc == 2 and "corrupt.safetensors" in text


def test_train_bad_inputs_stop_before_training(tmp_path, capsys):
    ann, images = _tiny_coco(tmp_path)
    base = ["train", "--train-ann", ann, "--train-images", images, "--val-ann", ann, "--val-images", images,
            "--model", "retinanet_spinenet49s", "--set", 'model_overrides={"filter_size_scale": 0.25}',
            "--max-steps", "1", "--no-progress", "--num-threads", "1", "--batch-size", "2", "--image-size", "128"]
    # A folder given as the backbone spec.
    rc, text = run_cli(base + ["--spec", tmp_path, "--output-dir", tmp_path / "r1"], capsys)
    assert rc == 2 and "is a folder" in text and str(tmp_path) in text
    # A backbone name given as the detector.
    rc, text = run_cli(base + ["--model", "spinenet49s", "--output-dir", tmp_path / "r2"], capsys)
    assert rc == 2 and "'spinenet49s' is a backbone, not a detector" in text
    # A batch of one at 128 px: said before training, with what to do.
    rc, text = run_cli(base + ["--batch-size", "1", "--image-size", "128", "--output-dir", tmp_path / "r3"], capsys)
    assert rc == 2 and "--batch-size 2" in text and "128 px" in text
    # --resume with another model's checkpoint.
    run = tmp_path / "r4"
    run.mkdir()
    torch.save({"model": {"other.weight": torch.zeros(1)}, "step": 1, "epoch": 0, "epoch_step": 1, "extra": {}},
               run / "checkpoint.pt")
    rc, text = run_cli(base + ["--output-dir", run, "--resume"], capsys)
    assert rc == 2 and "checkpoint.pt" in text and "does not fit this model" in text
    # An empty annotation list is refused for training.
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    empty, empty_images = _tiny_coco(empty_dir, annotations=False)
    rc, text = run_cli(["train", "--train-ann", empty, "--train-images", empty_images, "--val-ann", ann,
                        "--val-images", images, "--output-dir", tmp_path / "r5"], capsys)
    assert rc == 2 and "'annotations' list is empty" in text and "ann.json" in text


def test_predict_zero_size_and_non_detector(tmp_path, capsys):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    rc, text = run_cli(["predict", empty, "--model", "spinenet49s", "--out", tmp_path / "o"], capsys)
    assert rc == 2 and "spinenet49s" in text and "not a detector" in text


def test_set_is_typed_the_same_everywhere():
    from torchspine.cli.common import parse_set

    got = parse_set(["a=true", "b=True", "c=0.25", "d=null", "e=swish", "f=[1, 2]", 'g={"x": 1}', "h.i=3"])
    assert got == {"a": True, "b": True, "c": 0.25, "d": None, "e": "swish", "f": [1, 2], "g": {"x": 1}, "h.i": 3}
    with pytest.raises(ValueError, match="set twice"):
        parse_set(["a=1", "a=2"])
    # No command keeps a parser of its own.
    cli = SRC / "torchspine" / "cli"
    for f in cli.glob("*.py"):
        text = f.read_text()
        assert "literal_eval" not in text and "def _parse_set" not in text, f.name


def test_process_output_without_and_with_verbose(tmp_path):
    spec = _spec_file(tmp_path, "bad.json", lambda d: d["norm"].update(momentum="x"))
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torchspine", "draw", str(spec), "--out", str(tmp_path / "x.svg")]
    quiet = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert quiet.returncode == 2 and "Traceback" not in quiet.stderr
    lines = [line for line in quiet.stderr.splitlines() if "error" in line]
    assert len(lines) == 1 and "bad.json" in lines[0] and "momentum" in lines[0]
    loud = subprocess.run(cmd + ["-v"], capture_output=True, text=True, env=env, timeout=120)
    assert loud.returncode == 2 and "Traceback" in loud.stderr and "bad.json" in loud.stderr


def test_predict_skips_a_zero_size_image_by_name(tmp_path, capsys):
    good = tmp_path / "good.png"
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(good)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    rc, text = run_cli(["predict", good, empty, "--model", "retinanet_spinenet49s", "--out", tmp_path / "o",
                        "--set", "filter_size_scale=0.25", "--image-size", "128", "--no-optimize"], capsys)
    assert rc == 1 and "empty.png" in text and "empty file" in text
    assert (tmp_path / "o" / "good.png").is_file()


@pytest.mark.parametrize("argv, words", [
    (["demo", "--out", "{blocker}/d", "--no-profile"], ["file.txt", "not a directory"]),
    (["classify", "train", "--data", "missing"], ["missing/train"]),
    (["classify", "eval", "--data", "missing", "--weights", "{corrupt}"], ["c.safetensors", "not a readable"]),
    (["convert", "missing_ckpt", "--model", "spinenet49", "--out", "o.safetensors"], ["missing_ckpt", "not found"]),
    (["search", "--data", "x.json", "--local", "--trials", "1", "--out", "s"], ["--data and --images"]),
    (["eval", "nothere"], ["nothere", "not found"]),
])
def test_the_other_commands(tmp_path, capsys, monkeypatch, argv, words):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "c.safetensors").write_bytes(b"\x00\x00")
    argv = [a.format(blocker=tmp_path / "file.txt", corrupt=tmp_path / "c.safetensors") for a in argv]
    rc, text = run_cli(argv, capsys)
    assert rc == 2
    for w in words:
        assert w in text, (w, text)


def test_run_folder_without_weights_is_named(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": "retinanet_spinenet49s"}))
    rc, text = run_cli(["eval", run], capsys)
    assert rc == 2 and "model.safetensors" in text and "finished training output folder" in text
    rc, text = run_cli(["eval", run, "--device", "tpu"], capsys)
    assert rc == 2 and "'tpu'" in text
