"""Official TensorFlow SpineNet checkpoints -> torchspine state dicts (reference section 10).

Two official codebases wrote SpineNet checkpoints, with different naming:

* **tensorflow/tpu** (``codebase="tpu"``, TF1 name-based): auto-named ``conv2d_N`` /
  ``batch_normalization_N`` variables whose counters are unique per variable scope
  (``spinenet/``, ``spinenet/sub_policy{i}/resample_with_alpha_resample_{i}_{j}/``,
  ``spinenet/sub_policy{i}/scale_permuted_block_{i+2}/``). The converter groups variables by
  scope and orders each scope's layers by their counter (= creation order), then matches
  them against the torchspine modules of the same scope in build order.
* **Model Garden** (``codebase="mg"``, TF2 object-based): the backbone is a Keras functional
  model, so its layers are saved as ``layer_with_weights-N`` in ``model.layers`` order, which
  Keras derives from the graph (layers sorted by their depth from the outputs, ties broken by
  a depth-first traversal). The converter rebuilds that graph from the torchspine model
  (every Keras layer the official builder creates, including weightless ones like
  ``tf.identity``, ``add_n`` and the ops of ``nearest_upsampling``) and runs Keras' ordering
  algorithm on it, so ``N`` is derived from the structure, not from fragile names. Blocks
  (``BottleneckBlock``, ``ResidualBlock``, ``InvertedBottleneckBlock``) keep their attribute
  names (``_conv1``, ``_norm1`` ...), which are stable.

Every variable is then checked by shape; any missing, extra or mismatched variable makes
:func:`convert_checkpoint` raise a ``ValueError`` that lists them, so a checkpoint of another
model size fails with that message rather than a shape error deep in ``load_state_dict``.

The converted model uses the padding convention of its codebase (``padding="symmetric"`` for
tensorflow/tpu, ``"same"`` for Model Garden) and its BN momentum/epsilon (0.997/1e-4 and
0.99/1e-3); the spec overrides are stored in the safetensors metadata, and
:func:`torchspine.models.saved.load_model` rebuilds the model from them.

Layout: TF conv kernels are HWIO -> ``permute(3, 2, 0, 1)``; depthwise ``[k, k, C, 1]`` ->
``permute(2, 3, 0, 1)``; BN gamma/beta/moving_mean/moving_variance -> weight/bias/
running_mean/running_var.

Reading a checkpoint needs TensorFlow (``pip install 'torchspine[tf]'``), either in this
process or in another interpreter (``tf_python=``), see :mod:`torchspine.interop.tf_checkpoint_dump`.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
import subprocess
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from torchspine.layers.blocks import BottleneckBlock, ResidualBlock
from torchspine.layers.conv import ConvNormAct
from torchspine.models.backbone import SpineNet, named_backbone
from torchspine.models.registry import create_model, is_model
from torchspine.specs.spec import CODEBASE_FLAVORS

__all__ = [
    "CODEBASE_DEFAULTS",
    "ConversionResult",
    "convert_checkpoint",
    "build_converted",
    "load_converted",
    "read_tf_checkpoint",
    "save_converted",
]

log = logging.getLogger(__name__)

Codebase = Literal["tpu", "mg"]

# Padding convention and BN settings of each codebase (reference sections 4 and 7).
CODEBASE_DEFAULTS: dict[str, dict[str, Any]] = CODEBASE_FLAVORS  # the one table, in torchspine.specs.spec

_TF2_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
_DUMP_SCRIPT = Path(__file__).with_name("tf_checkpoint_dump.py")
_MISSING_TF = (
    "reading a TensorFlow checkpoint needs TensorFlow: install the optional extra with "
    "`pip install 'torchspine[tf]'`, or point --tf-python (or TORCHSPINE_TF_PYTHON) at a Python "
    "interpreter that has tensorflow installed"
)


# ----------------------------------------------------------------------------- reading
def read_tf_checkpoint(path: str | os.PathLike, *, tf_python: str | None = None) -> dict[str, np.ndarray]:
    """All model variables of a TF checkpoint, names without the TF2 ``/.ATTRIBUTES/...`` suffix.

    Uses TensorFlow in this process when it is importable; otherwise (or when ``tf_python``
    or the ``TORCHSPINE_TF_PYTHON`` environment variable names an interpreter) runs
    :mod:`torchspine.interop.tf_checkpoint_dump` under that interpreter.
    """
    path = str(path)
    if not (os.path.exists(path) or os.path.exists(path + ".index") or os.path.isdir(path)):
        raise FileNotFoundError(f"checkpoint {path!r} not found (expected {path}.index or a checkpoint directory)")
    tf_python = tf_python or os.environ.get("TORCHSPINE_TF_PYTHON") or None
    if tf_python is None:
        try:
            import tensorflow  # noqa: F401
        except ImportError as e:
            raise ImportError(_MISSING_TF) from e
        from torchspine.interop.tf_checkpoint_dump import read_checkpoint

        raw = read_checkpoint(path)
    else:
        raw = _read_in_subprocess(path, tf_python)
    return {name[: -len(_TF2_SUFFIX)] if name.endswith(_TF2_SUFFIX) else name: v for name, v in raw.items()}


def _read_in_subprocess(path: str, tf_python: str) -> dict[str, np.ndarray]:
    if not os.path.exists(tf_python):
        raise FileNotFoundError(f"TensorFlow interpreter {tf_python!r} not found")
    with tempfile.TemporaryDirectory(prefix="torchspine-convert-") as tmp:
        out = os.path.join(tmp, "vars.npz")
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        proc = subprocess.run([tf_python, str(_DUMP_SCRIPT), path, out], capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            tail = proc.stderr.strip().splitlines()[-5:]
            if any("No module named 'tensorflow'" in line for line in tail):
                raise ImportError(f"{tf_python} has no tensorflow; " + _MISSING_TF)
            raise ValueError(f"reading checkpoint {path!r} with {tf_python} failed: " + " | ".join(tail))
        with np.load(out, allow_pickle=False) as data:
            names = json.loads(str(data["names"]))
            return {n: data[f"v{i}"] for i, n in enumerate(names)}


def detect_codebase(names: list[str] | set[str]) -> Codebase:
    """``"mg"`` for object-based names (``layer_with_weights-N``), ``"tpu"`` for ``spinenet/...``."""
    if any("layer_with_weights-" in n for n in names):
        return "mg"
    if any(n.startswith(("spinenet/", "spinenet_mbconv/")) or "/spinenet/" in n or "/spinenet_mbconv/" in n
           for n in names):
        return "tpu"
    sample = sorted(names)[:5]
    raise ValueError(f"cannot tell which official codebase wrote this checkpoint (no 'layer_with_weights-N' "
                     f"and no 'spinenet/' variables); first names: {sample}")


# ------------------------------------------------------------------ torch-side units
@dataclass(frozen=True)
class _Unit:
    """One TF layer with weights and the torch module(s) it fills.

    ``kind``: ``conv`` (kernel [+ bias]), ``bn``, or ``block`` (a Keras block layer whose
    children are named; ``children`` maps TF child prefixes to ``(torch path, kind)``).
    """

    kind: str
    path: str
    children: tuple[tuple[str, str, str], ...] = ()


def _block_children(path: str, block: nn.Module) -> tuple[tuple[str, str, str], ...]:
    """Model Garden attribute names of a block's sublayers -> torchspine module paths."""
    kids: list[tuple[str, str, str]] = []
    if isinstance(block, (BottleneckBlock, ResidualBlock)):
        if block.shortcut is not None:
            kids += [("_shortcut", f"{path}.shortcut.conv", "conv"), ("_norm0", f"{path}.shortcut.bn", "bn")]
        convs = ("conv1", "conv2", "conv3") if isinstance(block, BottleneckBlock) else ("conv1", "conv2")
        for k, name in enumerate(convs, start=1):
            kids += [(f"_conv{k}", f"{path}.{name}.conv", "conv"), (f"_norm{k}", f"{path}.{name}.bn", "bn")]
        return tuple(kids)
    if type(block).__name__ == "MBConvBlock":
        if block.expand is not None:
            kids += [("_conv0", f"{path}.expand.conv", "conv"), ("_norm0", f"{path}.expand.bn", "bn")]
        kids += [("_conv1", f"{path}.depthwise.conv", "conv"), ("_norm1", f"{path}.depthwise.bn", "bn")]
        if block.se is not None:
            kids += [("_squeeze_excitation/_se_reduce", f"{path}.se.fc1", "conv"),
                     ("_squeeze_excitation/_se_expand", f"{path}.se.fc2", "conv")]
        kids += [("_conv2", f"{path}.project.conv", "conv"), ("_norm2", f"{path}.project.bn", "bn")]
        return tuple(kids)
    raise ValueError(f"converter: no Model Garden mapping for block type {type(block).__name__} at {path}")


