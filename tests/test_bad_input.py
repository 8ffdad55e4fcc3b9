"""Bad input never corrupts silently: image modes, truncated files, empty annotation lists,
boxes outside the image, corrupt images in a batch, full disks and read-only folders.

Every file is made here; expected pixel values are computed by hand from the conversion
rules documented in torchspine.data.images (and docs/bad_data.md).
"""

from __future__ import annotations

import errno
import json
import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from torchspine.data.checks import check_batch_size, check_coco
from torchspine.data.coco import CocoDetection, collate_detection, load_coco
from torchspine.data.images import read_image, read_image_array
from torchspine.utils import atomic_write, atomic_write_text, remove_stale_temporaries


def write_png16(path: Path, arr: np.ndarray) -> None:
    """A 16-bit PNG written byte by byte (Pillow cannot write 16-bit RGB): gray or RGB."""
    h, w = arr.shape[:2]
    color_type = 0 if arr.ndim == 2 else 2
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


# 16-bit samples and their 8-bit values by hand: the high byte, v >> 8 (v // 256).
V16 = np.array([[0, 257, 1000], [40000, 65535, 12345]], dtype=np.uint16)
V8 = np.array([[0, 1, 3], [156, 255, 48]], dtype=np.uint8)  # 1000//256=3, 40000//256=156, 12345//256=48


# ----------------------------------------------------------------------- image modes
def test_16bit_gray_png_is_scaled_not_clipped_to_white(tmp_path):
    path = tmp_path / "g16.png"
    write_png16(path, V16)
    assert Image.open(path).mode == "I;16"
    # The old reader (im.convert("RGB")) clipped every value above 255 to white:
    assert np.asarray(Image.open(path).convert("RGB"))[1, 0, 0] == 255  # 40000 -> 255 (the bug)
    img = read_image(path)
    assert img.dtype == torch.uint8 and img.shape == (3, 2, 3)
    for c in range(3):
        assert img[c].numpy().tolist() == V8.tolist()


