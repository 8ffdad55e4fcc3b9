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