class _KerasGraph:
    """The layer graph of a Keras functional model, enough to reproduce ``model.layers`` order.

    Each node is one Keras layer (one call). ``keras_order`` replicates tf_keras
    ``functional._map_graph_network``: a depth-first traversal from the outputs assigns each
    layer a first-visit index and a post-order; depths are the longest path to an output;
    layers are sorted by decreasing depth, ties by the first-visit index.
    """

    def __init__(self) -> None:
        self.inputs: list[tuple[int, ...]] = []
        self.units: list[_Unit | None] = []

    def add(self, *inputs: int, unit: _Unit | None = None) -> int:
        self.inputs.append(tuple(inputs))
        self.units.append(unit)
        return len(self.inputs) - 1

    def keras_order(self, outputs: list[int]) -> list[int]:
        index: dict[int, int] = {}
        post: list[int] = []
        finished: set[int] = set()
        for out in outputs:  # iterative version of _build_map_helper
            if out in finished:
                continue
            stack: list[tuple[int, int]] = [(out, 0)]
            index.setdefault(out, len(index))
            while stack:
                node, k = stack[-1]
                ins = self.inputs[node]
                if k < len(ins):
                    stack[-1] = (node, k + 1)
                    child = ins[k]
                    if child not in finished:
                        index.setdefault(child, len(index))
                        stack.append((child, 0))
                else:
                    stack.pop()
                    if node not in finished:
                        finished.add(node)
                        post.append(node)
        depth: dict[int, int] = {}
        for node in reversed(post):
            d = depth.setdefault(node, 0)
            for parent in self.inputs[node]:
                depth[parent] = max(d + 1, depth.get(parent, 0))
        return sorted(post, key=lambda n: (-depth[n], index[n]))


