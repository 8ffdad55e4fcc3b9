"""Pair the torch modules of a SpineNet with the variable prefixes of an official checkpoint.

* **tensorflow/tpu** (TF1 name-based; tensorflow/tpu ``models/official/detection/modeling/
  architecture/spinenet.py`` and ``spinenet_mbconv.py``): layers are created with
  ``tf.layers.conv2d`` / ``batch_normalization`` (and ``DepthwiseConv2D`` in the mobile
  resampling and blocks) without names, so TF numbers them ``conv2d_N`` / ``batch_normalization_N``
  per variable scope in creation order. The scopes are ``spinenet/`` (``spinenet_mbconv/``)
  for the stem and the endpoints (which continue the stem's counters),
  ``sub_policy{i}/resample_with_alpha_resample_{i}_{j}/`` (mobile:
  ``resample_with_sepconv_resample_{i}_{j}/``) and ``sub_policy{i}/scale_permuted_block_{i+2}/``.
  Each scope's layers are sorted by their counter and matched with the torch modules of the
  same scope in registration order, kind by kind (conv, depthwise conv, BN).
* **Model Garden** (TF2 object-based): ``layer_with_weights-N`` in Keras layer order, see
  :mod:`torchspine.interop.keras_order`.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict

from torch import nn

from torchspine.interop.keras_order import mg_units
from torchspine.interop.transfer import Unit, is_depthwise
from torchspine.layers.mbconv import ResampleSepConv
from torchspine.models.backbone import SpineNet

__all__ = ["find_mg_backbone_prefix", "mg_pairs", "tpu_pairs", "tpu_scopes"]

log = logging.getLogger(__name__)


def find_mg_backbone_prefix(names: set[str]) -> str:
    """The object path of the backbone: ``""``, ``"backbone/"``, ``"model/backbone/"`` ..."""
    cands = sorted({n[: n.index("layer_with_weights-0/")] for n in names if "layer_with_weights-0/" in n},
                   key=len)
    for c in cands:
        if f"{c}layer_with_weights-0/kernel" in names:
            return c
    raise ValueError("Model Garden checkpoint: no backbone found (no '.../layer_with_weights-0/kernel' variable)")


def mg_pairs(model: SpineNet, names: set[str], prefix: str) -> list[tuple[Unit, str]]:
    units = mg_units(model)
    n_ckpt = len({m.group(1) for n in names if n.startswith(prefix) and (m := re.match(
        re.escape(prefix) + r"layer_with_weights-(\d+)/", n))})
    if n_ckpt != len(units):
        log.debug("checkpoint has %d weight layers under %r, model %d", n_ckpt, prefix, len(units))
    return [(u, f"{prefix}layer_with_weights-{k}/") for k, u in enumerate(units)]


_TPU_LAYER_RE = re.compile(r"^(?P<scope>.*?)/?(?P<layer>conv2d|batch_normalization|depthwise_conv2d|separable_conv2d|"
                           r"dense)(?:_(?P<n>\d+))?/(?P<var>[^/]+)$")
_KIND = {"conv2d": "conv", "batch_normalization": "bn", "depthwise_conv2d": "dw"}


def tpu_scopes(names: set[str]) -> dict[str, dict[str, list[str]]]:
    """``{scope: {"conv": [layer prefixes in creation order], "bn": [...], "dw": [...]}}``."""
    found: dict[str, dict[str, set[tuple[int, str]]]] = defaultdict(lambda: defaultdict(set))
    for n in names:
        m = _TPU_LAYER_RE.match(n)
        if not m:
            continue
        kind = _KIND.get(m["layer"], m["layer"])
        num = int(m["n"]) if m["n"] else 0
        layer = f"{m['layer']}_{m['n']}" if m["n"] else m["layer"]
        scope = m["scope"]
        found[scope][kind].add((num, f"{scope}/{layer}/" if scope else f"{layer}/"))
    return {s: {k: [p for _, p in sorted(v)] for k, v in kinds.items()} for s, kinds in found.items()}


def _units_of(module: nn.Module, path: str) -> list[tuple[str, str]]:
    """(kind, torch path) of every conv/BN under ``module`` in build (registration) order."""
    out = []
    for name, mod in module.named_modules(prefix=path):
        if isinstance(mod, nn.Conv2d):
            out.append(("dw" if is_depthwise(mod) else "conv", name))
        elif isinstance(mod, nn.BatchNorm2d):
            out.append(("bn", name))
    return out


def _trailing_number(scope: str) -> int:
    m = re.search(r"(\d+)$", scope)
    return int(m.group(1)) if m else 0


def tpu_pairs(model: SpineNet, names: set[str]) -> tuple[list[tuple[Unit, str]], list[str], str]:
    """Pair torch convs/BNs with tensorflow/tpu layers by scope and creation order.

    Returns the pairs, structural problems (per-scope layer counts that differ) and the
    backbone's root scope (``".../spinenet/"``).
    """
    scopes = tpu_scopes(names)
    mobile = any(isinstance(b.resample[0], ResampleSepConv) for b in model.blocks)
    root = "spinenet_mbconv" if mobile else "spinenet"
    prefixed = [s for s in scopes if s == root or s.endswith("/" + root)]
    if not prefixed:
        raise ValueError(f"tensorflow/tpu checkpoint: no '{root}/' scope with conv2d/batch_normalization "
                         f"variables (scopes found: {sorted(scopes)[:8]})")
    base = min(prefixed, key=len)
    problems: list[str] = []
    groups: list[tuple[str, list[tuple[str, str]]]] = [
        (base, _units_of(model.stem, "stem") + [u for lvl in model.output_levels
                                                for u in _units_of(model.endpoints[f"p{lvl}"], f"endpoints.p{lvl}")])
    ]
    for i, block in enumerate(model.blocks):
        policy = f"{base}/sub_policy{i}"
        res_scopes = sorted((s for s in scopes if s.startswith(policy + "/") and "resample" in s),
                            key=_trailing_number)
        blk_scopes = [s for s in scopes if s.startswith(policy + "/") and "resample" not in s]
        for j in range(len(block.parents)):
            scope = res_scopes[j] if j < len(res_scopes) else f"{policy}/resample_{i}_{j}"
            groups.append((scope, _units_of(block.resample[j], f"blocks.{i}.resample.{j}")))
        groups.append((blk_scopes[0] if len(blk_scopes) == 1 else f"{policy}/scale_permuted_block_{i + 2}",
                       _units_of(block.group, f"blocks.{i}.group")))
    pairs: list[tuple[Unit, str]] = []
    for scope, units in groups:
        avail = scopes.get(scope, {})
        for kind in ("conv", "dw", "bn"):
            mine = [p for k, p in units if k == kind]
            theirs = avail.get(kind, [])
            if len(mine) != len(theirs):
                problems.append(f"scope {scope}/: model has {len(mine)} {kind} layers, checkpoint {len(theirs)}")
            for path, prefix in zip(mine, theirs):
                pairs.append((Unit("bn" if kind == "bn" else "conv", path), prefix))
    return pairs, problems, base + "/"
