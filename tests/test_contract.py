"""Contract suite over the registry: every backbone, detector and classifier.

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
from torchspine.models.registry import create_model, list_models, model_info
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


# ------------------------------------------------------------------ detectors and classifiers
# torchvision's test_detection_model style: train-mode loss dict finite and every parameter in the
# graph, eval outputs in range. Tiny widths, 64-96 px images, 4 classes (background + 3).
NUM_CLASSES = 4


def _buildable(task: str) -> list[str]:
    names = []
    for name in list_models(task=task):
        try:
            with torch.device("meta"):
                create_model(name, filter_size_scale=0.25, endpoints_num_filters=16)
        except TypeError:  # the any-spec builders (``retinanet_spinenet(spec=...)``) need a spec
            continue
        names.append(name)
    return names


DETECTORS = _buildable("detector") + _buildable("instance_segmentation")
CLASSIFIERS = _buildable("classifier")


def _tiny_task_model(name: str, **extra) -> torch.nn.Module:
    task = model_info(name).task
    settings: dict = {"num_classes": NUM_CLASSES}
    if task == "detector":
        settings.update(head_num_filters=16, image_size=96, score_thresh=0.0)
    elif task == "instance_segmentation":
        settings.update(rpn_num_filters=16, head_num_filters=16, fc_dims=32, image_size=96, score_thresh=0.0)
    errors = []
    for ov in TINY_OVERRIDES:
        try:
            torch.manual_seed(0)
            return create_model(name, **ov, **settings, **extra)
        except ValueError as e:
            errors.append(str(e))
    raise AssertionError(f"{name}: no tiny configuration builds: {errors}")


def _check_gradients(name: str, model: torch.nn.Module) -> None:
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: {pname} is not in the loss graph"
        assert torch.isfinite(p.grad).all(), f"{name}: {pname} has a non-finite gradient"
    for child_name, child in model.named_children():
        grads = [p.grad.abs().sum() for p in child.parameters()]
        assert not grads or sum(grads) > 0, f"{name}: every gradient of {child_name} is zero"


def test_registry_covers_every_task() -> None:
    assert "retinanet_spinenet49" in DETECTORS and "retinanet_spinenet_mobile49" in DETECTORS
    assert "maskrcnn_spinenet190" in DETECTORS and "spinenet49_cls" in CLASSIFIERS


@pytest.mark.parametrize("name", DETECTORS)
def test_detector_contract(name: str) -> None:
    model = _tiny_task_model(name).train()
    with_masks = model_info(name).task == "instance_segmentation"
    sizes = [(80, 96), (64, 72)]
    images = [torch.rand(3, h, w) for h, w in sizes]
    targets = []
    for h, w in sizes:
        boxes = torch.tensor([[4.0, 6.0, 0.6 * w, 0.7 * h], [0.3 * w, 0.2 * h, w - 2.0, h - 3.0]])
        target = {"boxes": boxes, "labels": torch.tensor([1, NUM_CLASSES - 1])}
        if with_masks:
            masks = torch.zeros(2, h, w, dtype=torch.uint8)
            for m, (x1, y1, x2, y2) in zip(masks, boxes.int().tolist()):
                m[y1:y2, x1:x2] = 1
            target["masks"] = masks
        targets.append(target)
    losses = model(images, targets)
    assert isinstance(losses, dict) and losses
    for key, value in losses.items():
        assert value.dim() == 0 and torch.isfinite(value), f"{name}: loss {key} = {value}"
    sum(losses.values()).backward()
    _check_gradients(name, model)

    model.eval()
    with torch.no_grad():
        outputs = model(images)
    assert len(outputs) == len(images)
    for (h, w), out in zip(sizes, outputs):
        expected = {"boxes", "labels", "scores"} | ({"masks"} if with_masks else set())
        assert set(out) == expected, name
        boxes, labels, scores = out["boxes"], out["labels"], out["scores"]
        k = len(boxes)
        assert k > 0, f"{name}: score_thresh 0 must leave detections"
        assert boxes.shape == (k, 4) and labels.shape == (k,) and scores.shape == (k,)
        assert torch.isfinite(boxes).all()
        # In the input image's coordinates, clipped to it.
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
        assert (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
        assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
        assert labels.dtype == torch.int64 and (labels >= 1).all() and (labels < NUM_CLASSES).all()  # 0: background
        assert (scores >= 0).all() and (scores <= 1).all()
        assert (scores[:-1] >= scores[1:]).all(), f"{name}: detections not sorted by score"
        if with_masks:
            assert out["masks"].shape == (k, 1, h, w)
            assert (out["masks"] >= 0).all() and (out["masks"] <= 1).all()


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_classifier_contract(name: str) -> None:
    model = _tiny_task_model(name).train()
    x = torch.randn(2, 3, 64, 64)
    logits = model(x)
    assert logits.shape == (2, NUM_CLASSES) and torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 3])).backward()
    _check_gradients(name, model)
    model.eval()
    with torch.no_grad():
        a, b = model(x), model(x)
    assert torch.equal(a, b), f"{name}: eval forward is not deterministic"
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, model.num_features)


# ------------------------------------------------------------------ the package and the registry
def test_import_torchspine_is_lazy() -> None:
    # ``import torchspine`` imports neither torch nor a model family (the CLI starts fast); the
    # registry loads the families (registry.MODEL_MODULES) on its first lookup.
    import os
    import subprocess
    import sys

    code = (
        "import sys, torchspine\n"
        "assert 'torch' not in sys.modules, 'import torchspine imported torch'\n"
        "assert not any(m.startswith('torchspine.models') for m in sys.modules)\n"
        "assert callable(torchspine.create_model) and 'torch' in sys.modules\n"
        "assert 'torchspine.models.detection.zoo' not in sys.modules\n"
        "print('ok')\n"
    )
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
    from torchspine.models import registry

    assert "retinanet_spinenet49" in list_models() and registry._loaded


def test_import_hook_runs_after_the_package_is_imported(tmp_path, monkeypatch) -> None:
    # The mechanism that registers the timm entry points when timm is imported (timm has no
    # plugin entry points), on a throw-away package so the test does not depend on import order.
    import sys

    from torchspine._timm_hook import on_import

    pkg = tmp_path / "hooked_pkg_xyz"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("VALUE = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []
    on_import("hooked_pkg_xyz", lambda: seen.append(sys.modules["hooked_pkg_xyz"].VALUE))
    on_import("hooked_pkg_xyz", lambda: seen.append("twice"))  # one hook per package name
    assert seen == []
    import hooked_pkg_xyz  # noqa: F401

    assert seen == [42]
    on_import("hooked_pkg_xyz", lambda: seen.append("now"))  # already imported: at once
    assert seen == [42, "now"]
    sys.modules.pop("hooked_pkg_xyz", None)


def test_find_backbone_in_any_model() -> None:
    from torchspine.models.backbone import find_backbone, named_backbone

    with torch.device("meta"):
        det = create_model("retinanet_spinenet49s")
        cls = create_model("spinenet49_cls")
        fpn = create_model("resnet50_fpn")
    assert find_backbone(det) is det.backbone and named_backbone(det)[0] == "backbone"
    assert find_backbone(cls) is cls.backbone
    assert find_backbone(det.backbone) is det.backbone and named_backbone(det.backbone)[0] == ""
    assert find_backbone(fpn) is None


def test_register_variant_names_documents_and_shows_keywords() -> None:
    import inspect

    from torchspine.models.registry import register_variant

    def build(model_id: str, *, width: int = 2, **spec_fields) -> torch.nn.Module:
        return torch.nn.Linear(width, len(model_id))

    fn = register_variant("test_variant_abc", build, "abc", doc="A test variant.", family="test")
    assert fn.__name__ == "test_variant_abc" and fn.__doc__ == "A test variant."
    assert list(inspect.signature(fn).parameters) == ["width", "spec_fields"]
    model = create_model("test_variant_abc", width=5)
    assert model.weight.shape == (3, 5) and model.torchspine_config == {"model": "test_variant_abc",
                                                                         "overrides": {"width": 5}}
    assert model_info("test_variant_abc").family == "test"


def test_resolve_device() -> None:
    from torchspine.utils import resolve_device

    if not torch.cuda.is_available():
        assert resolve_device("auto") == resolve_device(None) == torch.device("cpu")
        with pytest.raises(ValueError, match="'cuda:1'.*CUDA is not available"):
            resolve_device("cuda:1")
    else:
        assert resolve_device("cuda", local_rank=1) == torch.device("cuda:1")
    with pytest.raises(ValueError, match="'gpu0'"):
        resolve_device("gpu0")