def _mg_units(model: SpineNet) -> list[_Unit]:
    """Torch units in Model Garden ``layer_with_weights-N`` order (see :class:`_KerasGraph`)."""
    spec = model.spec
    mobile = spec.stem.kind == "mobile"
    g = _KerasGraph()

    def conv_bn(path: str, x: int, *, act: bool) -> int:
        x = g.add(x, unit=_Unit("conv", f"{path}.conv"))
        x = g.add(x, unit=_Unit("bn", f"{path}.bn"))
        return g.add(x) if act else x  # activation: one TFOpLambda / Activation layer

    def upsample(x: int) -> int:
        # spatial_transform_ops.nearest_upsampling: shape -> h, w -> reshape(x, [.., h, .., w, ..])
        # -> tile -> reshape(tile, [.., h * s, w * s, ..]).
        shape = g.add(x)
        h, w = g.add(shape), g.add(shape)
        reshaped = g.add(x, h, w)
        tiled = g.add(reshaped)
        hs, ws = g.add(h), g.add(w)
        return g.add(tiled, hs, ws)

    x = g.add()  # InputLayer
    x = conv_bn("stem.conv", x, act=True)
    if not mobile:
        x = g.add(x)  # max pool
    feats: list[int] = []
    for gi, group in enumerate(model.stem.groups):
        for bi, blk in enumerate(group):
            path = f"stem.groups.{gi}.{bi}"
            x = g.add(x, unit=_Unit("block", path, _block_children(path, blk)))
        x = g.add(x)  # tf.identity / Activation('linear') closing the group
        feats.append(x)
    for i, block in enumerate(model.blocks):
        parents = []
        for j, p in enumerate(block.parents):
            res = block.resample[j]
            path = f"blocks.{i}.resample.{j}"
            y = feats[p]
            if not mobile:
                y = conv_bn(f"{path}.reduce", y, act=True)
            if res.downsample is not None:
                for k, mod in enumerate(res.downsample):
                    y = conv_bn(f"{path}.downsample.{k}", y, act=True) if isinstance(mod, ConvNormAct) else g.add(y)
            elif res.in_level > res.target_level:
                y = upsample(y)
            parents.append(conv_bn(f"{path}.project", y, act=False))
        parents += [feats[j] for j in block.extras]
        if mobile:  # chained layers.Add()
            merged = parents[0]
            for p in parents[1:]:
                merged = g.add(merged, p)
        else:  # tf.math.add_n
            merged = g.add(*parents)
        x = g.add(merged)  # activation
        for bi, blk in enumerate(block.group):
            path = f"blocks.{i}.group.{bi}"
            x = g.add(x, unit=_Unit("block", path, _block_children(path, blk)))
        x = g.add(x)  # tf.identity / Activation('linear')
        feats.append(x)
    outputs = []
    # The functional model's outputs are a dict keyed by str(level); nest.flatten sorts the keys.
    for lvl, idx in sorted(zip(model._levels, model._output_index), key=lambda t: str(t[0])):
        outputs.append(conv_bn(f"endpoints.p{lvl}", feats[idx], act=True))
    return [u for n in g.keras_order(outputs) if (u := g.units[n]) is not None]


