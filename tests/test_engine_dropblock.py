"""DropBlock where the official SpineNet code puts it (tensorflow/tpu
models/official/detection/modeling/architecture/spinenet.py passes one ``dropblock`` to every
block group; nn_blocks.py applies it after each BN of a block and to its shortcut), as modules
that leave the state dict alone, at any input size and block size."""

from __future__ import annotations

import pytest
import torch

from torchspine import create_model
from torchspine.layers.dropout import DropBlock, add_dropblock, sample_noise

TINY = {"filter_size_scale": 0.125, "endpoints_num_filters": 16, "head_num_filters": 16, "head_num_convs": 1}


def _count_expected() -> int:
    # By hand from the SpineNet-49 block list (paper Figure 4 / the official SPINENET_BLOCK_SPECS):
    # 2 stem bottleneck groups + 11 bottleneck and 4 residual scale-permuted blocks, one block each.
    # A bottleneck has 3 conv BNs + its shortcut (projected or identity) = 4 places; a residual
    # block 2 + 1 = 3. Nothing in the 30 resampling paths, the endpoints or the 7x7 stem conv.
    return 2 * 4 + 11 * 4 + 4 * 3


def test_placement_is_the_official_one_and_the_state_dict_keeps_its_keys():
    with torch.device("meta"):
        plain = create_model("retinanet_spinenet49s")
        model = create_model("retinanet_spinenet49s")
    assert add_dropblock(model, block_size=3, keep_prob=0.9) == _count_expected() == 64
    names = [n for n, m in model.named_modules() if isinstance(m, DropBlock)]
    assert len(names) == 64
    assert not [n for n in names if "resample" in n or "endpoints" in n or n.startswith("backbone.stem.conv")]
    assert all(".group." in n or ".groups." in n for n in names)
    # No parameters or buffers: a model trained with DropBlock loads into one built without it.
    assert list(model.state_dict()) == list(plain.state_dict())


def test_runs_below_384_px_with_even_and_oversized_blocks():
    torch.manual_seed(0)
    model = create_model("retinanet_spinenet49s", num_classes=3, image_size=64, **TINY)
    add_dropblock(model, block_size=4, keep_prob=0.8)  # even; larger than the 1x1 / 2x2 maps of P6-P7
    model.train()
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 40.0, 40.0]]), "labels": torch.tensor([1])}] * 2
    losses = model(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())


def test_dropblock_drops_whole_blocks_and_keeps_the_expected_mean():
    db = DropBlock(block_size=3, keep_prob=0.9).train()
    x = torch.ones(2, 16, 40, 40)
    with sample_noise([1, 2]):
        y = db(x)
    # Kept units are rescaled by the kept fraction of their sample: each sample's mean stays 1.
    assert y.mean(dim=(1, 2, 3)).tolist() == pytest.approx([1.0, 1.0], abs=1e-5)
    dropped = float((y == 0).float().mean())
    # Official seed rate: (1 - keep) * HW / b^2 / ((H - b + 1)(W - b + 1)); 3x3 blocks of overlapping
    # seeds drop a little less than 1 - keep = 0.1 (measured 0.09-0.10 over seeds).
    assert 0.07 < dropped < 0.11
    # Every dropped unit lies in a fully dropped 3x3 block (min-pool of the seeds).
    zero = (y == 0).float()
    blocks = torch.nn.functional.avg_pool2d(zero, 3, 1)  # 1.0 where a whole 3x3 window is dropped
    covered = torch.nn.functional.max_pool2d(torch.nn.functional.pad((blocks > 0.999).float(), (2, 2, 2, 2)), 3, 1)
    assert torch.equal(covered * zero, zero)
    # Same sample seeds, same mask; evaluation and keep_prob 1 are the identity.
    with sample_noise([1, 2]):
        assert torch.equal(db(x), y)
    assert torch.equal(db.eval()(x), x)
    assert torch.equal(DropBlock(3, 1.0).train()(x), x)


def test_sample_keyed_noise_follows_the_samples_not_the_batch():
    from torchspine.layers.dropout import DropPath

    dp, db = DropPath(0.5).train(), DropBlock(3, 0.8).train()
    x = torch.ones(4, 2, 9, 9)
    with sample_noise([10, 11, 12, 13]):
        whole = db(dp(x))
    with sample_noise([10, 11]):
        first = db(dp(x[:2]))
    with sample_noise([12, 13]):
        second = db(dp(x[2:]))
    # What one process draws for a batch of 4 is what two draw for its halves.
    assert torch.equal(torch.cat([first, second]), whole)
    # Stochastic depth keeps or drops a whole sample, scaled by 1 / keep = 2.
    with sample_noise(list(range(64))):
        y = dp(torch.ones(64, 3, 2, 2))
    per_sample = y.flatten(1)
    assert all(set(row.tolist()) in ({0.0}, {2.0}) for row in per_sample)
    assert 16 < int((per_sample[:, 0] == 2.0).sum()) < 48  # Bernoulli(0.5) over 64 samples
