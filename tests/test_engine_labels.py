"""Category ids as users have them (0-based, sparse, in any order) train, evaluate and
predict every class: contiguous labels 1..K for training, the file's ids back out."""

from __future__ import annotations

import json

import pytest
import torch

from torchspine.data.coco import CocoDetection
from torchspine.data.synth import SynthConfig, generate_synth
from torchspine.engine.config import TrainConfig
from torchspine.engine.evaluate import evaluate_coco, to_coco_results
from torchspine.engine.trainer import train
from torchspine.models.saved import load_model

# The synthetic set's ids 1, 2, 3 (circle, square, triangle) renamed to 0, 7 and 5.
RENAME = {1: 0, 2: 7, 3: 5}


def _renamed(data: dict, tmp_path) -> dict:
    out = dict(data)
    for split in ("train_ann", "val_ann"):
        d = json.loads(open(data[split]).read())
        d["categories"] = [{**c, "id": RENAME[c["id"]]} for c in reversed(d["categories"])]  # any order
        for a in d["annotations"]:
            a["category_id"] = RENAME[a["category_id"]]
        path = tmp_path / f"{split}.json"
        path.write_text(json.dumps(d))
        out[split] = path
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ids")
    return _renamed(generate_synth(root, SynthConfig(num_train=8, num_val=4, image_size=64, seed=2)), root)


def test_any_category_ids_become_contiguous_labels(data):
    ds = CocoDetection(data["train_ann"], data["train_images"])
    assert ds.category_ids == [0, 5, 7] and ds.num_classes == 4
    assert ds.label_names == ["circle", "triangle", "square"]
    labels = torch.cat([ds[i][1]["labels"] for i in range(len(ds))])
    # Label 0 is background for RetinaNet's post-processing and torchvision's Mask R-CNN: the
    # raw id 0 would have made every circle a background box.
    assert set(labels.tolist()) == {1, 2, 3}
    assert [ds.category_id(lbl) for lbl in (1, 2, 3)] == [0, 5, 7]


class _Oracle(torch.nn.Module):
    """Answers each validation image with its own ground truth, in training labels."""

    def __init__(self, ds: CocoDetection) -> None:
        super().__init__()
        self.by_size = {}
        for i in range(len(ds)):
            image, target = ds[i]
            self.by_size[float(image.sum())] = target

    def forward(self, images):  # noqa: ANN001, ANN201
        out = []
        for im in images:
            t = self.by_size[float(im.sum())]
            out.append({"boxes": t["boxes"], "labels": t["labels"], "scores": torch.ones(len(t["labels"]))})
        return out


def test_evaluation_maps_labels_back_to_the_file_ids(data):
    ds = CocoDetection(data["val_ann"], data["val_images"])
    metrics = evaluate_coco(_Oracle(ds), ds)
    assert metrics["AP"] == pytest.approx(1.0)  # every class found, id 0 included
    det = {"boxes": torch.tensor([[1.0, 2.0, 5.0, 6.0]]), "labels": torch.tensor([1]), "scores": torch.tensor([0.9])}
    assert to_coco_results(det, 3, category_ids=ds.category_ids)[0]["category_id"] == 0


def test_a_run_saves_its_label_mapping_and_reloads_without_dropblock(data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".checkpoint.pt.x1y2.tmp").write_bytes(b"left by a killed write")
    cfg = TrainConfig(model="retinanet_spinenet49s", image_size=64,
                      model_overrides={"filter_size_scale": 0.125, "endpoints_num_filters": 16,
                                       "head_num_filters": 16, "head_num_convs": 1},
                      train_ann=str(data["train_ann"]), train_images=str(data["train_images"]),
                      val_ann=str(data["val_ann"]), val_images=str(data["val_images"]), batch_size=4, max_steps=2,
                      lr=0.01, lr_reference_batch=4, warmup_steps=0, device="cpu", dropblock=True,
                      stochastic_depth_rate=0.2, tensorboard=True, log_interval=1, progress=False,
                      output_dir=str(out))
    losses = []
    train(cfg, on_step=lambda step, m: losses.append(m["loss"]))
    assert not list(out.glob(".checkpoint.pt.*.tmp"))  # orphans cleaned on start
    model = load_model(out)  # built without DropBlock: the trained state dict fits exactly
    info = model.torchspine_info
    assert info["category_ids"] == [0, 5, 7] and info["label_names"] == ["circle", "triangle", "square"]
    assert info["num_classes"] == 4 and info["task"] == "detection" and info["image_size"] == 64
    assert "mean" in info["preprocessing"] and "std" in info["preprocessing"]

    # TensorBoard scalars, read back with tensorboard's own reader.
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == [1, 2]
    assert [e.value for e in loss] == pytest.approx(losses, rel=1e-6)
    assert [e.step for e in events.Scalars("val/AP")] == [2]


