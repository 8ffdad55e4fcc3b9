"""Contract suite over every registered SpineNet backbone (issue #2, "Tests").

Parametrized over every name in ``list_models()`` whose builder returns a
:class:`torchspine.models.backbone.SpineNet` (found by building each model on the meta
device), so families registered later (Mobile, ResNeXt, ...) are picked up automatically.
Each model is built tiny (small ``filter_size_scale`` and endpoints, ``block_repeats`` kept).
"""

from __future__ import annotations

import functools

import pytest
import torch

from torchspine.models.backbone import SpineNet
from torchspine.models.registry import create_model, list_models
from torchspine.specs.spec import SpineNetSpec

# Tried in order; the first that builds is used (some families need wider minimum widths).
TINY_OVERRIDES = (
    {"filter_size_scale": 0.125, "endpoints_num_filters": 16},
    {"filter_size_scale": 0.25, "endpoints_num_filters": 16},
    {"filter_size_scale": 0.5, "endpoints_num_filters": 16},
    {"endpoints_num_filters": 16},
)

# Output sizes ceil(H / 2**level), worked out by hand (e.g. 333 / 8 = 41.6 -> 42).
EXPECTED_SIZES = {
    (128, 128): {3: (16, 16), 4: (8, 8), 5: (4, 4), 6: (2, 2), 7: (1, 1)},
    (96, 160): {3: (12, 20), 4: (6, 10), 5: (3, 5), 6: (2, 3), 7: (1, 2)},
    (200, 333): {3: (25, 42), 4: (13, 21), 5: (7, 11), 6: (4, 6), 7: (2, 3)},
}



def _backbone_names() -> list[str]:
    names = []
    for name in list_models():
        try:
            with torch.device("meta"):
                model = create_model(name)
        except TypeError:  # builders that need arguments (e.g. ``spinenet(spec=...)``)
            continue
        if isinstance(model, SpineNet):
            names.append(name)
    return names


BACKBONES = _backbone_names()


@functools.lru_cache(maxsize=None)
def _tiny_overrides(name: str) -> tuple[tuple[str, object], ...]:
    errors = []
    for ov in TINY_OVERRIDES:
        try:
            with torch.device("meta"):
                create_model(name, **ov)
            return tuple(ov.items())
        except ValueError as e:
            errors.append(str(e))
    raise AssertionError(f"{name}: no tiny configuration builds: {errors}")


def _tiny(name: str, **extra) -> SpineNet:
    torch.manual_seed(0)
    return create_model(name, **dict(_tiny_overrides(name)), **extra)


def test_registry_has_the_official_family() -> None:
    for name in ("spinenet49s", "spinenet49", "spinenet96", "spinenet143", "spinenet143l", "spinenet190",
                 "spinenet49s_paper"):
        assert name in BACKBONES


@pytest.mark.parametrize("name", BACKBONES)
def test_every_parameter_gets_a_gradient(name: str) -> None:
    # Stochastic depth off: with it, a block's branch may be dropped for the whole batch and
    # legitimately get a zero gradient (its rates are tested in test_backbone.py).
    model = _tiny(name).train()
    out = model(torch.randn(2, 3, 64, 64))
    g = torch.Generator().manual_seed(1)
    loss = sum((v * torch.randn(v.shape, generator=g)).mean() for v in out.values())
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: {pname} received no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: {pname} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name}: {pname} has an all-zero gradient"
    for v in out.values():
        assert torch.isfinite(v).all()


@pytest.mark.parametrize("name", BACKBONES)
def test_shapes_determinism_and_metadata(name: str) -> None:
    model = _tiny(name).eval()
    levels = list(range(model.spec.min_level, model.spec.max_level + 1))
    info = {d["module"]: d for d in model.feature_info}
    assert [d["level"] for d in model.feature_info] == levels
    for size in ((128, 128), (96, 160)):
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            a, b = model(x), model(x)
        assert list(a) == [f"p{lvl}" for lvl in levels]
        for k, v in a.items():
            lvl = int(k[1:])
            assert torch.equal(v, b[k]), f"{name}: eval forward is not deterministic at {k}"
            assert torch.isfinite(v).all()
            assert tuple(v.shape[-2:]) == EXPECTED_SIZES[size][lvl], (name, size, k)
            assert v.shape[1] == model.out_channels[k] == info[f"endpoints.{k}"]["num_chs"]
            assert model.strides[k] == 2**lvl == info[f"endpoints.{k}"]["reduction"]
            assert model.output_shape()[k] == (v.shape[1], 2**lvl)


@pytest.mark.parametrize("name", BACKBONES)
def test_spec_round_trips(name: str) -> None:
    with torch.device("meta"):
        model = create_model(name)
    spec = model.spec
    assert SpineNetSpec.from_json(spec.to_json()) == spec
    assert SpineNetSpec.from_genome(spec.to_genome()) == spec
    with torch.device("meta"):
        rebuilt = SpineNet(SpineNetSpec.from_genome(spec.to_genome()))
    assert [(n, p.shape) for n, p in rebuilt.named_parameters()] == [(n, p.shape) for n, p in model.named_parameters()]


def test_odd_size_200x333() -> None:
    model = _tiny("spinenet49").eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 200, 333))
    for k, v in out.items():
        assert tuple(v.shape[-2:]) == EXPECTED_SIZES[(200, 333)][int(k[1:])]