# --------------------------------------------------------------------- the transfer
@dataclass
class _Transfer:
    """Fills a state dict from TF variables, recording every problem instead of failing early."""

    tf_vars: dict[str, np.ndarray]
    expected: dict[str, torch.Size]
    modules: dict[str, nn.Module]
    state: dict[str, torch.Tensor] = field(default_factory=dict)
    used: set[str] = field(default_factory=set)
    missing: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    def _take(self, name: str) -> np.ndarray | None:
        if name not in self.tf_vars:
            self.missing.append(name)
            return None
        self.used.add(name)
        return self.tf_vars[name]

    def _put(self, key: str, value: np.ndarray | None, src: str, tf_shape: tuple[int, ...] | None = None) -> None:
        if value is None:
            return
        want = tuple(self.expected[key])
        if tuple(value.shape) != want:
            shown = list(tf_shape) if tf_shape is not None else list(value.shape)
            as_torch = f" (torch layout {list(value.shape)})" if tf_shape is not None else ""
            self.mismatched.append(f"{src} {shown}{as_torch} -> {key} expects {list(want)}")
            return
        # float64 checkpoints keep their precision (load_state_dict casts to the model dtype)
        dtype = np.float64 if value.dtype == np.float64 else np.float32
        self.state[key] = torch.from_numpy(np.ascontiguousarray(value).astype(dtype))

    def conv(self, path: str, prefix: str) -> None:
        mod = self.modules[path]
        assert isinstance(mod, nn.Conv2d)
        depthwise = mod.groups > 1 and mod.groups == mod.in_channels == mod.out_channels
        name, axes = ("depthwise_kernel", (2, 3, 0, 1)) if depthwise else ("kernel", (3, 2, 0, 1))
        k = self._take(prefix + name)
        if k is not None:  # TF HWIO (depthwise HW C 1) -> torch OIHW
            self._put(f"{path}.weight", _safe_transpose(k, axes), prefix + name, tuple(k.shape))
        if mod.bias is not None:
            self._put(f"{path}.bias", self._take(prefix + "bias"), prefix + "bias")

    def bn(self, path: str, prefix: str) -> None:
        for tf_name, torch_name in (("gamma", "weight"), ("beta", "bias"), ("moving_mean", "running_mean"),
                                    ("moving_variance", "running_var")):
            self._put(f"{path}.{torch_name}", self._take(prefix + tf_name), prefix + tf_name)
        if f"{path}.num_batches_tracked" in self.expected:
            self.state[f"{path}.num_batches_tracked"] = torch.zeros((), dtype=torch.long)

    def unit(self, unit: _Unit, prefix: str) -> None:
        if unit.kind == "conv":
            self.conv(unit.path, prefix)
        elif unit.kind == "bn":
            self.bn(unit.path, prefix)
        else:
            for child, path, kind in unit.children:
                (self.conv if kind == "conv" else self.bn)(path, f"{prefix}{child}/")


