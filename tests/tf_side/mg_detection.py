"""TensorFlow side of the detection parity tests: runs under the TF interpreter, never imports torch.

What a user of the official weights sees, computed by the official Model Garden code
(``tf-models-official``: ``official.vision``):

* ``anchors``: ``official.vision.ops.anchor.Anchor(...).multilevel_boxes`` for each size;
* ``preprocess``: the serving preprocessing of ``official/vision/serving/detection.py``
  (``normalize_image`` with ``MEAN_RGB`` / ``STDDEV_RGB``, ``resize_and_crop_image`` to the
  desired size, zero padding) and the tensorflow/tpu one re-created from
  tensorflow/tpu ``models/official/detection/utils/input_utils.py`` (``normalize_image`` on
  [0, 1], the same size rule, TF1 ``tf.compat.v1.image.resize_images``), which does not install;
* ``generator``: ``MultilevelDetectionGenerator`` with the SpineNet RetinaNet config's settings
  (``retinanet_spinenet_coco``: ``nms_version='v2'``, 5000 / 0.05 / 0.5 / 100) and with
  ``nms_version='v1'`` (the same steps as tensorflow/tpu ``ops/postprocess_ops.py``), on given
  raw head outputs;
* ``retinanet``: a RetinaNet-SpineNet-49 built by ``official.vision.modeling.factory.build_retinanet``
  from the ``retinanet_spinenet_coco`` config (backbone at a small width), random weights with
  measured BN statistics and realistic score / delta ranges, saved as a TF2 checkpoint
  (``backbone``, ``head``) and run on an image by the official serving module
  (``DetectionModule.serve``); plus the tensorflow/tpu pipeline (TF1 resize, clip to the scaled
  image, the v1 generator) on the same model.

Usage: ``python mg_detection.py JOB.json OUT_DIR``; inputs come from ``JOB["inputs"]`` (an npz
written by the test), outputs go to ``OUT_DIR/<job>.npz``.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from build_official import calibrate, randomize  # noqa: E402


def anchors_job(job: dict, inputs, out: dict) -> None:
    from official.vision.ops import anchor

    for a in job["anchor_sizes"]:
        for h, w in job["sizes"]:
            boxes = anchor.Anchor(min_level=3, max_level=7, num_scales=3, aspect_ratios=[0.5, 1.0, 2.0],
                                  anchor_size=a, image_size=[h, w]).multilevel_boxes
            for lvl, b in boxes.items():
                out[f"anchors_{a:g}_{h}x{w}_{lvl}"] = b.numpy()


def tpu_resize_and_pad(image: tf.Tensor, desired: int):
    """tensorflow/tpu utils/input_utils.py: normalize_image (convert to [0, 1], minus mean, over
    std), resize_and_crop_image without jitter (scaled size round(size * min(S/h, S/w)),
    TF1 resize_images, pad to the padded size at the bottom right)."""
    image = tf.image.convert_image_dtype(image, dtype=tf.float32)
    image = (image - tf.constant([0.485, 0.456, 0.406])) / tf.constant([0.229, 0.224, 0.225])
    size = tf.cast(tf.shape(image)[0:2], tf.float32)
    desired_f = tf.constant([desired, desired], tf.float32)
    scale = tf.minimum(desired_f[0] / size[0], desired_f[1] / size[1])
    scaled = tf.round(size * scale)
    resized = tf.compat.v1.image.resize_images(image, tf.cast(scaled, tf.int32),
                                               method=tf.compat.v1.image.ResizeMethod.BILINEAR)
    padded = tf.image.pad_to_bounding_box(resized, 0, 0, desired, desired)
    info = tf.stack([size, scaled, scaled / size, tf.zeros(2)])
    return padded, info


def mg_resize_and_pad(image: tf.Tensor, desired: int):
    """Model Garden serving (official/vision/serving/detection.py DetectionModule._build_inputs)."""
    from official.vision.ops import preprocess_ops

    image = tf.cast(image, tf.float32)
    image = preprocess_ops.normalize_image(image, offset=preprocess_ops.MEAN_RGB, scale=preprocess_ops.STDDEV_RGB)
    return preprocess_ops.resize_and_crop_image(image, [desired, desired], padded_size=[desired, desired],
                                                aug_scale_min=1.0, aug_scale_max=1.0, keep_aspect_ratio=True)


def preprocess_job(job: dict, inputs, out: dict) -> None:
    i = 0
    while f"img_{i}" in inputs:
        img = tf.constant(inputs[f"img_{i}"])
        for name, fn in (("mg", mg_resize_and_pad), ("tpu", tpu_resize_and_pad)):
            image, info = fn(img, job["desired"])
            out[f"{name}_image_{i}"] = image.numpy()
            out[f"{name}_info_{i}"] = info.numpy()
        i += 1


def _generator(version: str):
    from official.core import exp_factory
    from official.vision.modeling.layers import detection_generator

    g = exp_factory.get_exp_config("retinanet_spinenet_coco").task.model.detection_generator
    return detection_generator.MultilevelDetectionGenerator(
        apply_nms=g.apply_nms, pre_nms_top_k=g.pre_nms_top_k, pre_nms_score_threshold=g.pre_nms_score_threshold,
        nms_iou_threshold=g.nms_iou_threshold, max_num_detections=g.max_num_detections,
        nms_version=version or g.nms_version, use_cpu_nms=g.use_cpu_nms, soft_nms_sigma=g.soft_nms_sigma,
        use_class_agnostic_nms=g.use_class_agnostic_nms, box_coder_weights=g.box_coder_weights)


def generator_job(job: dict, inputs, out: dict) -> None:
    from official.core import exp_factory
    from official.vision.ops import anchor

    g = exp_factory.get_exp_config("retinanet_spinenet_coco").task.model.detection_generator
    out["config"] = np.array([g.pre_nms_top_k, g.pre_nms_score_threshold, g.nms_iou_threshold,
                              g.max_num_detections, float(bool(g.use_class_agnostic_nms)),
                              float(g.box_coder_weights is not None)])
    out["config_version"] = np.array(g.nms_version)
    h, w = job["padded"]
    anchors = anchor.Anchor(min_level=3, max_level=7, num_scales=3, aspect_ratios=[0.5, 1.0, 2.0],
                            anchor_size=job["anchor_size"], image_size=[h, w]).multilevel_boxes
    anchors = {k: v[None] for k, v in anchors.items()}
    for case in job["cases"]:
        raw_scores = {str(l): tf.constant(inputs[f"{case}_cls_{l}"]) for l in range(3, 8)}
        raw_boxes = {str(l): tf.constant(inputs[f"{case}_box_{l}"]) for l in range(3, 8)}
        for version in ("v1", "v2"):
            for clip_name, clip in job["clips"].items():
                res = _generator(version)(raw_boxes, raw_scores, anchors, tf.constant([clip], tf.float32))
                key = f"{case}_{version}_{clip_name}"
                n = int(res["num_detections"][0])
                out[f"{key}_boxes"] = res["detection_boxes"][0, :n].numpy()
                out[f"{key}_scores"] = res["detection_scores"][0, :n].numpy()
                out[f"{key}_classes"] = res["detection_classes"][0, :n].numpy()


def _set_predictor(layer, rng: np.random.Generator, features: dict, target_std: float, bias_mean: float,
                   bias_std: float) -> None:
    """Rescale a predictor so its outputs have ``target_std`` on these features and a bias
    around ``bias_mean`` (realistic logits: a few hundred scores per class above 0.05)."""
    outs = np.concatenate([layer(features[k]).numpy().reshape(-1) for k in features])
    bias = layer.bias.numpy()
    std = float(np.std(outs - np.resize(bias, outs.shape)))
    layer.kernel.assign(layer.kernel.numpy() * (target_std / std))
    layer.bias.assign((bias_mean + bias_std * rng.standard_normal(bias.shape)).astype(bias.dtype))


def retinanet_job(job: dict, inputs, out_dir: str, out: dict) -> None:
    from official.core import exp_factory
    from official.vision.modeling import factory
    from official.vision.modeling.backbones import spinenet
    from official.vision.serving import detection

    rng = np.random.default_rng(job["seed"])
    size = job["size"]
    params = exp_factory.get_exp_config("retinanet_spinenet_coco")
    model_cfg = params.task.model
    model_cfg.head.num_filters = job["head_filters"]
    model_cfg.norm_activation.use_sync_bn = False
    act = model_cfg.norm_activation.activation  # swish in retinanet_spinenet_coco
    spec = tf_keras.layers.InputSpec(shape=[None, size, size, 3])
    sc = spinenet.SCALING_MAP["49"]
    backbone = spinenet.SpineNet(
        input_specs=spec, min_level=3, max_level=7, endpoints_num_filters=job["endpoints"],
        resample_alpha=sc["resample_alpha"], block_repeats=sc["block_repeats"],
        filter_size_scale=job["filter_size_scale"], activation=act,
        norm_momentum=model_cfg.norm_activation.norm_momentum, norm_epsilon=model_cfg.norm_activation.norm_epsilon)
    model = factory.build_retinanet(spec, model_cfg, backbone=backbone)
    randomize(model.backbone, rng)
    randomize(model.head, rng)
    image = tf.constant(inputs["image"])
    module = detection.DetectionModule(params, batch_size=1, input_image_size=[size, size], model=model)
    # BN statistics and predictor ranges measured on the image itself (and its mirror image), so
    # the test image sees realistic activations and scores, not saturated ones.
    x = module.preprocess(image[None])[0].numpy()
    calib = np.concatenate([x, x[:, :, ::-1]], axis=0)
    calibrate(model.backbone, calib, rng)
    feats = model.backbone(calib, training=False)
    calibrate(model.head, feats, rng, call=lambda f, training: model.head(f, training=training))
    head = model.head
    cls_in, box_in = {}, {}
    for li, lvl in enumerate(range(3, 8)):  # the head's own towers (shared convs, per-level BN)
        cls_in[str(lvl)] = head._apply_prediction_tower(feats[str(lvl)], head._cls_convs, head._cls_norms[li])
        box_in[str(lvl)] = head._apply_prediction_tower(feats[str(lvl)], head._box_convs, head._box_norms[li])
    _set_predictor(head._classifier, rng, cls_in, job["logit_std"], job["logit_bias"], 0.3)
    _set_predictor(head._box_regressor, rng, box_in, 0.25, 0.0, 0.05)
    tf.train.Checkpoint(backbone=model.backbone, head=model.head).save(os.path.join(out_dir, "retinanet", "ckpt"))
    out["activation"] = np.array(act)

    res = module.serve(image[None])
    n = int(res["num_detections"][0])
    info = res["image_info"][0].numpy()
    out["mg_boxes"] = res["detection_boxes"][0, :n].numpy()  # yxyx, scaled-image pixels
    out["mg_scores"] = res["detection_scores"][0, :n].numpy()
    out["mg_classes"] = res["detection_classes"][0, :n].numpy()
    out["mg_info"] = info
    images, _, _ = module.preprocess(image[None])
    raw = model.call(images, image_shape=tf.constant([[size, size]], tf.float32),
                     anchor_boxes=module._build_anchor_boxes(), training=False)
    for lvl in range(3, 8):
        out[f"mg_cls_{lvl}"] = raw["cls_outputs"][str(lvl)].numpy()

    # tensorflow/tpu's pipeline on the same weights: TF1 resize, clip to the scaled image, v1.
    padded, tinfo = tpu_resize_and_pad(image, size)
    anchors = {k: v[None] for k, v in module._build_anchor_boxes().items()}
    outputs = model.call(padded[None], image_shape=tinfo[1][None], anchor_boxes=anchors, training=False)
    res = _generator("v1")(outputs["box_outputs"], outputs["cls_outputs"], anchors, tinfo[1][None])
    n = int(res["num_detections"][0])
    out["tpu_boxes"] = res["detection_boxes"][0, :n].numpy()
    out["tpu_scores"] = res["detection_scores"][0, :n].numpy()
    out["tpu_classes"] = res["detection_classes"][0, :n].numpy()
    out["tpu_info"] = tinfo.numpy()


def roialign_job(job: dict, inputs, out: dict) -> None:
    """Model Garden's Mask R-CNN RoIAlign (``MultilevelROIAligner``: level
    ``floor(log2(sqrt(area) / 224)) + 4``, 2 x 2 bilinear samples per bin, ``sample_offset`` 0.5)."""
    from official.vision.modeling.layers import roi_aligner

    feats = {str(l): tf.constant(inputs[f"feat_{l}"]) for l in range(3, 8)}
    for crop in job["crops"]:
        res = roi_aligner.MultilevelROIAligner(crop_size=crop, sample_offset=0.5)(
            feats, tf.constant(inputs["boxes"]), training=False)
        out[f"roi_{crop}"] = res.numpy()


def rcnn_generator_job(job: dict, inputs, out: dict) -> None:
    """Model Garden's second-stage generator (``DetectionGenerator`` with the Mask R-CNN config's
    settings; box weights (10, 10, 5, 5) as ``maskrcnn_model.py`` passes them)."""
    from official.vision.configs import maskrcnn as maskrcnn_cfg
    from official.vision.modeling.layers import detection_generator

    g = maskrcnn_cfg.DetectionGenerator()
    gen = detection_generator.DetectionGenerator(
        apply_nms=g.apply_nms, pre_nms_top_k=g.pre_nms_top_k, pre_nms_score_threshold=g.pre_nms_score_threshold,
        nms_iou_threshold=g.nms_iou_threshold, max_num_detections=g.max_num_detections, nms_version=g.nms_version,
        use_cpu_nms=g.use_cpu_nms, soft_nms_sigma=g.soft_nms_sigma, use_sigmoid_probability=g.use_sigmoid_probability)
    res = gen(tf.constant(inputs["boxes"]), tf.constant(inputs["scores"]), tf.constant(inputs["rois"]),
              tf.constant([job["image_shape"]], tf.float32), regression_weights=[10.0, 10.0, 5.0, 5.0],
              bbox_per_class=True)
    n = int(res["num_detections"][0])
    out["boxes"] = res["detection_boxes"][0, :n].numpy()
    out["scores"] = res["detection_scores"][0, :n].numpy()
    out["classes"] = res["detection_classes"][0, :n].numpy()


def main() -> int:
    with open(sys.argv[1], encoding="utf-8") as f:
        jobs = json.load(f)
    out_dir = sys.argv[2]
    for job in jobs:
        inputs = np.load(job["inputs"]) if job.get("inputs") else {}
        out: dict = {}
        if job["kind"] == "anchors":
            anchors_job(job, inputs, out)
        elif job["kind"] == "preprocess":
            preprocess_job(job, inputs, out)
        elif job["kind"] == "generator":
            generator_job(job, inputs, out)
        elif job["kind"] == "rcnn_generator":
            rcnn_generator_job(job, inputs, out)
        elif job["kind"] == "roialign":
            roialign_job(job, inputs, out)
        elif job["kind"] == "retinanet":
            retinanet_job(job, inputs, out_dir, out)
        else:
            raise ValueError(f"unknown job kind {job['kind']!r}")
        np.savez(os.path.join(out_dir, f"{job['name']}.npz"), **out)
        print(f"done {job['name']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
