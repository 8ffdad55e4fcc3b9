"""Importers (VOC / YOLO / CSV -> COCO) and `torchspine data import`, on files the tests write.

Expected COCO boxes are worked out by hand from each format's convention (VOC devkit: 1-based
inclusive corners; YOLO: centre and size normalised by the image size)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from torchspine.cli import main
from torchspine.data.importers import import_csv, import_voc, import_yolo


def _images(folder: Path, sizes: dict[str, tuple[int, int]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, (w, h) in sizes.items():
        Image.new("RGB", (w, h), (90, 120, 30)).save(folder / name)
    return folder


def _voc(path: Path, filename: str, size: tuple[int, int] | None, objects: list[tuple]) -> None:
    objs = "".join(f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{a}</xmin><ymin>{b}</ymin>"
                   f"<xmax>{c}</xmax><ymax>{e}</ymax></bndbox></object>" for n, a, b, c, e, d in objects)
    sz = f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>" if size else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<annotation><filename>{filename}</filename>{sz}{objs}</annotation>")


def test_voc_import_boxes_names_and_stable_ids(tmp_path):
    images = _images(tmp_path / "img", {"b.jpg": (100, 80), "a.jpg": (64, 64)})
    # VOC corners 11..30 (inclusive, 1-based) -> x 10, width 20 (hand-computed)
    _voc(tmp_path / "xml" / "b.xml", "b.jpg", (100, 80), [("tree", 11, 21, 30, 60, 0), ("car", 1, 1, 100, 80, 1)])
    _voc(tmp_path / "xml" / "a.xml", "a.jpg", None, [("tree", 5, 5, 14, 24, 0)])  # size read from the image
    r = import_voc(tmp_path / "xml", images)
    assert r.ok, r.report.summary()
    c = r.coco
    assert c["categories"] == [{"id": 1, "name": "car"}, {"id": 2, "name": "tree"}]  # sorted names
    assert [(i["id"], i["file_name"], i["width"], i["height"]) for i in c["images"]] == \
        [(1, "a.jpg", 64, 64), (2, "b.jpg", 100, 80)]
    anns = [(a["image_id"], a["category_id"], a["bbox"]) for a in c["annotations"]]
    assert anns == [(1, 2, [4.0, 4.0, 10.0, 20.0]), (2, 2, [10.0, 20.0, 20.0, 40.0]), (2, 1, [0.0, 0.0, 100.0, 80.0])]
    assert c["annotations"][2]["difficult"] == 1
    assert [a["id"] for a in c["annotations"]] == [1, 2, 3]
    # the same files give the same JSON; a class list fixes the id order
    assert import_voc(tmp_path / "xml", images).coco == c
    r2 = import_voc(tmp_path / "xml", images, classes=["tree", "car"])
    assert r2.coco["categories"] == [{"id": 1, "name": "tree"}, {"id": 2, "name": "car"}]


def test_voc_errors_name_file_and_field(tmp_path):
    images = _images(tmp_path / "img", {"a.jpg": (64, 64)})
    _voc(tmp_path / "xml" / "a.xml", "a.jpg", (64, 64), [("tree", "x", 1, 10, 10, 0)])
    with pytest.raises(ValueError, match=r"a\.xml, object 1: field 'bndbox/xmin' is not a number: 'x'"):
        import_voc(tmp_path / "xml", images)
    _voc(tmp_path / "xml" / "a.xml", "a.jpg", (64, 64), [("tree", 1, 1, 10, 10, 0)])
    with pytest.raises(ValueError, match=r"class name\(s\) \['tree'\] are not in the class list \['car'\]"):
        import_voc(tmp_path / "xml", images, classes=["car"])


def test_voc_box_outside_image_is_noted_like_data_check(tmp_path):
    images = _images(tmp_path / "img", {"a.jpg": (64, 64)})
    _voc(tmp_path / "xml" / "a.xml", "a.jpg", (64, 64), [("tree", 50, 50, 90, 60, 0)])
    r = import_voc(tmp_path / "xml", images)
    assert r.ok and [p.kind for p in r.report.notes] == ["box_clipped"]  # data check: clipped at training


def test_yolo_import(tmp_path):
    images = _images(tmp_path / "img", {"x.png": (200, 100), "empty.png": (50, 50)})
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "classes.txt").write_text("cell\nnucleus\n")
    # centre (0.5, 0.5), size (0.2, 0.4) of 200x100 -> x 80, y 30, w 40, h 40 (hand-computed)
    (labels / "x.txt").write_text("1 0.5 0.5 0.2 0.4\n0 0.1 0.1 0.2 0.2\n")
    r = import_yolo(labels, images)
    assert r.ok, r.report.summary()
    assert r.coco["categories"] == [{"id": 1, "name": "cell"}, {"id": 2, "name": "nucleus"}]
    assert [i["file_name"] for i in r.coco["images"]] == ["empty.png", "x.png"]
    got = [(a["image_id"], a["category_id"], a["bbox"]) for a in r.coco["annotations"]]
    assert got == [(2, 2, [80.0, 30.0, 40.0, 40.0]), (2, 1, [0.0, 0.0, 40.0, 20.0])]
    (labels / "x.txt").write_text("7 0.5 0.5 0.2 0.4\n")
    with pytest.raises(ValueError, match=r"x\.txt, line 1: class '7' is not an index into the 2 classes"):
        import_yolo(labels, images)
    (labels / "classes.txt").unlink()
    with pytest.raises(FileNotFoundError, match="classes.txt not found"):
        import_yolo(labels, images)


def test_csv_import_with_header_and_keras_retinanet_layout(tmp_path):
    images = _images(tmp_path / "img", {"t1.png": (120, 90), "t2.png": (60, 60)})
    (tmp_path / "a.csv").write_text("filename,width,height,class,xmin,ymin,xmax,ymax\n"
                                    "t1.png,120,90,tree,10,20,40,50\nt1.png,120,90,tree,0,0,5,5\n")
    r = import_csv(tmp_path / "a.csv", images)
    assert r.ok
    assert [a["bbox"] for a in r.coco["annotations"]] == [[10.0, 20.0, 30.0, 30.0], [0.0, 0.0, 5.0, 5.0]]
    assert r.coco["categories"] == [{"id": 1, "name": "tree"}]
    (tmp_path / "b.csv").write_text("t1.png,10,20,40,50,tree\nt2.png,,,,,\n")
    r = import_csv(tmp_path / "b.csv", images)
    assert [i["file_name"] for i in r.coco["images"]] == ["t1.png", "t2.png"]  # t2: an image without objects
    assert [a["bbox"] for a in r.coco["annotations"]] == [[10.0, 20.0, 30.0, 30.0]]
    (tmp_path / "c.csv").write_text("image,left,top,label\nt1.png,1,2,tree\n")
    with pytest.raises(ValueError, match=r"c\.csv: header .* lacks column\(s\) for \['x2', 'y2'\]"):
        import_csv(tmp_path / "c.csv", images)
    (tmp_path / "d.csv").write_text("t1.png,10,20,40,50,tree\nnope.png,1,1,2,2,tree\n")
    with pytest.raises(FileNotFoundError, match="nope.png"):
        import_csv(tmp_path / "d.csv", images)


def test_data_import_command_writes_checked_coco(tmp_path, capsys):
    images = _images(tmp_path / "img", {"t1.png": (120, 90)})
    (tmp_path / "a.csv").write_text("path,x1,y1,x2,y2,class\nt1.png,10,20,40,50,tree\n")
    out = tmp_path / "ann.json"
    rc = main(["data", "import", "--format", "csv", "--ann", str(tmp_path / "a.csv"), "--images", str(images),
               "--out", str(out)])
    assert rc == 0
    assert "1=tree" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["annotations"][0]["bbox"] == [10.0, 20.0, 30.0, 30.0]
    assert main(["data", "check", str(out), "--images", str(images)]) == 0
    # a truncated image (its header still gives the size): reported by name, nothing written, exit 1
    data = (images / "t1.png").read_bytes()
    (images / "t2.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "b.csv").write_text("path,x1,y1,x2,y2,class\nt1.png,10,20,40,50,tree\nt2.png,1,1,5,5,tree\n")
    rc = main(["data", "import", "--format", "csv", "--ann", str(tmp_path / "b.csv"), "--images", str(images),
               "--out", str(tmp_path / "bad.json")])
    out = capsys.readouterr().out
    assert rc == 1 and not (tmp_path / "bad.json").exists()
    assert "corrupt_image" in out and "t2.png" in out


def test_voc_and_csv_of_the_walkthrough_dataset_agree(tmp_path):
    """The walk-through's dataset script writes the same boxes as VOC (1-based inclusive corners) and
    CSV (pixel edges); both importers must give identical COCO boxes."""
    pytest.importorskip("skimage")
    import importlib.util

    script = Path(__file__).parents[1] / "scripts" / "make_hubble_dataset.py"
    spec = importlib.util.spec_from_file_location("mk", script)
    mk = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mk)
    counts = mk.make(tmp_path)
    for split in ("train", "val"):
        voc = import_voc(tmp_path / split / "voc", tmp_path / split)
        csv_ = import_csv(tmp_path / split / "boxes.csv", tmp_path / split)
        assert voc.ok and csv_.ok
        assert len(voc.coco["annotations"]) == counts[split] > 50
        assert [a["bbox"] for a in voc.coco["annotations"]] == [a["bbox"] for a in csv_.coco["annotations"]]