def _safe_transpose(a: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    return a.transpose(axes) if a.ndim == len(axes) else a


def _find_mg_backbone_prefix(names: set[str]) -> str:
    """The object path of the backbone: ``""``, ``"backbone/"``, ``"model/backbone/"`` ..."""
    cands = sorted({n[: n.index("layer_with_weights-0/")] for n in names if "layer_with_weights-0/" in n},
                   key=len)
    for c in cands:
        if f"{c}layer_with_weights-0/kernel" in names:
            return c
    raise ValueError("Model Garden checkpoint: no backbone found (no '.../layer_with_weights-0/kernel' variable)")


def _mg_pairs(model: SpineNet, names: set[str], prefix: str) -> list[tuple[_Unit, str]]:
    units = _mg_units(model)
    n_ckpt = len({m.group(1) for n in names if n.startswith(prefix) and (m := re.match(
        re.escape(prefix) + r"layer_with_weights-(\d+)/", n))})
    if n_ckpt != len(units):
        log.debug("checkpoint has %d weight layers under %r, model %d", n_ckpt, prefix, len(units))
    return [(u, f"{prefix}layer_with_weights-{k}/") for k, u in enumerate(units)]


# tensorflow/tpu: conv2d_N / batch_normalization_N per scope (N = creation order).
_TPU_LAYER_RE = re.compile(r"^(?P<scope>.*?)/?(?P<layer>conv2d|batch_normalization|depthwise_conv2d|separable_conv2d|"
                           r"dense)(?:_(?P<n>\d+))?/(?P<var>[^/]+)$")


def _tpu_scopes(names: set[str]) -> dict[str, dict[str, list[str]]]:
    """``{scope: {"conv": [layer prefixes in creation order], "bn": [...], "dw": [...]}}``."""
    found: dict[str, dict[str, set[tuple[int, str]]]] = defaultdict(lambda: defaultdict(set))
    for n in names:
        m = _TPU_LAYER_RE.match(n)
        if not m:
            continue
        kind = {"conv2d": "conv", "batch_normalization": "bn", "depthwise_conv2d": "dw"}.get(m["layer"], m["layer"])
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
            dw = mod.groups > 1 and mod.groups == mod.in_channels == mod.out_channels
            out.append(("dw" if dw else "conv", name))
        elif isinstance(mod, nn.BatchNorm2d):
            out.append(("bn", name))
    return out


def _tpu_pairs(model: SpineNet, names: set[str]) -> tuple[list[tuple[_Unit, str]], list[str], str]:
    """Pair torch convs/BNs with tensorflow/tpu layers by scope and creation order."""
    scopes = _tpu_scopes(names)
    root = "spinenet_mbconv" if model.spec.stem.kind == "mobile" else "spinenet"
    prefixed = [s for s in scopes if s == root or s.endswith("/" + root)]
    if not prefixed:
        raise ValueError(f"tensorflow/tpu checkpoint: no '{root}/' scope with conv2d/batch_normalization "
                         f"variables (scopes found: {sorted(scopes)[:8]})")
    base = min(prefixed, key=len)
    problems: list[str] = []
    # Which torch modules live in which TF scope (reference section 10).
    groups: list[tuple[str, list[tuple[str, str]]]] = [
        (base, _units_of(model.stem, "stem") + [u for lvl in model._levels
                                                for u in _units_of(model.endpoints[f"p{lvl}"], f"endpoints.p{lvl}")])
    ]
    for i, block in enumerate(model.blocks):
        policy = f"{base}/sub_policy{i}"
        res_scopes = sorted((s for s in scopes if s.startswith(policy + "/") and "resample" in s),
                            key=lambda s: int(re.findall(r"(\d+)$", s)[0]) if re.findall(r"(\d+)$", s) else 0)
        blk_scopes = [s for s in scopes if s.startswith(policy + "/") and "resample" not in s]
        for j in range(len(block.parents)):
            scope = res_scopes[j] if j < len(res_scopes) else f"{policy}/resample_{i}_{j}"
            groups.append((scope, _units_of(block.resample[j], f"blocks.{i}.resample.{j}")))
        groups.append((blk_scopes[0] if len(blk_scopes) == 1 else f"{policy}/scale_permuted_block_{i + 2}",
                       _units_of(block.group, f"blocks.{i}.group")))
    pairs: list[tuple[_Unit, str]] = []
    for scope, units in groups:
        avail = scopes.get(scope, {})
        for kind in ("conv", "dw", "bn"):
            mine = [p for k, p in units if k == kind]
            theirs = avail.get(kind, [])
            if len(mine) != len(theirs):
                problems.append(f"scope {scope}/: model has {len(mine)} {kind} layers, checkpoint {len(theirs)}")
            for path, prefix in zip(mine, theirs):
                pairs.append((_Unit("bn" if kind == "bn" else "conv", path), prefix))
    return pairs, problems, base + "/"


# ------------------------------------------------------------------------ the API
@dataclass
class ConversionResult:
    """A converted state dict, the model it belongs to, and how to rebuild it."""

    state_dict: dict[str, torch.Tensor]
    model_name: str
    overrides: dict[str, Any]
    codebase: str
    source: str

    def metadata(self) -> dict[str, str]:
        return {
            "format": "torchspine.converted/1",
            "model": self.model_name,
            "overrides": json.dumps(self.overrides, sort_keys=True),
            "codebase": self.codebase,
            "source": self.source,
        }


def _model_overrides(name: str, codebase: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Spec overrides selecting the codebase's padding and BN settings (mobile: its flavour)."""
    if not is_model(name):
        raise ValueError(f"unknown model {name!r}; see `torchspine.list_models()`")
    from torchspine.models.registry import _MODELS  # the builder's signature tells flavour support

    params = inspect.signature(_MODELS[name]).parameters
    # SpineNet-Mobile builders (backbones and detectors) take the codebase as a flavour, which
    # also selects its activation and squeeze-excitation gating.
    if "flavor" in params or "mobile" in name:
        return {"flavor": codebase, **overrides}
    return {**CODEBASE_DEFAULTS[codebase], **overrides}


def _backbone_of(model: nn.Module) -> tuple[SpineNet, str]:
    found = named_backbone(model)
    if found is None:
        raise ValueError(f"model {type(model).__name__} has no SpineNet backbone to convert into")
    name, backbone = found
    return backbone, name + "." if name else ""


def convert_checkpoint(
    checkpoint: str | os.PathLike | dict[str, np.ndarray],
    model_name: str,
    *,
    codebase: Codebase | None = None,
    overrides: dict[str, Any] | None = None,
    tf_python: str | None = None,
) -> ConversionResult:
    """Convert an official checkpoint into the state dict of ``create_model(model_name, ...)``.

    Args:
        checkpoint: a checkpoint path (prefix, or directory), or already-read variables.
        model_name: a registered backbone (``spinenet49``, ``spinenet_mobile49``, ...) or a
            detector whose backbone and RetinaNet head are filled (``retinanet_spinenet49``).
        codebase: ``"tpu"`` or ``"mg"``; detected from the variable names when omitted.
        overrides: extra model keywords / spec fields (e.g. ``activation="swish"``: a
            checkpoint does not record its activation).
        tf_python: an interpreter with TensorFlow, when this one has none.

    Raises:
        ValueError: listing missing, extra and mismatched variables when the checkpoint does
            not match the model.
    """
    source = "<variables>" if isinstance(checkpoint, dict) else str(checkpoint)
    tf_vars = checkpoint if isinstance(checkpoint, dict) else read_tf_checkpoint(checkpoint, tf_python=tf_python)
    names = set(tf_vars)
    codebase = codebase or detect_codebase(names)
    if codebase not in CODEBASE_DEFAULTS:
        raise ValueError(f"unknown codebase {codebase!r}; expected 'tpu' or 'mg'")
    model_kwargs = _model_overrides(model_name, codebase, dict(overrides or {}))
    with torch.device("meta"):
        model = create_model(model_name, **model_kwargs)
    backbone, bb_prefix = _backbone_of(model)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    modules = dict(model.named_modules())
    transfer = _Transfer(tf_vars, expected, modules)
    problems: list[str] = []

    if codebase == "mg":
        prefix = _find_mg_backbone_prefix(names)
        pairs = _mg_pairs(backbone, names, prefix)
        scope_of_backbone = prefix
    else:
        pairs, problems, scope_of_backbone = _tpu_pairs(backbone, names)
    for unit, tf_prefix in pairs:
        full = _Unit(unit.kind, bb_prefix + unit.path,
                     tuple((c, bb_prefix + p, k) for c, p, k in unit.children))
        transfer.unit(full, tf_prefix)

    head = getattr(model, "head", None)
    if head is not None and bb_prefix:
        from torchspine.interop.convert_head import transfer_head

        problems += transfer_head(model, transfer, codebase=codebase, names=names)

    missing_torch = sorted(k for k in expected if k not in transfer.state)
    extra = sorted(n for n in names if n not in transfer.used and (n.startswith(scope_of_backbone) or head is not None))
    if transfer.missing or transfer.mismatched or missing_torch or extra or problems:
        raise ValueError(_mismatch_message(model_name, source, codebase, transfer, missing_torch, extra, problems))
    state = {k: transfer.state[k] for k in expected}
    return ConversionResult(state, model_name, {k: v for k, v in model_kwargs.items()}, codebase, source)


def _mismatch_message(model_name: str, source: str, codebase: str, t: _Transfer, missing_torch: list[str],
                      extra: list[str], problems: list[str]) -> str:
    def block(title: str, items: list[str], limit: int = 12) -> str:
        if not items:
            return ""
        more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
        return f"\n  {title} ({len(items)}):\n    " + "\n    ".join(items[:limit]) + more

    return (
        f"checkpoint {source} ({'Model Garden' if codebase == 'mg' else 'tensorflow/tpu'}) does not match model "
        f"{model_name}: is it the right model size / family?"
        + block("structure", problems)
        + block("shape mismatches (checkpoint variable -> model tensor)", t.mismatched)
        + block("missing from the checkpoint", t.missing)
        + block("model tensors left unfilled", missing_torch)
        + block("extra checkpoint variables not used by the model", extra)
    )


def save_converted(result: ConversionResult, path: str | os.PathLike, *,
                   info: dict[str, Any] | None = None) -> None:
    """Write the converted model in the one saved-model format (:func:`torchspine.models.saved.save_model`).

    The metadata records the model name and the overrides it was converted with (codebase
    padding / BN settings, activation ...) and, in ``info``, where the weights came from.
    """
    from torchspine.models.saved import save_model

    model = build_converted(result.model_name, result.overrides, result.state_dict)
    provenance = {"source": result.source, "codebase": result.codebase, "converted": True}
    save_model(model, path, name=result.model_name, overrides=result.overrides,
               info={"provenance": provenance, **(info or {})})


def load_converted(path: str | os.PathLike, *, map_location: str = "cpu") -> nn.Module:
    """Rebuild a converted model (:func:`torchspine.models.saved.load_model`; also reads the older
    ``torchspine.converted/1`` files)."""
    from torchspine.models.saved import load_model

    return load_model(path, device=map_location)


def build_converted(model_name: str, overrides: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """``create_model(model_name, **overrides)`` holding ``state_dict`` (strict), in eval mode.

    Built on the meta device and filled with ``assign=True``: the random initialisation of a
    large model would be thrown away anyway.
    """
    with torch.device("meta"):
        model = create_model(model_name, **overrides)
    model.load_state_dict(state_dict, strict=True, assign=True)
    leftover = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftover:
        raise ValueError(f"converted weights leave {len(leftover)} tensors of {model_name} unset, e.g. {leftover[:3]}")
    return model.eval()