def test_16bit_rgb_png(tmp_path):
    path = tmp_path / "rgb16.png"
    rgb = np.stack([V16, 65535 - V16, V16 // 2], axis=-1)
    write_png16(path, rgb)
    arr = read_image_array(path)
    assert arr[..., 0].tolist() == V8.tolist()
    # 65535 - v: [65535, 65278, 64535], [25535, 0, 53190] -> >> 8: [255, 254, 252], [99, 0, 207]
    assert arr[..., 1].tolist() == [[255, 254, 252], [99, 0, 207]]
    # v // 2: [0, 128, 500], [20000, 32767, 6172] -> >> 8: [0, 0, 1], [78, 127, 24]
    assert arr[..., 2].tolist() == [[0, 0, 1], [78, 127, 24]]


def test_16bit_pgm_and_32bit_integer_and_float(tmp_path):
    pgm = tmp_path / "p16.pgm"
    pgm.write_bytes(b"P5\n3 1\n65535\n" + np.array([0, 1000, 65535], dtype=">u2").tobytes())
    assert read_image_array(pgm)[0, :, 0].tolist() == [0, 3, 255]  # Pillow mode "I", 16-bit range
    i8 = tmp_path / "i8.tif"
    Image.fromarray(np.array([[0, 100, 255]], dtype=np.int32)).save(i8)
    assert read_image_array(i8)[0, :, 1].tolist() == [0, 100, 255]  # 8-bit range kept
    i32 = tmp_path / "i32.tif"
    Image.fromarray(np.array([[-100, 0, 300]], dtype=np.int32)).save(i32)
    # stretched min..max: (v + 100) * 255 / 400 -> 0, 63.75 -> 64, 255
    assert read_image_array(i32)[0, :, 2].tolist() == [0, 64, 255]
    f = tmp_path / "f.tif"
    Image.fromarray(np.array([[0.0, 0.25, 1.0, 0.2]], dtype=np.float32)).save(f)
    # 0..1 floats times 255: 0, 63.75 -> 64, 255, 51
    assert read_image_array(f)[0, :, 0].tolist() == [0, 64, 255, 51]
    f2 = tmp_path / "f2.tif"
    Image.fromarray(np.array([[10.0, 20.0, 50.0]], dtype=np.float32)).save(f2)
    # outside 0..1: stretched min..max: (v - 10) * 255 / 40 -> 0, 63.75 -> 64, 255
    assert read_image_array(f2)[0, :, 0].tolist() == [0, 64, 255]


def test_palette_and_cmyk(tmp_path):
    pal = Image.new("P", (2, 1))
    pal.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    pal.putpixel((0, 0), 0)
    pal.putpixel((1, 0), 1)
    pal.save(tmp_path / "p.png")
    assert read_image_array(tmp_path / "p.png")[0].tolist() == [[10, 20, 30], [200, 100, 50]]
    Image.new("CMYK", (1, 1), (100, 0, 0, 50)).save(tmp_path / "c.tif")
    # R = (255 - C)(255 - K)/255 = 155 * 205 / 255 = 124.6 -> 125; G = B = 255 * 205 / 255 = 205
    assert read_image_array(tmp_path / "c.tif")[0, 0].tolist() == [125, 205, 205]


def test_exif_rotated_jpeg_comes_out_upright(tmp_path):
    raw = np.zeros((8, 16, 3), np.uint8)
    raw[:, :8] = (255, 0, 0)  # left half red
    raw[:, 8:] = (0, 0, 255)  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation 6: the viewer rotates 90 degrees clockwise
    Image.fromarray(raw).save(tmp_path / "r.jpg", exif=exif, quality=95)
    arr = read_image_array(tmp_path / "r.jpg")
    assert arr.shape == (16, 8, 3)  # width and height swapped, as displayed
    # Rotated clockwise, the left (red) half is now on top and the right (blue) at the bottom.
    assert arr[3, 4, 0] > 200 and arr[3, 4, 2] < 50
    assert arr[12, 4, 2] > 200 and arr[12, 4, 0] < 50


@pytest.mark.parametrize("make, words", [
    (lambda p: p.write_bytes(b""), ["empty file"]),
    (lambda p: p.write_text("hello, I am text"), ["cannot be decoded"]),
    (lambda p: p.mkdir(), ["is a folder"]),
])
def test_unreadable_files_are_named(tmp_path, make, words):
    path = tmp_path / "x.png"
    make(path)
    with pytest.raises(ValueError) as err:
        read_image(path)
    assert str(path) in str(err.value)
    for w in words:
        assert w in str(err.value)
    with pytest.raises(FileNotFoundError, match="gone.png"):
        read_image(tmp_path / "gone.png")


def _truncated_jpeg(path: Path) -> None:
    buf = path.with_suffix(".full.jpg")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, quality=90)
    data = buf.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    buf.unlink()


def test_truncated_jpeg_is_rejected_by_name(tmp_path):
    path = tmp_path / "t.jpg"
    _truncated_jpeg(path)
    with pytest.raises(ValueError, match=r"t\.jpg: cannot be decoded.*truncated"):
        read_image(path)


# ------------------------------------------------------------------ annotation files
def _dataset(tmp_path: Path, names=("a.png", "b.png"), size=(40, 30)) -> dict:
    for n in names:
        Image.fromarray(np.full((size[1], size[0], 3), 128, np.uint8)).save(tmp_path / n)
    return {
        "images": [{"id": i + 1, "file_name": n, "width": size[0], "height": size[1]} for i, n in enumerate(names)],
        "annotations": [{"id": 10 + i, "image_id": i + 1, "category_id": 1, "bbox": [1, 2, 10, 10], "area": 100,
                         "iscrowd": 0} for i in range(len(names))],
        "categories": [{"id": 1, "name": "x"}],
    }


def test_data_check_decodes_every_image_and_names_each_bad_one(tmp_path):
    data = _dataset(tmp_path, ("a.png", "b.jpg", "c.png"))
    _truncated_jpeg(tmp_path / "b.jpg")
    (tmp_path / "c.png").write_text("not an image")
    report = check_coco(data, image_dir=tmp_path, decode=True)
    assert report.images_decoded == 3
    bad = {(p.kind, p.id) for p in report.problems}
    assert bad == {("corrupt_image", 2), ("corrupt_image", 3)}
    text = report.summary()
    assert "b.jpg" in text and "c.png" in text
    # Without decoding (the training start-up check), both pass as the old check did.
    assert check_coco(data, image_dir=tmp_path).problems == []


def test_empty_annotations_refused_for_training_warned_for_evaluation(tmp_path, caplog):
    data = _dataset(tmp_path)
    data["annotations"] = []
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"ann\.json: the 'annotations' list is empty"):
        CocoDetection(ann, tmp_path, require_annotations=True)
    with caplog.at_level(logging.WARNING):
        ds = CocoDetection(ann, tmp_path)
    assert len(ds) == 2 and "'annotations' list is empty" in caplog.text


