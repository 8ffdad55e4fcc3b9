"""A tensorflow/tpu-style SpineNet in TF1 graph mode, for the name-based checkpoint test.

The tensorflow/tpu code is not on PyPI, so this re-implements its graph (tensorflow/tpu
``models/official/detection/modeling/architecture/spinenet.py``, ``nn_ops.py``, ``heads.py``)
with the same TF1 calls it uses: ``tf.compat.v1.layers.conv2d``
/ ``batch_normalization`` without explicit names (so TF itself generates ``conv2d_N`` /
``batch_normalization_N`` per variable scope), fixed symmetric padding for strided convs, one
'SAME' max pool of k3 (ratio 4) or k5 (larger ratios) with stride ratio/2, nearest upsampling,
and a RetinaNet head with explicit names ``class_net/class-{k}`` (convs shared across levels),
``class-{k}-{level}`` (per-level BN) and ``class-predict``; aspect ratios (1.0, 2.0, 0.5).
It runs under the TF interpreter and never imports torch.

With ``maskrcnn`` it adds, instead of the RetinaNet head, the Mask R-CNN heads of tensorflow/tpu
``modeling/architecture/heads.py`` with its variable names: ``rpn_head/rpn`` (shared conv),
``rpn_head/rpn-l{level}-bn``, ``rpn-class``, ``rpn-box``; ``fast_rcnn_head/conv_{i}`` + unnamed BN,
``fc6`` + unnamed BN, ``class-predict``, ``box-predict``; ``mask_head/mask-conv-l{i}`` + unnamed
BN, ``conv5-mask`` (``conv2d_transpose``) + unnamed BN, ``mask_fcn_logits``; BN 0.99 / 1e-3 as
the Mask R-CNN yamls. With ``classifier``: ``classification_head/dense`` over 1001 classes on a
pooled feature (BN 0.9 / 1e-5 as the classification yamls).

With ``mbconv``: tensorflow/tpu's SpineNet-MBConv-49 backbone (``spinenet_mbconv.py``), see
:func:`spinenet_mbconv`.

With ``sn190``: the backbone alone with SpineNet-190's repeats and alpha at a quarter width.

Usage: ``python build_tpu_style.py OUT_DIR [retinanet] [maskrcnn] [classifier] [mbconv] [sn190]`` writes, for each
kind, ``OUT_DIR/<kind>/model.ckpt*`` in float64 (with no kind: the RetinaNet one, float32, in ``OUT_DIR`` itself) (a TF1 Saver checkpoint) and ``OUT_DIR/io.npz`` (``input_i``,
``out_i_<level>``, ``cls_i_<level>``, ``box_i_<level>``, NHWC; for ``maskrcnn`` also
``rpn_cls_i_<level>``, ``rpn_box_i_<level>``, ``box_rois``, ``box_cls``, ``box_box``,
``mask_rois``, ``masks``; for ``classifier`` ``pooled`` and ``logits``).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

v1 = tf.compat.v1

# tensorflow/tpu spinenet.py SPINENET_BLOCK_SPECS: (level, type, parents, is_output).
BLOCKS = [(2, "b", (0, 1), False), (4, "r", (0, 1), False), (3, "b", (2, 3), False), (4, "b", (2, 4), False),
          (6, "r", (3, 5), False), (4, "b", (3, 5), False), (5, "r", (6, 7), False), (7, "r", (6, 8), False),
          (5, "b", (8, 9), False), (5, "b", (8, 10), False), (4, "b", (5, 10), True), (3, "b", (4, 10), True),
          (5, "b", (7, 12), True), (7, "b", (5, 14), True), (6, "b", (12, 14), True)]
FILTERS = {2: 64, 3: 128, 4: 256, 5: 256, 6: 256, 7: 256}
SCALE, ALPHA, ENDPOINTS = 0.65, 0.5, 128  # SpineNet-49S (tensorflow/tpu spinenet.py SCALING_MAP['49S'])
REPEATS = 1
# mode "sn190": SCALING_MAP['190'] (alpha 1.0, 4 block repeats, filter scale 1.3) at a quarter of
# its widths (filter scale 0.325, 64 endpoint filters), backbone only.
SN190 = (0.325, 1.0, 64, 4)
MOMENTUM, EPSILON = 0.997, 1e-4  # tensorflow/tpu RetinaNet (configs/base_config.py)
NORM = {"retinanet": (0.997, 1e-4), "maskrcnn": (0.99, 1e-3), "classifier": (0.9, 1e-5)}
HEAD_CONVS, HEAD_FILTERS, NUM_CLASSES, ASPECTS, NUM_SCALES = 2, 32, 3, (1.0, 2.0, 0.5), 3
# Mask R-CNN at tiny widths: RPN filters, head convs / filters, fc dims, classes, RoIs.
RPN_FILTERS, MRCNN_CONVS, MRCNN_FILTERS, FC_DIMS, MRCNN_CLASSES, NUM_ROIS = 32, 2, 32, 64, 5, 6


def conv(x, filters, k, strides=1, use_bias=False, name=None):
    if strides > 1:  # tensorflow/tpu fixed_padding: (k-1)//2 before, the rest after
        total = k - 1
        x = tf.pad(x, [[0, 0], [total // 2, total - total // 2], [total // 2, total - total // 2], [0, 0]])
    return v1.layers.conv2d(x, filters, k, strides, padding="SAME" if strides == 1 else "VALID", use_bias=use_bias,
                            name=name, reuse=v1.AUTO_REUSE if name else None)


def bn(x, relu=True, name=None):
    x = v1.layers.batch_normalization(x, momentum=MOMENTUM, epsilon=EPSILON, training=False, name=name)
    return tf.nn.relu(x) if relu else x


def bottleneck(x, f, project):
    shortcut = bn(conv(x, 4 * f, 1), relu=False) if project else x
    y = bn(conv(x, f, 1))
    y = bn(conv(y, f, 3))
    y = bn(conv(y, 4 * f, 1), relu=False)
    return tf.nn.relu(y + shortcut)


def group(x, kind, f):
    """spinenet.py block_group: REPEATS blocks, a projection shortcut only on the first and only when
    the channels change (``not (num_filters == filters * 4 and strides == 1)``)."""
    for r in range(REPEATS):
        if kind == "b":
            x = bottleneck(x, f, r == 0 and int(x.shape[-1]) != 4 * f)
        else:
            x = residual(x, f)
    return x


def residual(x, f):
    y = bn(conv(x, f, 3))
    y = bn(conv(y, f, 3), relu=False)
    return tf.nn.relu(y + x)


def resample(x, in_level, in_type, target_level, target_channels):
    channels = int(x.shape[-1]) // (4 if in_type == "b" else 1)
    a = int(channels * ALPHA)
    x = bn(conv(x, a, 1))
    if in_level < target_level:
        x = bn(conv(x, a, 3, strides=2))
        ratio = 2 ** (target_level - in_level)
        if ratio > 2:
            k = 3 if ratio <= 4 else 5
            x = tf.nn.max_pool2d(x, k, ratio // 2, "SAME")
    elif in_level > target_level:
        s = 2 ** (in_level - target_level)
        x = tf.repeat(tf.repeat(x, s, axis=1), s, axis=2)  # nearest upsampling
    return bn(conv(x, target_channels, 1), relu=False)


def spinenet(images):
    f2 = int(FILTERS[2] * SCALE)
    with v1.variable_scope("spinenet"):
        x = bn(conv(images, 64, 7, strides=2))
        x = tf.nn.max_pool2d(x, 3, 2, "SAME")
        feats = [group(x, "b", f2)]
        feats.append(group(feats[0], "b", f2))
        info = [(2, "b", 4 * f2), (2, "b", 4 * f2)]
        outdeg = [0, 0]
        endpoints = {}
        for i, (level, kind, parents, is_out) in enumerate(BLOCKS):
            f = int(FILTERS[level] * SCALE)
            target = 4 * f if kind == "b" else f
            with v1.variable_scope(f"sub_policy{i}"):
                xs = []
                for j, p in enumerate(parents):
                    with v1.variable_scope(f"resample_with_alpha_resample_{i}_{j}"):
                        xs.append(resample(feats[p], info[p][0], info[p][1], level, target))
                    outdeg[p] += 1
                if is_out:  # zero out-degree rule (paper section 3.3; spinenet.py)
                    for j, (lv, _, ch) in enumerate(info):
                        if outdeg[j] == 0 and lv == level and ch == target:
                            xs.append(feats[j])
                            outdeg[j] += 1
                y = tf.nn.relu(tf.add_n(xs))
                with v1.variable_scope(f"scale_permuted_block_{i + 2}"):
                    y = group(y, kind, f)
            feats.append(y)
            info.append((level, kind, target))
            outdeg.append(0)
            if is_out:
                endpoints[level] = y
        return {lvl: bn(conv(endpoints[lvl], ENDPOINTS, 1)) for lvl in range(3, 8)}


def retinanet_head(feats):
    anchors = NUM_SCALES * len(ASPECTS)
    cls, box = {}, {}
    with v1.variable_scope("retinanet"):
        for lvl in range(3, 8):
            for net, prefix, outputs, out in (("class_net", "class", NUM_CLASSES * anchors, cls),
                                              ("box_net", "box", 4 * anchors, box)):
                with v1.variable_scope(net, reuse=v1.AUTO_REUSE):
                    y = feats[lvl]
                    for k in range(HEAD_CONVS):
                        y = conv(y, HEAD_FILTERS, 3, use_bias=True, name=f"{prefix}-{k}")
                        y = bn(y, name=f"{prefix}-{k}-{lvl}")
                    out[lvl] = conv(y, outputs, 3, use_bias=True, name=f"{prefix}-predict")
    return cls, box


def maskrcnn_heads(feats, box_rois, mask_rois):
    """tensorflow/tpu RpnHead, FastrcnnHead, MaskrcnnHead (use_batch_norm=True) with their names."""
    anchors = len(ASPECTS)  # one scale per level for the RPN
    rpn_cls, rpn_box = {}, {}
    with v1.variable_scope("rpn_head", reuse=v1.AUTO_REUSE):
        for lvl in range(3, 8):
            y = conv(feats[lvl], RPN_FILTERS, 3, use_bias=True, name="rpn")
            y = bn(y, name=f"rpn-l{lvl}-bn")
            rpn_cls[lvl] = conv(y, anchors, 1, use_bias=True, name="rpn-class")
            rpn_box[lvl] = conv(y, 4 * anchors, 1, use_bias=True, name="rpn-box")
    with v1.variable_scope("fast_rcnn_head"):
        net = box_rois
        for i in range(MRCNN_CONVS):
            net = bn(v1.layers.conv2d(net, MRCNN_FILTERS, 3, padding="same", name=f"conv_{i}"))
        net = tf.reshape(net, [-1, 7 * 7 * MRCNN_FILTERS])  # NHWC flattening
        net = bn(v1.layers.dense(net, FC_DIMS, name="fc6"))
        box_cls = v1.layers.dense(net, MRCNN_CLASSES, name="class-predict")
        box_box = v1.layers.dense(net, MRCNN_CLASSES * 4, name="box-predict")
    with v1.variable_scope("mask_head"):
        net = mask_rois
        for i in range(MRCNN_CONVS):
            net = bn(v1.layers.conv2d(net, MRCNN_FILTERS, 3, padding="same", name=f"mask-conv-l{i}"))
        net = bn(v1.layers.conv2d_transpose(net, MRCNN_FILTERS, 2, 2, padding="valid", name="conv5-mask"))
        masks = v1.layers.conv2d(net, MRCNN_CLASSES, 1, padding="valid", name="mask_fcn_logits")
    return rpn_cls, rpn_box, box_cls, box_box, masks


def build(out_dir: str, mode: str, dtype=np.float32) -> None:
    global MOMENTUM, EPSILON, SCALE, ALPHA, ENDPOINTS, REPEATS
    MOMENTUM, EPSILON = NORM.get(mode, NORM["retinanet"])
    SCALE, ALPHA, ENDPOINTS, REPEATS = SN190 if mode == "sn190" else (0.65, 0.5, 128, 1)
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(5)
    images = v1.placeholder(dtype, [1, None, None, 3])
    feats = spinenet(images)
    extra, extra_feed = {}, {}
    if mode == "retinanet":
        cls, box = retinanet_head(feats)
    else:
        cls, box = {}, {}
    if mode == "maskrcnn":
        box_rois = v1.placeholder(dtype, [NUM_ROIS, 7, 7, ENDPOINTS], name="box_rois")
        mask_rois = v1.placeholder(dtype, [NUM_ROIS, 14, 14, ENDPOINTS], name="mask_rois")
        rpn_cls, rpn_box, box_cls, box_box, masks = maskrcnn_heads(feats, box_rois, mask_rois)
        extra = {"box_cls": box_cls, "box_box": box_box, "masks": masks}
        extra_feed = {box_rois: rng.normal(0.0, 1.0, box_rois.shape.as_list()).astype(dtype),
                      mask_rois: rng.normal(0.0, 1.0, mask_rois.shape.as_list()).astype(dtype)}
        cls, box = rpn_cls, rpn_box
    if mode == "classifier":
        pooled = v1.placeholder(dtype, [2, ENDPOINTS], name="pooled")
        with v1.variable_scope("classification_head"):
            extra = {"logits": v1.layers.dense(pooled, 1001)}
        extra_feed = {pooled: rng.normal(0.0, 1.0, (2, ENDPOINTS)).astype(dtype)}
    with v1.Session() as sess:
        feed = {}
        for var in v1.global_variables():  # non-trivial weights and BN statistics
            shape = tuple(var.shape.as_list())
            n = var.op.name
            if n.endswith("gamma"):
                val = rng.uniform(0.5, 1.5, shape)
            elif n.endswith(("beta", "moving_mean", "bias")):
                val = rng.normal(0.0, 0.2, shape)
            elif n.endswith("moving_variance"):
                val = rng.uniform(0.5, 2.0, shape)
            else:
                val = rng.normal(0.0, 1.0, shape) / np.sqrt(np.prod(shape[:-1]))
            feed[var.initial_value] = val.astype(dtype)
        sess.run([v.initializer for v in v1.global_variables()], feed)  # one run: feed the initial values
        io = {}
        for i, (h, w) in enumerate([(128, 128), (128, 256)]):
            x = rng.normal(0.0, 1.0, (1, h, w, 3)).astype(dtype)
            outs, c, b = sess.run([feats, cls, box], {images: x})
            io[f"input_{i}"] = x
            for lvl in range(3, 8):
                io[f"out_{i}_{lvl}"] = outs[lvl]
                if c:
                    io[f"cls_{i}_{lvl}"], io[f"box_{i}_{lvl}"] = c[lvl], b[lvl]
        if extra:
            io.update(sess.run(extra, extra_feed))
            io.update({p.op.name: v for p, v in extra_feed.items()})
        v1.train.Saver().save(sess, os.path.join(out_dir, "model.ckpt"))
    np.savez(os.path.join(out_dir, "io.npz"), **io)


# ---------------------------------------------------------------- SpineNet-MBConv (mobile)
# tensorflow/tpu modeling/architecture/spinenet_mbconv.py with nn_blocks.mbconv_block and
# nn_ops.squeeze_excitation / depthwise_conv2d_fixed_padding: swish everywhere, SE with a swish
# inner activation and a sigmoid gate, BN 0.997 / 1e-4. Variable scopes and creation order as
# there: 'spinenet_mbconv/', 'sub_policy{i}/resample_with_sepconv_resample_{i}_{j}/',
# 'sub_policy{i}/scale_permuted_block_{len(feats)}/'.
MB_FILTERS = {0: 8, 1: 16, 2: 24, 3: 40, 4: 80, 5: 112, 6: 112, 7: 112}


def round_filters(filters, multiplier, divisor=8):
    scaled = filters * multiplier
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(new + divisor if new < 0.9 * scaled else new)


def swish_bn(x, act=True):
    x = v1.layers.batch_normalization(x, momentum=MOMENTUM, epsilon=EPSILON, training=False)
    return tf.nn.swish(x) if act else x


def depthwise(x, strides):
    """nn_ops.depthwise_conv2d_fixed_padding: a Keras DepthwiseConv2D inside tf.layers naming, so
    its variable is '<scope>/depthwise_conv2d[_N]/depthwise_kernel' (made here with TF's own
    scope uniquification, the mechanism tf.layers uses)."""
    if strides > 1:
        x = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])
    with v1.variable_scope(None, default_name="depthwise_conv2d"):
        k = v1.get_variable("depthwise_kernel", [3, 3, int(x.shape[-1]), 1], dtype=x.dtype)
    return tf.nn.depthwise_conv2d(x, k, [1, strides, strides, 1], "SAME" if strides == 1 else "VALID")


def mbconv(x, in_f, out_f, strides):
    shortcut = x
    y = swish_bn(conv(x, in_f * 6, 1))
    y = swish_bn(depthwise(y, strides))
    se = tf.reduce_mean(y, [1, 2], keepdims=True)  # squeeze_excitation: reduce, then expand
    se = v1.layers.conv2d(se, max(1, int(in_f * 0.2)), 1, padding="same")
    se = v1.layers.conv2d(tf.nn.swish(se), in_f * 6, 1, padding="same")
    y = tf.sigmoid(se) * y
    y = swish_bn(conv(y, out_f, 1), act=False)
    return y + shortcut if in_f == out_f and strides == 1 else y


def spinenet_mbconv(images, block_specs, scale, endpoints):
    width = int(images.shape[2])
    with v1.variable_scope("spinenet_mbconv"):
        x = swish_bn(conv(images, round_filters(MB_FILTERS[0], scale), 3, strides=2))
        b0 = mbconv(x, round_filters(8, scale), round_filters(16, scale), 1)
        feats = [b0, mbconv(b0, round_filters(16, scale), round_filters(24, scale), 2)]
        outdeg = [0, 0]
        outputs = {}
        for i, (level, _, parents, is_out) in enumerate(block_specs):
            target_w = int(np.ceil(width / 2 ** level))
            target_f = round_filters(MB_FILTERS[level], scale)
            with v1.variable_scope(f"sub_policy{i}"):
                xs = []
                for j, p in enumerate(parents):
                    with v1.variable_scope(f"resample_with_sepconv_resample_{i}_{j}"):
                        y = feats[p]
                        w = int(y.shape[2])
                        while w > target_w:
                            y = swish_bn(depthwise(y, 2))
                            w //= 2
                        if w < target_w:
                            s = target_w // w
                            y = tf.repeat(tf.repeat(y, s, axis=1), s, axis=2)
                        xs.append(swish_bn(conv(y, target_f, 1), act=False))
                    outdeg[p] += 1
                t = xs[0] + xs[1]
                if is_out:
                    for j, f in enumerate(feats):
                        if outdeg[j] == 0 and int(f.shape[2]) == target_w and int(f.shape[3]) == target_f:
                            t += f
                            outdeg[j] += 1
                with v1.variable_scope(f"scale_permuted_block_{len(feats)}"):
                    t = mbconv(tf.nn.swish(t), target_f, target_f, 1)
            feats.append(t)
            outdeg.append(0)
            if is_out:
                outputs[level] = t
        return {lvl: swish_bn(conv(outputs[lvl], endpoints, 1)) for lvl in range(3, 8)}


def build_mbconv(out_dir: str, dtype=np.float64) -> None:
    """Two graphs (128x128 and 128x256: the resampling needs static widths) sharing one checkpoint,
    in float64 so that the comparison sees errors far below float32 noise."""
    global MOMENTUM, EPSILON
    MOMENTUM, EPSILON = NORM["retinanet"]  # the tensorflow/tpu detection BN (0.997 / 1e-4)
    from official.vision.modeling.backbones import spinenet_mobile as mg  # the same block list and scales

    specs = mg.SPINENET_BLOCK_SPECS
    sc = mg.SCALING_MAP["49"]
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(7)
    io = {}
    prefix = os.path.join(out_dir, "model.ckpt")
    for i, (h, w) in enumerate([(128, 128), (128, 256)]):
        with tf.Graph().as_default():
            images = v1.placeholder(dtype, [1, h, w, 3])
            feats = spinenet_mbconv(images, specs, sc["filter_size_scale"], sc["endpoints_num_filters"])
            with v1.Session() as sess:
                if i == 0:
                    _randomize(sess, rng, dtype)
                    v1.train.Saver().save(sess, prefix)
                else:
                    v1.train.Saver().restore(sess, prefix)
                x = rng.normal(0.0, 1.0, (1, h, w, 3)).astype(dtype)
                outs = sess.run(feats, {images: x})
        io[f"input_{i}"] = x
        for lvl in range(3, 8):
            io[f"out_{i}_{lvl}"] = outs[lvl]
    np.savez(os.path.join(out_dir, "io.npz"), **io)


def _randomize(sess, rng, dtype=np.float32) -> None:
    feed = {}
    for var in v1.global_variables():
        shape = tuple(var.shape.as_list())
        n = var.op.name
        if n.endswith("gamma"):
            val = rng.uniform(0.5, 1.5, shape)
        elif n.endswith(("beta", "moving_mean", "bias")):
            val = rng.normal(0.0, 0.2, shape)
        elif n.endswith("moving_variance"):
            val = rng.uniform(0.5, 2.0, shape)
        else:
            fan_in = np.prod(shape[:2]) if n.endswith("depthwise_kernel") else np.prod(shape[:-1])
            val = rng.normal(0.0, 1.0, shape) / np.sqrt(fan_in)
        feed[var.initial_value] = val.astype(dtype)
    sess.run([v.initializer for v in v1.global_variables()], feed)


def main() -> int:
    out_dir, modes = sys.argv[1], sys.argv[2:]
    v1.disable_eager_execution()
    if not modes:  # the original usage: the RetinaNet checkpoint directly in OUT_DIR
        with tf.Graph().as_default():
            build(out_dir, "retinanet")
        return 0
    for mode in modes:  # one interpreter (TensorFlow imports slowly), one graph per model
        if mode == "mbconv":
            build_mbconv(os.path.join(out_dir, mode))
            continue
        with tf.Graph().as_default():  # float64: errors far below float32 noise stay visible
            build(os.path.join(out_dir, mode), mode, np.float64)
    return 0


if __name__ == "__main__":
    sys.exit(main())
