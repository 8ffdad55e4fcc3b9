"""Detection transforms keep boxes and masks aligned.

Expected boxes are computed by hand from the geometry of each case; the random crop offset
is read back from the pixels (a coordinate-gradient image), not from the implementation.
"""

import torch

from torchspine.data.transforms import (IMAGENET_MEAN, RandomHorizontalFlip, ScaleJitterCrop, build_train_transforms)


def _gen(seed=0):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def _mask_box(mask):
    ys, xs = mask.nonzero(as_tuple=True)
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def test_flip_boxes_and_masks():
    img = torch.rand(3, 60, 100)
    masks = torch.zeros(1, 60, 100, dtype=torch.uint8)
    masks[0, 20:40, 10:30] = 1
    target = {"boxes": torch.tensor([[10.0, 20.0, 30.0, 40.0]]), "labels": torch.tensor([1]), "masks": masks}
    out, t = RandomHorizontalFlip(1.0)(img, target, _gen())
    # width 100: x -> 100 - x, so [10, 30] becomes [70, 90]
    assert t["boxes"].tolist() == [[70.0, 20.0, 90.0, 40.0]]
    assert _mask_box(t["masks"][0]) == [70, 20, 90, 40]
    assert torch.equal(out[:, :, 0], img[:, :, 99])


def test_flip_probability_zero_is_identity():
    img = torch.rand(3, 8, 8)
    target = {"boxes": torch.tensor([[1.0, 2.0, 3.0, 4.0]])}
    out, t = RandomHorizontalFlip(0.0)(img, target, _gen())
    assert torch.equal(out, img) and t["boxes"].tolist() == [[1.0, 2.0, 3.0, 4.0]]


def test_scale_up_and_random_crop_follow_boxes_and_masks():
    # 50x50 image, jitter fixed at 2.0, output 50: resize to 100x100, then a random 50x50 crop.
    h = w = 50
    img = torch.zeros(3, h, w)
    img[0] = torch.arange(w).float()[None, :].expand(h, w) / 100.0  # x coordinate
    img[1] = torch.arange(h).float()[:, None].expand(h, w) / 100.0  # y coordinate
    masks = torch.zeros(2, h, w, dtype=torch.uint8)
    masks[0, 10:30, 10:30] = 1
    masks[1, 20:25, 5:45] = 1
    target = {"boxes": torch.tensor([[10.0, 10.0, 30.0, 30.0], [5.0, 20.0, 45.0, 25.0]]),
              "labels": torch.tensor([1, 2]), "masks": masks}
    for seed in range(5):
        out, t = ScaleJitterCrop(50, (2.0, 2.0))(img, target, _gen(seed))
        assert out.shape == (3, 50, 50)
        # After a 2x bilinear upscale, output pixel 0 of the crop sits at source x = (left + 0.5) / 2 - 0.5.
        left = round((float(out[0, 25, 0]) * 100.0 + 0.5) * 2 - 0.5)
        top = round((float(out[1, 0, 25]) * 100.0 + 0.5) * 2 - 0.5)
        expected = []
        for x0, y0, x1, y1 in ([20, 20, 60, 60], [10, 40, 90, 50]):  # boxes x2
            bx = [min(max(x0 - left, 0), 50), min(max(y0 - top, 0), 50),
                  min(max(x1 - left, 0), 50), min(max(y1 - top, 0), 50)]
            if bx[2] - bx[0] >= 1 and bx[3] - bx[1] >= 1:
                expected.append(bx)
        assert torch.allclose(t["boxes"], torch.tensor(expected, dtype=torch.float32).reshape(-1, 4)), (seed, left, top)
        assert len(t["labels"]) == len(expected) == t["masks"].shape[0]
        for box, m in zip(expected, t["masks"]):
            assert _mask_box(m) == box  # nearest 2x upscale keeps the mask exactly on the box


def test_scale_down_pads_with_mean_and_keeps_boxes():
    # 100x200 (h x w), jitter 0.5, output 100: the long side 200 goes to 0.5 * 100 = 50
    img = torch.rand(3, 100, 200)
    masks = torch.zeros(1, 100, 200, dtype=torch.uint8)
    masks[0, 40:80, 20:60] = 1
    target = {"boxes": torch.tensor([[20.0, 40.0, 60.0, 80.0]]), "labels": torch.tensor([3]), "masks": masks}
    out, t = ScaleJitterCrop(100, (0.5, 0.5))(img, target, _gen())
    # scale = 0.5 * 100 / 200 = 0.25: image 25 x 50, boxes / 4, padded bottom/right to 100 x 100
    assert out.shape == (3, 100, 100)
    assert t["boxes"].tolist() == [[5.0, 10.0, 15.0, 20.0]]
    assert _mask_box(t["masks"][0]) == [5, 10, 15, 20]
    assert t["masks"].shape == (1, 100, 100)
    pad = out[:, 30:, :]
    assert torch.allclose(pad, torch.tensor(IMAGENET_MEAN)[:, None, None].expand_as(pad))


def test_boxes_outside_the_crop_are_dropped():
    img = torch.rand(3, 50, 50)
    # one box in each corner quadrant; after 4x upscale (200x200) a 50x50 crop sees at most ~2 of them
    target = {"boxes": torch.tensor([[0.0, 0.0, 5.0, 5.0], [45.0, 45.0, 50.0, 50.0]]), "labels": torch.tensor([1, 2])}
    for seed in range(10):
        _, t = ScaleJitterCrop(50, (4.0, 4.0))(img, target, _gen(seed))
        assert len(t["boxes"]) <= 1  # the two boxes are 160 px apart after scaling: never both in a 50 px crop
        assert len(t["labels"]) == len(t["boxes"])
        assert ((t["boxes"][:, 2:] - t["boxes"][:, :2]) >= 1).all()


def test_train_pipeline_is_deterministic_per_generator():
    img = torch.rand(3, 64, 48)
    target = {"boxes": torch.tensor([[4.0, 4.0, 20.0, 30.0]]), "labels": torch.tensor([1])}
    tf = build_train_transforms(64, scale_range=(0.5, 2.0))
    a = tf(img, target, _gen(7))
    b = tf(img, target, _gen(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"])
