"""RetinaNet and Mask R-CNN with SpineNet backbones (paper sections 4.1, 5.1, 6)."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torchvision.ops import box_iou

from torchspine import create_model
from torchspine.models.detection.anchors import SpineNetAnchorGenerator
from torchspine.models.detection.maskrcnn import SpineNetMaskRCNN
from torchspine.models.detection.retinanet import SpineNetRetinaNet
from torchspine.models.detection.transform import DetectionTransform, to_rgb_float
from torchspine.analysis.profile import count_macs, count_params


TINY = dict(filter_size_scale=0.25, endpoints_num_filters=32, head_num_filters=32, image_size=256)


def tiny_retinanet(**kw) -> SpineNetRetinaNet:
    torch.manual_seed(0)
    return create_model("retinanet_spinenet49s", **{**TINY, **kw})


def tiny_maskrcnn(**kw) -> SpineNetMaskRCNN:
    torch.manual_seed(0)
    return create_model("maskrcnn_spinenet49s", **{**TINY, "rpn_num_filters": 32, "fc_dims": 64, **kw})


# ------------------------------------------------------------------------------- anchors
def test_anchors_level3_match_hand_computed_boxes():
    # tensorflow/tpu models/official/detection/dataloader/anchor.py: base = anchor_size * 2**level * 2**(k/3); w =
    # base*sqrt(ar), h = base/sqrt(ar);
    # centre = stride/2 + n*stride; scale-major then aspect per location. By hand for level 3,
    # anchor_size 3: stride 8, centre (4, 4); bases 24, 24*2^(1/3) = 30.2381, 24*2^(2/3) = 38.0976.
    gen = SpineNetAnchorGenerator(3, 3, anchor_size=3.0, num_scales=3, aspect_ratios=(0.5, 1.0, 2.0))
    anchors = gen.grid_anchors_for([(2, 2)], dtype=torch.float64, device=torch.device("cpu"))[0]
    assert anchors.shape == (2 * 2 * 9, 4)
    expected_first_cell = {
        0: (-4.4853, -12.9706, 12.4853, 20.9706),  # k=0, ar=0.5: w 16.9706, h 33.9411
        1: (-8.0, -8.0, 16.0, 16.0),  # k=0, ar=1: 24 x 24
        4: (-11.1191, -11.1191, 19.1191, 19.1191),  # k=1, ar=1: 30.2381 x 30.2381
        8: (-22.9394, -9.4697, 30.9394, 17.4697),  # k=2, ar=2: w 53.8787, h 26.9394
    }
    for idx, box in expected_first_cell.items():
        torch.testing.assert_close(anchors[idx], torch.tensor(box, dtype=torch.float64), atol=1e-3, rtol=0)
    # Location (y=0, x=1) is the next 9 anchors, shifted by one stride in x.
    torch.testing.assert_close(anchors[9 + 1], torch.tensor([0.0, -8.0, 24.0, 16.0], dtype=torch.float64))
    # Location (y=1, x=0): shifted by one stride in y.
    torch.testing.assert_close(anchors[18 + 1], torch.tensor([-8.0, 0.0, 16.0, 24.0], dtype=torch.float64))


def test_anchor_strides_do_not_depend_on_padding():
    # A 250 px image has a ceil(250/8) = 32 px P3 grid; the stride must stay 8 (not 250 // 32 = 7).
    from torchvision.models.detection.image_list import ImageList

    gen = SpineNetAnchorGenerator(3, 4, anchor_size=3.0)
    images = ImageList(torch.zeros(1, 3, 250, 250), [(250, 250)])
    anchors = gen(images, [torch.zeros(1, 8, 32, 32), torch.zeros(1, 8, 16, 16)])[0]
    assert anchors.shape == ((32 * 32 + 16 * 16) * 9, 4)
    p4 = anchors[32 * 32 * 9:]
    centres = (p4[:, :2] + p4[:, 2:]) / 2
    torch.testing.assert_close(centres[9], torch.tensor([16.0 + 8.0, 8.0]))  # P4 column 1: 16/2 + 16
    torch.testing.assert_close(centres[-1], torch.tensor([8.0 + 15 * 16, 8.0 + 15 * 16]))


# ------------------------------------------------------------------------------- head
def test_initial_class_probabilities_are_prior():
    # Official init: class bias -log((1-0.01)/0.01), predictor N(0, 1e-5) -> p = 0.01 everywhere.
    model = tiny_retinanet().eval()
    with torch.no_grad():
        out = model.forward_dense(torch.randn(1, 3, 256, 256))
    probs = out["cls_logits"].sigmoid()
    assert probs.shape[-1] == 91
    torch.testing.assert_close(probs, torch.full_like(probs, 0.01), atol=1e-4, rtol=0)
    assert out["bbox_regression"].abs().max() < 1e-2


def test_head_convs_shared_and_bn_per_level():
    model = tiny_retinanet()
    tower = model.head.cls_tower
    assert len(tower.convs) == 4 and len(tower.norms) == 5  # 4 shared convs, BN for each of P3..P7
    norms_before = [[bn.bias.detach().clone() for bn in level] for level in tower.norms]
    assert all(torch.equal(norms_before[0][0], norms_before[lvl][0]) for lvl in range(5))  # all start at 0
    images = [torch.rand(3, 256, 256), torch.rand(3, 256, 256)]
    targets = [{"boxes": torch.tensor([[30.0, 40.0, 120.0, 150.0]]), "labels": torch.tensor([5])}] * 2
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    loss = sum(model(images, targets).values())
    loss.backward()
    opt.step()
    # Gradients reach the head's BN through predictors initialised at N(0, 1e-5), so the updates are
    # tiny: compare BN beta (starts at 0, so small updates stay representable) exactly, and check
    # every level got its own non-zero gradient.
    grads = [tower.norms[lvl][0].bias.grad for lvl in range(5)]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    after = [tower.norms[lvl][0].bias.detach() for lvl in range(5)]
    for lvl in range(1, 5):
        assert not torch.equal(grads[0], grads[lvl])
        assert not torch.equal(after[0], after[lvl]), f"BN of level {lvl + 3} equals BN of P3 after a step"
    # Each level's BN keeps its own running statistics too.
    assert not torch.allclose(tower.norms[0][0].running_mean, tower.norms[4][0].running_mean)


def test_losses_follow_official_normalisation():
    # Hand check: one anchor set, everything negative -> focal sum / (0 + 1) and zero box loss.
    model = tiny_retinanet()
    head = model.head
    logits = torch.full((1, 4, 91), -2.0)
    outputs = {"cls_logits": logits, "bbox_regression": torch.zeros(1, 4, 4)}
    anchors = [torch.tensor([[0.0, 0, 10, 10]] * 4)]
    matched = [torch.full((4,), -1)]
    losses = head.compute_loss([{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}],
                               outputs, anchors, matched)
    p = 1 / (1 + math.exp(2.0))
    per = (1 - 0.25) * p**1.5 * -math.log(1 - p)  # focal loss of a negative, alpha 0.25, gamma 1.5
    assert losses["classification"].item() == pytest.approx(4 * 91 * per, rel=1e-5)
    assert losses["bbox_regression"].item() == 0.0
    # One positive with delta error 0.2 on x: Huber(0.2, delta 0.1) = 0.1*0.2 - 0.5*0.01 = 0.015;
    # weighted 50 / (4 * (1 + 1)).
    gt = torch.tensor([[0.0, 0, 10, 10]])
    deltas = torch.zeros(1, 4, 4)
    deltas[0, 0, 0] = 0.2
    losses = head.compute_loss([{"boxes": gt, "labels": torch.tensor([1])}],
                               {"cls_logits": logits, "bbox_regression": deltas}, anchors,
                               [torch.tensor([0, -1, -1, -1])])
    assert losses["bbox_regression"].item() == pytest.approx(50 * 0.015 / 8, rel=1e-5)


# ------------------------------------------------------------------------------- input handling
def test_transform_long_side_resize_square_pad_and_box_mapping():
    t = DetectionTransform(256).eval()
    images, _ = t([torch.rand(3, 100, 200), torch.rand(1, 50, 40), torch.rand(4, 64, 64)])
    assert images.tensors.shape == (3, 3, 256, 256)  # paper: padded to a square of the target size
    # long side -> 256; the short side rounded as the official resize_and_crop_image does:
    # 40 * 256 / 50 = 204.8 -> 205 (torchvision's floor gave 204).
    assert images.image_sizes == [(128, 256), (256, 205), (256, 256)]
    # zero padding (in normalised space) below the first image
    assert images.tensors[0, :, 128:, :].abs().max() == 0
    det = [{"boxes": torch.tensor([[0.0, 0.0, 256.0, 128.0]])}]
    back = t.postprocess(det, [images.image_sizes[0]], [(100, 200)])
    torch.testing.assert_close(back[0]["boxes"], torch.tensor([[0.0, 0.0, 200.0, 100.0]]))


def test_to_rgb_float_converts_gray_rgba_uint8():
    gray = torch.full((1, 5, 6), 255, dtype=torch.uint8)
    assert torch.equal(to_rgb_float(gray), torch.ones(3, 5, 6))
    rgba = torch.rand(4, 5, 6)
    assert torch.equal(to_rgb_float(rgba), rgba[:3])
    assert to_rgb_float(torch.rand(5, 6)).shape == (3, 5, 6)
    with pytest.raises(ValueError, match="channels"):
        to_rgb_float(torch.rand(5, 5, 6))


def test_resize_mode_is_a_setting():
    with pytest.raises(ValueError, match="resize_mode"):
        DetectionTransform(256, resize_mode="stretch")
    t = DetectionTransform(256, resize_mode="none").eval()
    images, _ = t([torch.rand(3, 100, 200)])
    assert images.image_sizes == [(100, 200)] and images.tensors.shape[-2:] == (128, 256)


# ------------------------------------------------------------------------------- outputs
def _format(out: list[dict[str, torch.Tensor]]) -> list[dict[str, tuple]]:
    return [{k: (v.dtype, v.dim(), tuple(v.shape[1:])) for k, v in sorted(d.items())} for d in out]


def test_eval_outputs_have_torchvision_format_and_original_coordinates():
    images = [torch.rand(3, 96, 160), torch.rand(1, 120, 72), torch.rand(4, 80, 80)]
    ours = tiny_retinanet(score_thresh=0.0).eval()
    theirs = torchvision.models.detection.retinanet_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=91, min_size=128, max_size=128, score_thresh=0.0).eval()
    with torch.no_grad():
        a = ours(images)
        b = theirs([to_rgb_float(i) for i in images])
    assert _format(a)[0] == _format(b)[0]  # same keys, dtypes and per-row shapes
    for det, img in zip(a, images):
        assert len(det["boxes"]) > 0
        h, w = img.shape[-2:]
        assert det["boxes"][:, 2].max() <= w and det["boxes"][:, 3].max() <= h  # original coordinates
        assert det["labels"].dtype == torch.int64


def test_maskrcnn_train_losses_and_eval_format():
    model = tiny_maskrcnn(score_thresh=0.0)
    masks = torch.zeros(1, 200, 240, dtype=torch.uint8)
    masks[0, 20:120, 10:100] = 1
    target = {"boxes": torch.tensor([[10.0, 20.0, 100.0, 120.0]]), "labels": torch.tensor([3]), "masks": masks}
    losses = model([torch.rand(3, 200, 240), torch.rand(3, 200, 240)], [target, target])
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    sum(losses.values()).backward()
    assert model.rpn.head.norms[0].weight.grad is not None and len(model.rpn.head.norms) == 5
    model.eval()
    theirs = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=91, min_size=128, max_size=128, box_score_thresh=0.0).eval()
    image = torch.rand(3, 100, 150)
    with torch.no_grad():
        a, b = model([image]), theirs([image])
    assert set(a[0]) == set(b[0]) == {"boxes", "labels", "scores", "masks"}
    assert a[0]["masks"].shape[1:] == (1, 100, 150) and a[0]["masks"].dtype == b[0]["masks"].dtype


# ------------------------------------------------------------------------------- training works
def test_few_steps_on_three_boxes_drive_loss_down_and_detect_them():
    model = tiny_retinanet(momentum=0.5)  # fast BN running averages so eval matches the trained state
    image = torch.rand(3, 256, 256) * 0.2
    boxes = torch.tensor([[20.0, 24, 100, 120], [140, 40, 236, 104], [80, 152, 200, 240]])
    labels = torch.tensor([1, 2, 3])
    for (x1, y1, x2, y2), colour in zip(boxes.long().tolist(), [(1.0, 0, 0), (0, 1.0, 0), (0, 0, 1.0)]):
        image[:, y1:y2, x1:x2] = torch.tensor(colour)[:, None, None]
    flipped = image.flip(-1)
    flipped_boxes = torch.stack([256 - boxes[:, 2], boxes[:, 1], 256 - boxes[:, 0], boxes[:, 3]], dim=1)
    batch = [image, flipped]
    targets = [{"boxes": boxes, "labels": labels}, {"boxes": flipped_boxes, "labels": labels}]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    history = []
    for _ in range(40):
        loss = sum(model(batch, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    assert history[-1] < 0.2 * history[0], history
    model.eval()
    with torch.no_grad():
        det = model([image])[0]
    top = slice(0, 3)
    iou = box_iou(boxes, det["boxes"][top])
    best = iou.argmax(dim=1)
    assert (iou.max(dim=1).values > 0.7).all(), (det["boxes"][top], iou)
    assert torch.equal(det["labels"][top][best], labels)
    assert (det["scores"][top] > 0.5).all()


# ------------------------------------------------------------------------------- sizes
# Official trainable parameters (RetinaNet 91 classes: the official TPU graphs' trainable variables;
# tensorflow/tpu models/official/detection/MODEL_ZOO.md 11.9*, 28.5, 43.0, 67.0, 163.6 M; *49S's zoo figure is not
# reproducible).
RETINANET_PARAMS = {
    "49s": 11_265_942, "49": 28_543_383, "96": 42_974_871, "143": 66_959_511, "190": 163_637_351,
}
# Official multiply-adds (tf.profiler totals incl. head, official TPU graphs) at 640 / 1024 / 1280 / 1280.
RETINANET_MACS = {"49": 85.57e9, "96": 266.05e9, "143": 525.49e9, "190": 1885.42e9}
# Official Mask R-CNN trainable parameters (TPU MODEL_ZOO.md 40.8 / 55.2 / 79.2 M; exact: the official graphs).
MASKRCNN_PARAMS = {"49": 40_753_521, "96": 55_185_009, "143": 79_169_649}


@pytest.mark.parametrize("model_id", sorted(RETINANET_PARAMS))
def test_retinanet_parameter_counts_exact(model_id):
    with torch.device("meta"):
        model = create_model(f"retinanet_spinenet{model_id}")
    assert count_params(model) == RETINANET_PARAMS[model_id]


@pytest.mark.parametrize("model_id", sorted(MASKRCNN_PARAMS))
def test_maskrcnn_parameter_counts(model_id):
    with torch.device("meta"):
        model = create_model(f"maskrcnn_spinenet{model_id}")
    n = count_params(model)
    assert abs(n - MASKRCNN_PARAMS[model_id]) <= 0.02 * MASKRCNN_PARAMS[model_id]
    assert n == MASKRCNN_PARAMS[model_id]  # the layout in models/maskrcnn.py reproduces them exactly


def test_maskrcnn190_matches_official_168_2m():
    # tensorflow/tpu models/official/detection/configs/spinenet/spinenet190_mrcnn.yaml: RPN of 384
    # filters (heads.py RpnHead builds one conv whatever num_convs says), box head 7 convs of 384 +
    # one fc of 1024, mask head 7 convs of 384; SpineNet-190 endpoints are 512 wide. By hand, 91 classes:
    backbone = 126_587_664  # SpineNet-190 + endpoints (official, test_backbone.py)
    conv = lambda i, o, k=3: i * o * k * k + o  # noqa: E731  (with bias)
    bn = lambda c: 2 * c  # noqa: E731
    rpn = conv(512, 384) + 5 * bn(384) + conv(384, 3, 1) + conv(384, 12, 1)
    box = (conv(512, 384) + bn(384) + 6 * (conv(384, 384) + bn(384)) + (384 * 49 * 1024 + 1024) + bn(1024)
           + (1024 * 91 + 91) + (1024 * 364 + 364))
    mask = (conv(512, 384) + bn(384) + 6 * (conv(384, 384) + bn(384)) + (384 * 384 * 4 + 384) + bn(384)
            + conv(384, 91, 1))
    assert (rpn, box, mask) == (1_779_471, 29_477_191, 10_366_171)
    with torch.device("meta"):
        model = create_model("maskrcnn_spinenet190")
    assert count_params(model.rpn.head) == rpn
    assert count_params(model.roi_heads.box_head) + count_params(model.roi_heads.box_predictor) == box
    assert count_params(model.roi_heads.mask_head) + count_params(model.roi_heads.mask_predictor) == mask
    n = count_params(model)
    assert n == backbone + rpn + box + mask == 168_210_497
    assert round(n / 1e6, 1) == 168.2  # TPU MODEL_ZOO.md: 168.2M


def test_maskrcnn_uses_official_bn_by_default():
    # spinenet*_mrcnn.yaml: batch_norm_momentum 0.99, batch_norm_epsilon 0.001 (PyTorch momentum 0.01);
    # the RetinaNet presets keep the codebase default 0.997 / 1e-4. Callers may still set their own.
    with torch.device("meta"):
        mrc = create_model("maskrcnn_spinenet49s", filter_size_scale=0.25)
        ret = create_model("retinanet_spinenet49s", filter_size_scale=0.25)
        own = create_model("maskrcnn_spinenet49s", filter_size_scale=0.25, momentum=0.997)
    bns = [m for m in mrc.modules() if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d))]
    assert bns and all(m.momentum == pytest.approx(0.01) and m.eps == 1e-3 for m in bns)  # backbone and heads
    assert (ret.backbone.spec.norm.momentum, ret.backbone.spec.norm.epsilon) == (0.997, 1e-4)
    assert (own.backbone.spec.norm.momentum, own.backbone.spec.norm.epsilon) == (0.997, 1e-3)


def test_maskrcnn_head_init_follows_official_heads():
    # tensorflow/tpu models/official/detection/modeling/architecture/heads.py: box and mask head convs,
    # the deconv and mask_fcn_logits use VarianceScaling(scale=2, mode='fan_out', normal):
    # std = sqrt(2 / (k * k * out_channels)); fc6 is tf.layers.dense (Glorot uniform, bound
    # sqrt(6 / (fan_in + fan_out))); RPN convs N(0, 0.01); class / box predictors N(0, 0.01) / N(0, 0.001).
    torch.manual_seed(0)
    model = create_model("maskrcnn_spinenet49s", filter_size_scale=0.25, endpoints_num_filters=32, fc_dims=256)
    roi = model.roi_heads

    def std(t):
        return t.detach().float().std().item()

    assert std(roi.mask_head.convs[1][0].weight) == pytest.approx(math.sqrt(2 / (9 * 256)), rel=0.03)
    assert std(roi.box_head.convs[1][0].weight) == pytest.approx(math.sqrt(2 / (9 * 256)), rel=0.03)
    assert std(roi.mask_head.deconv.weight) == pytest.approx(math.sqrt(2 / (4 * 256)), rel=0.03)
    assert std(roi.mask_predictor.weight) == pytest.approx(math.sqrt(2 / 91), rel=0.03)
    bound = math.sqrt(6 / (256 * 49 + 256))
    fc = roi.box_head.fc.weight
    assert fc.abs().max().item() <= bound and std(fc) == pytest.approx(bound / math.sqrt(3), rel=0.03)
    assert std(model.rpn.head.conv.weight) == pytest.approx(0.01, rel=0.03)
    assert std(roi.box_predictor.cls_score.weight) == pytest.approx(0.01, rel=0.03)
    assert std(roi.box_predictor.bbox_pred.weight) == pytest.approx(0.001, rel=0.03)


def test_parts_are_passed_in_torchvision_style():
    from torchspine.models.detection.heads import RetinaNetHead

    torch.manual_seed(0)
    backbone = create_model("spinenet49s", filter_size_scale=0.25, endpoints_num_filters=16)
    anchors = SpineNetAnchorGenerator(3, 7, anchor_size=2.0, num_scales=2, aspect_ratios=(1.0,))
    head = RetinaNetHead(16, 2, 5, num_filters=8, num_convs=1, separable=True)
    model = SpineNetRetinaNet(backbone, 5, anchor_generator=anchors, head=head, image_size=128)
    assert model.head is head and model.anchor_generator is anchors
    with torch.no_grad():
        out = model.eval().forward_dense(torch.randn(1, 3, 128, 128))
    # 2 anchors per location on 16^2 + 8^2 + 4^2 + 2^2 + 1 cells, 5 classes.
    assert out["cls_logits"].shape == (1, 2 * (256 + 64 + 16 + 4 + 1), 5)


def test_separable_head_is_built_separable():
    # SpineNet-Mobile (paper Appendix A): every tower conv and both predictors are depthwise 3x3 +
    # pointwise 1x1; no plain 3x3 conv is built in the head at all.
    with torch.device("meta"):
        det = create_model("retinanet_spinenet_mobile49xs")
    convs = [m for m in det.head.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.kernel_size == (1, 1) or c.groups == c.in_channels for c in convs)
    assert len(convs) == 2 * (2 * 4 + 2)  # (depthwise + pointwise) x (2 towers x 4 convs + 2 predictors)


def test_one_preset_table_registers_every_detector():
    from torchspine.models.detection.zoo import DETECTOR_PRESETS
    from torchspine.models.registry import list_models, model_info

    detectors = set(list_models(task="detector")) | set(list_models(task="instance_segmentation"))
    assert detectors - set(DETECTOR_PRESETS) == {"retinanet_spinenet", "maskrcnn_spinenet"}  # the any-spec builders
    for name, preset in DETECTOR_PRESETS.items():
        info = model_info(name)
        assert (info.input_size, info.family, info.preset) == (preset.image_size, preset.family, preset.backbone)


@pytest.mark.parametrize("model_id", sorted(RETINANET_MACS))
def test_retinanet_macs_within_one_percent(model_id):
    with torch.device("meta"):
        model = create_model(f"retinanet_spinenet{model_id}")
    size = model.image_size
    macs = count_macs(model, torch.empty(1, 3, size, size, device="meta"), forward=model.forward_dense)
    assert abs(macs - RETINANET_MACS[model_id]) <= 0.01 * RETINANET_MACS[model_id], macs / 1e9


def test_unknown_keyword_is_rejected():
    with pytest.raises(ValueError, match="unknown spec field"):
        create_model("retinanet_spinenet49s", not_a_setting=1)


def test_postprocess_equals_torchvision_with_background_removed():
    # Our top-k-on-logits post-processing must give torchvision's result exactly (with class 0,
    # background, masked out for torchvision); logits ~ N(0, 1.5) avoid float32 score ties at 1.0.
    from torchvision.models.detection import RetinaNet

    torch.manual_seed(0)
    model = tiny_retinanet(score_thresh=0.3, topk_candidates=200, postprocess="per_level")
    sizes = [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]
    anchors = model.anchor_generator.grid_anchors_for(sizes, dtype=torch.float32, device=torch.device("cpu"))
    logits = [torch.randn(2, h * w * 9, 91) * 1.5 for h, w in sizes]
    deltas = [torch.randn(2, h * w * 9, 4) * 0.2 for h, w in sizes]
    shapes = [(256, 200), (180, 256)]
    ours = model.postprocess_detections({"cls_logits": logits, "bbox_regression": deltas}, [anchors] * 2, shapes)
    masked = []
    for lg in logits:
        lg = lg.clone()
        lg[..., 0] = float("-inf")
        masked.append(lg)
    ref = RetinaNet.postprocess_detections(model, {"cls_logits": masked, "bbox_regression": deltas}, [anchors] * 2,
                                           shapes)
    for a, b in zip(ours, ref):
        assert len(a["boxes"]) == 100
        for k in ("boxes", "scores", "labels"):
            assert torch.equal(a[k], b[k]), k


def test_detectors_accept_any_backbone_spec(tmp_path):
    # A search result (JSON file or genome) becomes a detector with a preset's head settings:
    # create_model("retinanet_spinenet", spec="best.json") (the search proxy task, paper section 4.1).
    from torchspine.specs import spinenet_spec

    spec = spinenet_spec("49s", filter_size_scale=0.25, endpoints_num_filters=16)
    spec.save(tmp_path / "best.json")
    with torch.device("meta"):
        det = create_model("retinanet_spinenet", spec=str(tmp_path / "best.json"), preset="49s", num_classes=5)
        mrc = create_model("maskrcnn_spinenet", spec=spec.to_genome(), num_classes=5)
    assert det.backbone.spec.scaling == spec.scaling
    # 49S preset head: 4 convs of 128 filters (paper section 4.1); the box tower's first conv
    # reads the 16 endpoint filters of this spec.
    assert det.head.box_tower.convs[0].weight.shape == (128, 16, 3, 3)
    # Mask R-CNN keeps its official BN setting (0.99 / 1e-3) on a custom spec too.
    assert (mrc.backbone.spec.norm.momentum, mrc.backbone.spec.norm.epsilon) == (0.99, 1e-3)
    with pytest.raises(ValueError, match="preset"):
        create_model("retinanet_spinenet", spec=spec, preset="50")