def test_boxes_outside_are_clipped_or_dropped_and_zero_area_counted(tmp_path, caplog):
    data = _dataset(tmp_path, ("a.png",))  # one 40 x 30 image
    data["annotations"] = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [30, 20, 20, 20]},  # partly outside
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [-5, -5, 10, 10]},  # partly outside (top left)
        {"id": 3, "image_id": 1, "category_id": 1, "bbox": [50, 5, 10, 10]},  # entirely outside (x >= 40)
        {"id": 4, "image_id": 1, "category_id": 1, "bbox": [5, 5, 0, 10]},  # zero width
        {"id": 5, "image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 10]},  # fine
    ]
    report = check_coco(data)
    assert report.problems == []
    assert report.note_counts() == {"box_clipped": 2, "box_outside_image": 1, "zero_area_box": 1}
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING):
        ds = CocoDetection(ann, tmp_path)
    assert "annotation id 3" in caplog.text and "entirely outside" in caplog.text
    assert "annotation id 4" in caplog.text and "zero area" in caplog.text
    assert "'zero_area_box': 1" in caplog.text and "'box_clipped': 2" in caplog.text
    _, target = ds[0]
    # [30, 20, 20, 20] -> x 30..40, y 20..30; [-5, -5, 10, 10] -> 0..5; [5, 5, 10, 10] kept
    assert sorted(target["boxes"].tolist()) == [[0.0, 0.0, 5.0, 5.0], [5.0, 5.0, 15.0, 15.0],
                                                [30.0, 20.0, 40.0, 30.0]]
    assert sorted(a["id"] for a in ds.coco.dataset["annotations"]) == [1, 2, 5]


def test_eval_rejection_message_does_not_offer_a_flag_eval_lacks(tmp_path):
    data = _dataset(tmp_path)
    data["annotations"][0]["category_id"] = 7
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    with pytest.raises(ValueError) as err:
        load_coco(ann)  # evaluation's call: no skip flag
    assert "--skip-bad-annotations" not in str(err.value) and "fix the file" in str(err.value)
    with pytest.raises(ValueError, match="pass --skip-bad-annotations"):
        load_coco(ann, skip_flag="--skip-bad-annotations")  # training's call


# ------------------------------------------------------------ corrupt images in a batch
def test_corrupt_image_is_replaced_to_keep_the_batch_full_and_counted_once(tmp_path, caplog):
    data = _dataset(tmp_path, ("a.png", "b.png", "c.png"))
    (tmp_path / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    ds = CocoDetection(ann, tmp_path, replace_corrupt=True)
    with caplog.at_level(logging.WARNING):
        batches = [collate_detection([ds[0], ds[1]]) for _ in range(3)]  # the bad image loaded 3 times
    for batch in batches:
        images, targets = batch
        assert len(images) == 2  # still a batch of two: BatchNorm keeps working
        assert [t["image_id"] for t in targets] == [1, 3]  # image 2 replaced by the next readable one, 3
        assert batch.skipped == [2]
    assert ds.num_corrupt == 1  # images, not loads (the old counter said 3)
    assert caplog.text.count("skipping corrupt image id 2") == 1
    # Evaluation keeps the old behaviour: the sample is dropped, never replaced by another image.
    ev = CocoDetection(ann, tmp_path)
    assert ev[1] is None and len(collate_detection([ev[0], ev[1]])[0]) == 1


def test_corrupt_images_through_a_dataloader_with_workers(tmp_path):
    data = _dataset(tmp_path, ("a.png", "b.png", "c.png", "d.png"))
    (tmp_path / "c.png").write_text("text")
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    ds = CocoDetection(ann, tmp_path, replace_corrupt=True)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=[[0, 1], [2, 3], [2, 0]], num_workers=1,
                                         collate_fn=collate_detection)
    seen = set()
    for batch in loader:
        assert len(batch[0]) == 2
        seen.update(batch.skipped)
    assert seen == {3}  # image id 3 (c.png), counted in the main process