# ----------------------------------------------------------------------------- the one label map
def test_label_map_conventions_round_trip_and_refuse_bad_info():
    from torchspine.data.labels import BY_CATEGORY_ID, CONTIGUOUS, LabelMap

    cats = [{"id": 7, "name": "square"}, {"id": 0, "name": "circle"}, {"id": 5, "name": "triangle"}]
    m = LabelMap.from_categories(cats)
    # labels 1..3 in ascending id order (0, 5, 7), as the module docstring of data/coco.py says
    assert (m.category_ids, m.names, m.num_classes) == ((0, 5, 7), ("circle", "triangle", "square"), 4)
    assert [m.label(c) for c in (0, 5, 7)] == [1, 2, 3] and m.name(3) == "square" and m.name(0) == "__background__"
    assert LabelMap.from_info({"num_classes": 4, **m.to_info()}) == m
    coco = LabelMap.by_category_id(["__background__", "person", "bicycle", "N/A", "car"])
    assert coco.convention == BY_CATEGORY_ID and [coco.category_id(k) for k in (1, 2, 4)] == [1, 2, 4]
    assert coco.to_info()["label_names"][4] == "car"  # index = label = category id, as the hub writes it
    assert LabelMap.from_info({"num_classes": 5, **coco.to_info()}) == coco
    # files written before the convention was recorded: the layout tells it
    assert LabelMap.from_info({"num_classes": 4, "category_ids": [0, 5, 7], "label_names": list(m.names)}) == m
    old_hub = {"num_classes": 5, "category_ids": list(range(5)), "label_names": coco.names_by_label}
    assert LabelMap.from_info(old_hub) == coco
    assert LabelMap.from_info({"num_classes": 3}).category_ids == (1, 2)  # no map: labels were the ids
    assert LabelMap.from_info({"task": "detector"}) is None
    with pytest.raises(ValueError, match=r"m.safetensors: category_ids has 2 entries for num_classes 4"):
        LabelMap.from_info({"num_classes": 4, "category_ids": [3, 4], "label_convention": CONTIGUOUS},
                           source="m.safetensors")
    with pytest.raises(ValueError, match=r"label_convention must be one of .* got 'ids'"):
        LabelMap.from_info({"num_classes": 4, "category_ids": [3, 4, 5], "label_convention": "ids"})
    with pytest.raises(ValueError, match=r"category ids \[5\] appear more than once"):
        LabelMap((5, 5), ("a", "b"))
    with pytest.raises(ValueError, match=r"label 4 is outside the model's labels 1..3"):
        m.category_id(4)
    with pytest.raises(ValueError, match=r"category id 9 is not among the model's category ids"):
        m.label(9)


class _ByIdOracle(torch.nn.Module):
    """An official-style detector: answers each image with its ground truth, label = category id."""

    def __init__(self, ds: CocoDetection) -> None:
        super().__init__()
        self.by_sum = {float(ds[i][0].sum()): ds[i][1] for i in range(len(ds))}

    def forward(self, images):  # noqa: ANN001, ANN201
        return [{"boxes": (t := self.by_sum[float(im.sum())])["boxes"], "labels": t["labels"],
                 "scores": torch.ones(len(t["labels"]))} for im in images]


@pytest.mark.parametrize("layout", ["recorded", "before_the_convention"])
def test_eval_of_a_converted_detector_scores_labels_as_coco_ids(tmp_path, monkeypatch, capsys, layout):
    """A converted official detector (91 classes, label = COCO category id) evaluated by
    ``torchspine eval``. Before the label map recorded its convention, eval read the catalogue's
    ``category_ids`` (0..90) as contiguous: file id c became label c + 1 and predicted label l was
    written as id l - 1, so a detector that is always right scored AP ~0."""
    from torchspine.cli import main
    from torchspine.data.labels import LabelMap
    from torchspine.engine import runs
    from torchspine.models.saved import save_model
    from torchspine.weights import coco_label_names

    synth = generate_synth(tmp_path / "d", SynthConfig(num_train=1, num_val=4, image_size=64, seed=5))  # ids 1, 2, 3
    coco = LabelMap.by_category_id(coco_label_names())
    info = {"task": "detector", "num_classes": 91, **coco.to_info()}
    if layout == "before_the_convention":  # what the weights cache holds from earlier versions
        info.pop("label_convention")
    path = save_model(torch.nn.Linear(1, 1), tmp_path / "m.safetensors", name="retinanet_spinenet49s",
                      overrides={}, info=info)
    oracle = _ByIdOracle(CocoDetection(synth["val_ann"], synth["val_images"], labels=coco))
    monkeypatch.setattr(runs, "load_trained", lambda p, **kw: runs.TrainedModel(
        model=oracle, name="retinanet_spinenet49s", info=info, path=path))
    out = tmp_path / "eval.json"
    assert main(["eval", "--weights", str(path), "--ann", str(synth["val_ann"]), "--images",
                 str(synth["val_images"]), "--device", "cpu", "--json", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["AP"] == pytest.approx(1.0)  # every box found with its own category id
    assert "was it trained on this dataset?" in capsys.readouterr().err  # ids 1..3 are person, bicycle, car


def test_a_converted_detector_records_that_its_labels_are_the_category_ids():
    """``torchspine convert`` output: the official detectors predict the COCO id itself (91
    outputs, tensorflow/tpu configs/maskrcnn_config.py frcnn_head num_classes 91 "including one
    background class whose index is 0"); the file now says so instead of leaving it to a guess."""
    from torchspine.data.labels import BY_CATEGORY_ID, LabelMap
    from torchspine.interop.convert import ConversionResult

    info = ConversionResult({}, "retinanet_spinenet49s", {}, "tpu", "ckpt", {"num_classes": 91}).info()
    assert info["label_convention"] == BY_CATEGORY_ID
    labels = LabelMap.from_info(info)
    assert labels.num_classes == 91 and [labels.category_id(k) for k in (1, 90)] == [1, 90]
    assert "label_convention" not in ConversionResult({}, "spinenet49s", {}, "tpu", "ckpt", {}).info()
