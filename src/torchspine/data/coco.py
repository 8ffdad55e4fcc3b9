"""COCO-format detection dataset read with pycocotools.

``CocoDetection(ann_file, image_dir, transforms=...)`` yields ``(image, target)`` with the
image a ``3 x H x W`` float tensor in ``0..1`` and the target a torchvision detection dict:
``boxes`` (xyxy pixels), ``labels``, ``masks`` (``N x H x W`` uint8, when ``with_masks``),
``image_id``, ``area``, ``iscrowd``.

Labels: the file's category ids, whatever they are (0-based, sparse, in any order), map to
contiguous training labels ``1..K`` in ascending id order (``category_ids[label - 1]`` is the
file's id; ``num_classes = K + 1``). Label 0 is background for both RetinaNet's
post-processing and torchvision's Mask R-CNN, so a category with id 0 would otherwise vanish.
The mapping is a :class:`torchspine.data.labels.LabelMap` (``dataset.labels``); a model's own
map (``labels=``, e.g. an official detector whose labels are the COCO ids) replaces it.
:meth:`CocoDetection.category_id` maps a label back, for predictions and COCO evaluation.

Crowd annotations are left out of training targets, as torchvision's COCO reference does;
COCO evaluation still sees them in the ground truth (crowd regions are "ignore" regions
there). The annotation file is checked before use
(:mod:`torchspine.data.checks`): boxes partly outside their image are clipped to it, boxes
entirely outside it and zero-area boxes are dropped (each logged with a count); an empty
``annotations`` list is refused for training (``require_annotations``) and logged otherwise.

Images are read with the one reader, :func:`torchspine.data.images.read_image_array` (16-bit,
palette, CMYK, EXIF-rotated files -> 8-bit RGB), on the pixel grid the file's width/height
describe (:func:`torchspine.data.images.read_image_as_annotated`: the image as shown, or its
stored grid when those are the stored sides); an image of another size is skipped like a
corrupt one, naming both sizes (its boxes would all be misplaced). A corrupt or unreadable image met while
loading is logged once and counted once (``corrupt_image_ids``). With ``replace_corrupt``
(training) the sample is replaced by the next readable image of the dataset, so a batch stays
full (a batch that shrank to one image would break BatchNorm); otherwise (evaluation) the
sample is ``None`` and :func:`collate_detection` drops it. Either way the batch records the
skipped image ids in ``batch.skipped``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO

from torchspine.data.checks import check_coco, clip_box, enforce, is_polygon, record_key
from torchspine.data.images import read_image_array, read_image_as_annotated
from torchspine.data.labels import LabelMap
from torchspine.data.transforms import Compose, build_eval_transforms
from torchspine.utils import read_json

__all__ = ["CocoDetection", "DetectionBatch", "collate_detection", "load_coco"]

logger = logging.getLogger(__name__)


def load_coco(ann_file: str | os.PathLike, *, image_dir: str | os.PathLike | None = None,
              skip_bad: bool = False, require_annotations: bool = False, skip_flag: str | None = None,
              with_masks: bool = True) -> COCO:
    """Read, check and index an annotation file; bad records stop the run or (``skip_bad``)
    are removed before pycocotools indexes the file. Boxes partly outside their image are
    clipped, boxes entirely outside it and zero-area boxes dropped (logged with counts).

    Args:
        require_annotations: refuse a file whose ``annotations`` list is empty (training);
            otherwise it is accepted with a warning (evaluation).
        skip_flag: the command-line option that sets ``skip_bad``, named in the error message
            (``None``: the caller has none, the message says to fix the file).
        with_masks: check the segmentations too (they are rasterised only for masks).

    Defaults are filled the way COCO evaluation needs them: a missing ``area`` becomes the box
    area ``w * h`` (logged with a count at INFO level), a missing ``iscrowd`` 0, a missing category name the id.
    """
    ann_file = Path(ann_file)
    data = read_json(ann_file, what="annotation file")
    if not isinstance(data, dict):
        raise ValueError(f"{ann_file}: top level must be an object with images/annotations/categories")
    report = check_coco(data, image_dir=image_dir, source=str(ann_file), segmentation=with_masks)
    if require_annotations and not data["annotations"]:
        raise ValueError(f"{ann_file}: the 'annotations' list is empty: there is nothing to train on")
    bad_images, bad_anns = enforce(report, skip_bad=skip_bad, skip_flag=skip_flag)
    bad_anns = bad_anns | report.dropped_annotation_ids
    clipped = report.clipped_annotation_ids
    if clipped:
        sizes = {img.get("id"): (img.get("width"), img.get("height")) for img in data["images"]}
        data = {**data, "annotations": [
            {**a, "bbox": clip_box(a["bbox"], *sizes[a["image_id"]])} if a.get("id") in clipped else a
            for a in data["annotations"]]}
    fixed = report.polygon_fixed_annotation_ids
    if fixed:
        data = {**data, "annotations": [
            {**a, "segmentation": [p for p in a["segmentation"] if is_polygon(p)]} if a.get("id") in fixed else a
            for a in data["annotations"]]}
    if bad_images or bad_anns:
        seen_i, seen_a = set(), set()
        images = []
        for img in data["images"]:
            if record_key(img.get("id")) not in bad_images and img.get("id") not in seen_i:
                seen_i.add(img["id"])
                images.append(img)
        anns = []
        for a in data["annotations"]:
            if (record_key(a.get("id")) in bad_anns or record_key(a.get("image_id")) not in seen_i
                    or a.get("id") in seen_a):
                continue
            seen_a.add(a["id"])
            anns.append(a)
        data = {**data, "images": images, "annotations": anns}
    # pycocotools' COCOeval reads gt["area"] and gt["iscrowd"] (a KeyError without them) and the
    # evaluation summary reads each category's "name".
    no_area = sum(a.get("area") is None for a in data["annotations"])
    if no_area:
        logger.info("%s: %d annotation(s) without 'area': the box area w*h is used (COCO evaluation's "
                    "small/medium/large ranges)", ann_file, no_area)
    data = {**data,
            "annotations": [a if a.get("area") is not None and "iscrowd" in a else
                            {**a, "area": float(a["bbox"][2]) * float(a["bbox"][3]) if a.get("area") is None
                             else a["area"], "iscrowd": a.get("iscrowd", 0)} for a in data["annotations"]],
            "categories": [c if c.get("name") not in (None, "") else {**c, "name": str(c["id"])}
                           for c in data["categories"]]}
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    return coco


class CocoDetection(torch.utils.data.Dataset):
    """A COCO-format dataset.

    Args:
        ann_file: the annotation JSON.
        image_dir: the folder holding the ``file_name`` of each image.
        transforms: a callable ``(image, target, generator) -> (image, target)``.
        with_masks: decode instance masks into the target (Mask R-CNN).
        skip_bad: leave out records that fail the annotation check instead of stopping.
        seed: base seed of the per-sample augmentation generator.
        category_ids: the category ids of labels 1..K (``category_ids[label - 1]`` is a file
            id), named from this file. Default: this file's ids, ascending.
        labels: the label map to use (the training set's ``labels`` for a validation set, a
            saved model's for evaluation); replaces ``category_ids``.
    """

    def __init__(self, ann_file: str | os.PathLike, image_dir: str | os.PathLike, *,
                 transforms: Compose | None = None, with_masks: bool = False, skip_bad: bool = False,
                 seed: int = 0, category_ids: list[int] | None = None, labels: LabelMap | None = None,
                 replace_corrupt: bool = False, require_annotations: bool = False,
                 skip_flag: str | None = None) -> None:
        self.ann_file, self.image_dir = Path(ann_file), Path(image_dir)
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"image folder {str(self.image_dir)!r} not found")
        self.coco = load_coco(ann_file, image_dir=image_dir, skip_bad=skip_bad,
                              require_annotations=require_annotations, skip_flag=skip_flag, with_masks=with_masks)
        self.ids = sorted(self.coco.imgs)
        self.transforms = transforms if transforms is not None else build_eval_transforms()
        self.with_masks = with_masks
        self.seed = seed
        self.epoch = 0
        self.replace_corrupt = replace_corrupt
        self.corrupt_image_ids: set = set()  # seen in this process (DataLoader workers: see batch.skipped)
        self.stored_grid_ids: set = set()  # annotated on the stored pixels: EXIF orientation not applied
        self.category_names = {c["id"]: c["name"] for c in self.coco.dataset["categories"]}
        if labels is not None and category_ids is not None:
            raise ValueError(f"{self.ann_file}: give labels or category_ids, not both")
        if labels is None:
            labels = LabelMap.from_categories(self.coco.dataset["categories"], order=category_ids,
                                              source=str(self.ann_file))
        else:
            labels.check_covers(self.coco.cats, source=str(self.ann_file))
        self.labels = labels
        self.category_ids: list[int] = list(labels.category_ids)
        self.label_names: list[str] = list(labels.names)
        self.num_classes = labels.num_classes  # + background (label 0)

    def __len__(self) -> int:
        return len(self.ids)

    def category_id(self, label: int) -> int:
        """The file's category id of training label ``label`` (1..K)."""
        return self.labels.category_id(label)

    def set_epoch(self, epoch: int) -> None:
        """Augmentation depends on (seed, epoch, index) only, so it survives a resume."""
        self.epoch = epoch

    def _generator(self, index: int) -> torch.Generator:
        g = torch.Generator()
        g.manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + index)
        return g

    @property
    def num_corrupt(self) -> int:
        """Distinct corrupt images met so far in this process (images, not load attempts)."""
        return len(self.corrupt_image_ids)

    def load_image(self, index: int) -> torch.Tensor | None:
        info = self.coco.imgs[self.ids[index]]
        path = self.image_dir / info["file_name"]
        if info["id"] in self.corrupt_image_ids:
            return None
        try:
            if info["id"] in self.stored_grid_ids:
                arr = read_image_array(path, exif_transpose=False)
            else:
                arr, stored = read_image_as_annotated(path, info["width"], info["height"])
                if stored:
                    self.stored_grid_ids.add(info["id"])
                    logger.warning("image id %s (%s): the annotation file's size %sx%s is the stored pixel grid, not "
                                   "the image as its EXIF orientation shows it: used as stored (not rotated) so its "
                                   "boxes fit", info["id"], path, info["width"], info["height"])
        except (FileNotFoundError, ValueError) as e:
            self.corrupt_image_ids.add(info["id"])
            logger.warning("skipping corrupt image id %s (%s): %s", info["id"], path, e)
            return None
        return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)  # HWC uint8 -> CHW float

    def load_target(self, index: int, height: int, width: int) -> dict[str, Any]:
        image_id = self.ids[index]
        anns = self.coco.imgToAnns.get(image_id, [])
        keep = [a for a in anns if not a.get("iscrowd", 0) and a["bbox"][2] > 0 and a["bbox"][3] > 0]
        boxes = torch.tensor([a["bbox"] for a in keep], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        target: dict[str, Any] = {
            "boxes": boxes,
            "labels": torch.tensor([self.labels.label(a["category_id"]) for a in keep], dtype=torch.int64),
            "area": torch.tensor([float(a.get("area", 0.0)) for a in keep], dtype=torch.float32),
            "iscrowd": torch.zeros(len(keep), dtype=torch.int64),
            "image_id": int(image_id),
        }
        if self.with_masks:
            masks = np.zeros((len(keep), height, width), dtype=np.uint8)
            for k, a in enumerate(keep):
                if a.get("segmentation"):
                    m = self.coco.annToMask(a)[:height, :width]  # drawn at the file's width/height
                    masks[k, :m.shape[0], :m.shape[1]] = m
            target["masks"] = torch.from_numpy(masks)
        return target

    def __getitem__(self, index: int) -> "_Sample | None":
        skipped: list = []
        source = index
        image = self.load_image(index)
        while image is None:
            skipped.append(self.ids[source])
            if not self.replace_corrupt:
                return None
            # The next readable image takes the corrupt one's place: the batch stays full.
            source = (source + 1) % len(self.ids)
            if source == index:
                raise ValueError(f"{self.image_dir}: none of the {len(self.ids)} images can be decoded "
                                 f"(first: id {self.ids[index]}); see the warnings above")
            image = self.load_image(source)
            if image is not None:
                logger.info("image id %s replaced by image id %s in this batch", self.ids[index], self.ids[source])
        target = self.load_target(source, image.shape[1], image.shape[2])
        sample = _Sample(self.transforms(image, target, self._generator(index)))
        sample.skipped = skipped
        return sample


class _Sample(tuple):
    """An ``(image, target)`` pair; ``skipped`` lists the corrupt image ids it replaced."""

    skipped: list


class DetectionBatch(tuple):
    """``(images, targets)`` as torchvision detection models take them; ``skipped`` holds the
    ids of the corrupt images met while loading this batch (dropped or replaced)."""

    skipped: list


def collate_detection(batch: list) -> DetectionBatch:
    """Lists of images and targets (torchvision detection input); drops corrupt samples and
    records their image ids (and those of replaced ones) in ``batch.skipped``."""
    skipped = [i for b in batch if b is not None for i in getattr(b, "skipped", [])]
    batch = [b for b in batch if b is not None]
    out = DetectionBatch(([b[0] for b in batch], [b[1] for b in batch]))
    out.skipped = skipped
    return out