def test_batch_of_one_at_small_sizes_is_refused_before_training():
    with pytest.raises(ValueError) as err:
        check_batch_size(1, 128)  # P7 of a 128 px image is 1x1: one value per channel
    msg = str(err.value)
    assert "1x1 feature map at level 7" in msg and "--batch-size 2" in msg and "--image-size 256" in msg
    check_batch_size(2, 128)  # two values per channel: BatchNorm trains
    check_batch_size(1, 256)  # 2x2 at P7
    with pytest.raises(ValueError):
        check_batch_size(1, 64, max_level=6)


# ------------------------------------------------------------- full disk, read-only folder
def test_full_disk_says_no_space_left_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "checkpoint.pt"
    target.write_text("previous")

    def full_disk(tmp: str) -> None:
        Path(tmp).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as err:
        atomic_write(target, full_disk)
    assert err.value.errno == errno.ENOSPC
    assert "no space left on device while writing" in str(err.value) and str(target) in str(err.value)
    assert target.read_text() == "previous"
    assert list(tmp_path.glob(".checkpoint.pt.*.tmp")) == []


def test_torch_save_on_a_full_disk_is_reported_as_such(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    target = tmp_path / "checkpoint.pt"

    def torch_save_full(tmp: str) -> None:  # what torch.save raises when the disk fills up
        raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed; unexpected pos 128 vs 64")

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9, 0))
    with pytest.raises(OSError, match="no space left on device while writing .*checkpoint.pt"):
        atomic_write(target, torch_save_full)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**12, 0, 10**12))
    with pytest.raises(RuntimeError, match="unexpected pos"):  # plenty of space: the real error, unchanged
        atomic_write(target, torch_save_full)


def test_read_only_folder_names_the_file(tmp_path, monkeypatch):
    import tempfile

    def denied(*a, **k):  # tests run as root, where chmod cannot make a folder read-only
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    with pytest.raises(OSError) as err:
        atomic_write_text(tmp_path / "out" / "metrics.json", "{}")
    assert err.value.errno == errno.EACCES
    assert "cannot write" in str(err.value) and "metrics.json" in str(err.value) and "writable" in str(err.value)


def test_stale_temporaries_of_killed_writes_are_removed(tmp_path):
    target = tmp_path / "checkpoint.pt"
    stale = [tmp_path / ".checkpoint.pt.abc123.tmp", tmp_path / ".checkpoint.pt.x9.tmp"]
    for s in stale:
        s.write_bytes(b"half a checkpoint")
    other = tmp_path / ".model.safetensors.q.tmp"
    other.write_bytes(b"x")
    assert sorted(remove_stale_temporaries(target)) == sorted(stale)
    assert not any(s.exists() for s in stale) and other.exists()


def test_evaluation_without_ground_truth_reports_minus_one_not_a_crash(tmp_path):
    from torchspine.engine.evaluate import coco_metrics

    data = _dataset(tmp_path, ("a.png",))
    data["annotations"] = []
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    ds = CocoDetection(ann, tmp_path)  # accepted for evaluation (with a warning)
    m = coco_metrics(ds.coco, [{"image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "score": 0.9}], image_ids=[1])
    assert m["AP"] == -1.0  # pycocotools' convention: no ground truth in any size range
