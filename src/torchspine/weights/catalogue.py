"""The catalogue of released official SpineNet checkpoints and the settings each one needs.

Sources (each entry names its own):

* tensorflow/tpu ``models/official/detection/MODEL_ZOO.md``: RetinaNet 49S/49/96/143 (350
  epochs, ReLU), the "longer schedule" RetinaNet 49S/49/96/143/190 (swish, stochastic depth
  0.2), SpineNet-MBConv-49 RetinaNet, Mask R-CNN 49/96/143 (ReLU) and 190 (swish), ImageNet
  classifiers 49/96/143 (ReLU) and 49/96/143/190 (swish, stochastic depth, label smoothing);
* tensorflow/tpu ``models/official/detection/projects/self_training/README.md``: the
  self-training RetinaNet 143 and 190 (54.3 AP test-dev, the best published SpineNet result);
* tensorflow/models ``official/vision/MODEL_GARDEN.md``: the TF2 Mobile SpineNet-49 RetinaNet.

Settings come from the yaml each zoo row links (tensorflow/tpu
``models/official/detection/configs/spinenet/*.yaml``): activation, ``init_drop_connect_rate``
(-> ``stochastic_depth_rate``), BN momentum / epsilon (Mask R-CNN: 0.99 / 1e-3; classifiers:
0.9 / 1e-5), head widths (49S: 128; Mask R-CNN-190: 7 x 384 for RPN, box and mask heads),
``num_classes`` (91 for COCO detection, index = COCO category id; 1001 for ImageNet, index 0 a
background class). Two facts are not in the yamls: the released 49S RetinaNet has 256 endpoint
filters, not the 128 of ``SCALING_MAP['49S']`` (github.com/tensorflow/tpu/issues/767, answered by the
paper's first author; the zoo's 11.9M parameters are that layout), and the 350-epoch tables
were trained with ReLU (the MODEL_ZOO.md notes: "Unless noted ... ReLU activation").

Byte sizes and sha256 digests: none of these files could be fetched when the catalogue was
written (no internet on the build machine), so ``size`` and ``sha256`` are ``None``; the
downloader then records the digest of the first download in the cache and checks later copies
against it (see :mod:`torchspine.weights.hub`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["CATALOGUE", "PretrainedWeights", "coco_label_names", "imagenet_label_names"]

TPU_BUCKET = "https://storage.googleapis.com/cloud-tpu-checkpoints/detection"
MG_BUCKET = "https://storage.googleapis.com/tf_model_garden/vision"
ZOO = "tensorflow/tpu models/official/detection/MODEL_ZOO.md"
SELF_TRAINING = "tensorflow/tpu models/official/detection/projects/self_training/README.md"
GARDEN = "tensorflow/models official/vision/MODEL_GARDEN.md"
TPU_CONFIGS = "tensorflow/tpu models/official/detection/configs/spinenet"


@dataclass(frozen=True)
class PretrainedWeights:
    """One released checkpoint, as weights of one registered model.

    Attributes:
        name: ``"<model>.<tag>"`` (timm style), e.g. ``"retinanet_spinenet49.coco"``.
        model: the registered torchspine model these weights fill.
        tag: what ``create_model(model, weights=tag)`` accepts (``coco``, ``coco_relu`` ...).
        url: where the official tarball is (the plain HTTP form of the zoo's link).
        codebase: ``"tpu"`` (tensorflow/tpu, TF1 names) or ``"mg"`` (Model Garden, TF2 objects).
        overrides: the ``create_model`` keywords the checkpoint was trained with.
        task, input_size, num_classes, labels: what the model predicts and at what size;
            ``labels`` is ``"coco91"`` (index = COCO category id) or ``"imagenet1001"``.
        published: the official figures (``AP``, ``mask_AP``, ``top1``, ``params_M`` ...).
        size, sha256: of the tarball when known (``None``: recorded on first download).
        part_of: for a backbone taken from a detector checkpoint, that detector entry's name.
        verified: what this project checked about the entry (see docs/model_zoo.md).
    """

    name: str
    model: str
    tag: str
    url: str
    codebase: str
    overrides: dict[str, Any]
    task: str
    input_size: int
    num_classes: int | None
    labels: str | None
    published: dict[str, Any]
    source: str
    config: str | None = None
    epochs: int | None = None
    size: int | None = None
    sha256: str | None = None
    notes: str = ""
    part_of: str | None = None
    verified: str = ""

    @property
    def archive(self) -> str:
        """The tarball's file name in the cache (unique per URL)."""
        tail = self.url.rstrip("/").rsplit("/", 1)[-1]
        folder = self.url.rstrip("/").rsplit("/", 2)[-2]
        return f"{folder}-{tail}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- label maps
def coco_label_names() -> list[str]:
    """91 names, index = COCO category id (``__background__`` at 0, ``N/A`` for unused ids),
    the label space of the official detectors (``num_classes: 91``)."""
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

    return list(FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"])


def imagenet_label_names() -> list[str]:
    """1001 names: ``background`` at 0, then the 1000 ImageNet classes in the usual order (the
    official classifiers' ``num_classes: 1001`` convention)."""
    from torchvision.models import ResNet50_Weights

    return ["background"] + list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


# ----------------------------------------------------------------------------- the entries
_RELU = {"activation": "relu"}
_BEST = {"activation": "swish", "stochastic_depth_rate": 0.2}  # yaml: init_drop_connect_rate 0.2
_MASKRCNN_BN = {"momentum": 0.99, "epsilon": 1e-3}  # *_mrcnn.yaml batch_norm_activation
_CLS_BN = {"momentum": 0.9, "epsilon": 1e-5}  # *_classification.yaml
_49S = {"endpoints_num_filters": 256}  # github.com/tensorflow/tpu/issues/767
_COCO_DET = {"task": "detector", "num_classes": 91, "labels": "coco91"}
_COCO_SEG = {"task": "instance_segmentation", "num_classes": 91, "labels": "coco91"}
_IMAGENET = {"task": "classifier", "num_classes": 1001, "labels": "imagenet1001", "input_size": 224}

_ENTRIES: list[PretrainedWeights] = []


_BACKBONE_OF: dict[str, str] = {}  # detector entry name -> the registered backbone inside it


def _add(model: str, tag: str, url: str, overrides: dict[str, Any], *, kind: dict[str, Any],
         backbone: str | None = None, codebase: str = "tpu", **kw: Any) -> None:
    kind = {**kind, **{k: kw.pop(k) for k in list(kw) if k in kind}}
    overrides = {**overrides, "num_classes": kind["num_classes"]}
    entry = PretrainedWeights(name=f"{model}.{tag}", model=model, tag=tag, url=url, codebase=codebase,
                              overrides=overrides, **kind, **kw)
    _ENTRIES.append(entry)
    if backbone:
        _BACKBONE_OF[entry.name] = backbone


# RetinaNet, trained from scratch on COCO train2017, box AP on val2017 (MODEL_ZOO.md).
for _id, _size, _ap, _ap_best, _params, _flops in (
        ("49S", 640, 39.5, 41.5, 11.9, 33.8), ("49", 640, 42.8, 44.3, 28.5, 85.4),
        ("96", 1024, 46.7, 48.5, 43.0, 265.4), ("143", 1280, 48.0, 50.6, 67.0, 524.0)):
    _low = _id.lower()
    _extra = _49S if _id == "49S" else {}
    _cfg = f"{TPU_CONFIGS}/spinenet{_id}_retinanet.yaml"
    _add(f"retinanet_spinenet{_low}", "coco", f"{TPU_BUCKET}/retinanet/spinenet-{_id}-best.tar.gz",
         {**_BEST, **_extra}, kind=_COCO_DET, backbone=f"spinenet{_low}", input_size=_size, epochs=500, source=ZOO, config=_cfg,
         published={"AP": _ap_best, "params_M": _params, "flops_B": _flops, "eval": "COCO val2017"},
         notes="longer schedule: swish, stochastic depth 0.2" + ("; 256 endpoint filters" if _extra else ""))
    _add(f"retinanet_spinenet{_low}", "coco_relu", f"{TPU_BUCKET}/retinanet/spinenet-{_id}.tar.gz",
         {**_RELU, **_extra}, kind=_COCO_DET, backbone=f"spinenet{_low}", input_size=_size, epochs=350, source=ZOO, config=_cfg,
         published={"AP": _ap, "params_M": _params, "flops_B": _flops, "eval": "COCO val2017"},
         notes="350 epochs, ReLU" + ("; 256 endpoint filters" if _extra else ""))
_add("retinanet_spinenet190", "coco", f"{TPU_BUCKET}/retinanet/spinenet-190-best.tar.gz", _BEST,
     kind=_COCO_DET, backbone="spinenet190", input_size=1280,
     epochs=400, source=ZOO, config=f"{TPU_CONFIGS}/spinenet190_retinanet.yaml",
     published={"AP": 52.0, "params_M": 163.6, "flops_B": 1885.0, "eval": "COCO val2017",
                "AP_softnms_val": 52.6, "AP_softnms_testdev": 52.8},
     notes="swish, stochastic depth 0.2; SoftNMS figures from the self-training README")
# Self-training (projects/self_training/README.md; results with SoftNMS).
_add("retinanet_spinenet143", "coco_selftrain",
     f"{TPU_BUCKET}/projects/rethinking-pre-training-and-self-training/spinenet-143-ssl.tar.gz", _BEST,
     kind=_COCO_DET, backbone="spinenet143",
     input_size=1280, source=SELF_TRAINING,
     config="tensorflow/tpu models/official/detection/projects/self_training/configs/coco_spinenet143_retinanet.yaml",
     published={"AP": 52.6, "AP_testdev": 52.8, "params_M": 67.0, "eval": "COCO val2017, SoftNMS"},
     notes="self-training student (Zoph et al. 2020); swish, stochastic depth as in the RetinaNet yaml")
_add("retinanet_spinenet190", "coco_selftrain",
     f"{TPU_BUCKET}/projects/rethinking-pre-training-and-self-training/spinenet-190-ssl.tar.gz", _BEST,
     kind=_COCO_DET, backbone="spinenet190",
     input_size=1280, source=SELF_TRAINING,
     config="tensorflow/tpu models/official/detection/projects/self_training/configs/coco_spinenet190_retinanet.yaml",
     published={"AP": 54.2, "AP_testdev": 54.3, "params_M": 163.6, "eval": "COCO val2017, SoftNMS"},
     notes="self-training student; the best published SpineNet result (54.3 AP test-dev)")
# Mobile RetinaNet.
_add("retinanet_spinenet_mobile49", "coco", f"{TPU_BUCKET}/retinanet/spinenetmbconv-49-best.tar.gz",
     {"flavor": "tpu", "activation": "swish"}, kind=_COCO_DET, backbone="spinenet_mobile49", input_size=384, epochs=600,
     source=ZOO,
     config=f"{TPU_CONFIGS}/spinenet-mbconv49_retinanet.yaml",
     published={"AP": 28.6, "params_M": 2.34, "flops_B": 1.0, "eval": "COCO val2017"},
     notes="SpineNet-MBConv-49 of tensorflow/tpu (spinenet_mbconv.py): swish, separable head 48 filters")
_add("retinanet_spinenet_mobile49", "coco_mg", f"{MG_BUCKET}/retinanet/spinenet49mobile.tar.gz",
     {"flavor": "mg", "activation": "hard_swish"}, kind=_COCO_DET, backbone="spinenet_mobile49", codebase="mg",
     input_size=384, epochs=600, source=GARDEN,
     config="tensorflow/models official/vision/configs/experiments/retinanet/coco_spinenet49_mobile_tpu.yaml",
     published={"AP": 28.1, "params_M": 2.32, "flops_B": 1.0, "eval": "COCO val2017"},
     notes="Model Garden TF2 Mobile SpineNet-49: hard_swish, squeeze-excitation 0.2, separable head")
# Mask R-CNN, from scratch (MODEL_ZOO.md; box AP / mask AP on val2017).
for _id, _size, _box, _mask, _params, _flops in (
        ("49", 640, 42.8, 37.8, 40.8, 215.7), ("96", 1024, 46.8, 41.2, 55.2, 314.6),
        ("143", 1280, 48.7, 42.6, 79.2, 498.4)):
    _add(f"maskrcnn_spinenet{_id}", "coco", f"{TPU_BUCKET}/maskrcnn/spinenet-{_id}.tar.gz",
         {**_RELU, **_MASKRCNN_BN}, kind=_COCO_SEG, backbone=f"spinenet{_id}", input_size=_size, epochs=350, source=ZOO,
         config=f"{TPU_CONFIGS}/spinenet{_id}_mrcnn.yaml",
         published={"AP": _box, "mask_AP": _mask, "params_M": _params, "flops_B": _flops, "eval": "COCO val2017"},
         notes="350 epochs, ReLU, BN momentum 0.99 / epsilon 1e-3"
               + ("; an earlier upload was truncated (tensorflow/tpu issues 775, 780)" if _id == "143" else ""))
_add("maskrcnn_spinenet190", "coco", f"{TPU_BUCKET}/maskrcnn/spinenet-190.tar.gz",
     {**_BEST, **_MASKRCNN_BN, "rpn_num_filters": 384, "head_num_filters": 384, "head_num_convs": 7,
      "mask_num_convs": 7}, kind=_COCO_SEG, backbone="spinenet190", input_size=1536, epochs=400, source=ZOO,
     config=f"{TPU_CONFIGS}/spinenet190_mrcnn.yaml",
     published={"AP": 52.0, "mask_AP": 45.9, "params_M": 168.2, "flops_B": 1685.7, "eval": "COCO val2017"},
     notes="swish, stochastic depth 0.2, heads 7 x 384 (the yaml; official 168.2M parameters)")
# ImageNet classifiers (224 px, 200 epochs; top-1 / top-5 on the ImageNet validation set).
for _id, _top1, _top5, _params, _flops in (("49", 77.0, 93.3, 22.1, 3.5), ("96", 78.2, 94.0, 36.5, 5.7),
                                           ("143", 79.0, 94.4, 60.5, 9.1)):
    _add(f"spinenet{_id}_cls", "imagenet_relu", f"{TPU_BUCKET}/classification/spinenet-{_id}-imagenet.tar.gz",
         {**_RELU, **_CLS_BN}, kind=_IMAGENET, epochs=200, source=ZOO, config=f"{TPU_CONFIGS}/spinenet{_id}_classification.yaml",
         published={"top1": _top1, "top5": _top5, "params_M": _params, "flops_B": _flops, "eval": "ImageNet val"},
         notes="ReLU, no label smoothing")
for _id, _top1, _top5, _params, _flops in (("49", 78.1, 94.0, 22.1, 3.5), ("96", 79.4, 94.6, 36.5, 5.7),
                                           ("143", 80.1, 95.0, 60.5, 9.1), ("190", 80.8, 95.3, 127.1, 19.1)):
    _add(f"spinenet{_id}_cls", "imagenet", f"{TPU_BUCKET}/classification/spinenet-{_id}-best-imagenet.tar.gz",
         {**_BEST, **_CLS_BN}, kind=_IMAGENET, epochs=200, source=ZOO, config=f"{TPU_CONFIGS}/spinenet{_id}_classification.yaml",
         published={"top1": _top1, "top5": _top5, "params_M": _params, "flops_B": _flops, "eval": "ImageNet val"},
         notes="swish, stochastic depth 0.2, label smoothing 0.1")


def _backbone_entries(detectors: list[PretrainedWeights]) -> list[PretrainedWeights]:
    """``spinenet96.coco`` ...: the backbone part of each detector checkpoint (same file)."""
    out = []
    for e in detectors:
        backbone = _BACKBONE_OF.get(e.name)
        if backbone is None:
            continue
        tag = e.tag if e.task == "detector" else e.tag.replace("coco", "coco_maskrcnn", 1)
        keep = {k: v for k, v in e.overrides.items() if k not in _DETECTOR_ONLY}
        out.append(dataclasses.replace(
            e, name=f"{backbone}.{tag}", model=backbone, tag=tag, overrides=keep, task="backbone", num_classes=None,
            labels=None, part_of=e.name, notes=f"backbone of {e.name} ({e.notes})"))
    return out


# Keywords of the detector builders that a bare backbone does not take.
_DETECTOR_ONLY = frozenset({"num_classes", "rpn_num_filters", "head_num_filters", "head_num_convs",
                            "mask_num_convs"})


def _verified(e: PretrainedWeights) -> str:
    """What tests/test_weights.py proves for the entry (no real file could be fetched)."""
    if e.codebase == "mg":
        how = "outputs = official (Model Garden-written checkpoint, local server)"
    elif e.overrides.get("flavor") == "tpu":  # tensorflow/tpu SpineNet-MBConv
        how = "published parameter count of the detector"
    elif e.task == "backbone":
        how = "full-size backbone layout vs TF1 tpu-style graph"
    else:
        head = {"instance_segmentation": "RPN, box and mask heads",
                "classifier": "classification head"}.get(e.task, "head")
        how = f"full-size layout (backbone + {head}) vs TF1 tpu-style graph"
    return how + "; file not fetched"


_ALL = _ENTRIES + _backbone_entries(_ENTRIES)
CATALOGUE: dict[str, PretrainedWeights] = {e.name: dataclasses.replace(e, verified=_verified(e)) for e in _ALL}
