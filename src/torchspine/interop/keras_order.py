"""Model Garden backbone variables: reproduce the order of a Keras functional model's layers.

The Model Garden SpineNet (tensorflow/models ``official/vision/modeling/backbones/spinenet.py``
and ``spinenet_mobile.py``) is a Keras functional model, so its TF2 checkpoint stores layers as
``layer_with_weights-N`` in ``model.layers`` order, which Keras derives from the graph (layers
sorted by their depth from the outputs, ties broken by a depth-first traversal). This module
rebuilds that graph from the torchspine model (every Keras layer the official builder creates,
including weightless ones like ``tf.identity``, ``add_n`` and the ops of
``nearest_upsampling``) and runs Keras' ordering algorithm on it, so ``N`` is derived from the
structure, not from fragile names. Blocks (``BottleneckBlock``, ``ResidualBlock``,
``InvertedBottleneckBlock``) keep their attribute names (``_conv1``, ``_norm1`` ...).
"""

from __future__ import annotations

from torch import nn

from torchspine.interop.transfer import Unit
from torchspine.layers.blocks import BottleneckBlock, ResidualBlock
from torchspine.layers.conv import ConvNormAct
from torchspine.layers.mbconv import MBConvBlock, ResampleSepConv
from torchspine.models.backbone import SpineNet

__all__ = ["KerasGraph", "mg_block_children", "mg_units"]


def mg_block_children(path: str, block: nn.Module) -> tuple[tuple[str, str, str], ...]:
    """Model Garden attribute names of a block's sublayers -> torchspine module paths."""
    kids: list[tuple[str, str, str]] = []
    if isinstance(block, (BottleneckBlock, ResidualBlock)):
        if block.shortcut is not None:
            kids += [("_shortcut", f"{path}.shortcut.conv", "conv"), ("_norm0", f"{path}.shortcut.bn", "bn")]
        convs = ("conv1", "conv2", "conv3") if isinstance(block, BottleneckBlock) else ("conv1", "conv2")
        for k, name in enumerate(convs, start=1):
            kids += [(f"_conv{k}", f"{path}.{name}.conv", "conv"), (f"_norm{k}", f"{path}.{name}.bn", "bn")]
        return tuple(kids)
    if isinstance(block, MBConvBlock):
        if block.expand is not None:
            kids += [("_conv0", f"{path}.expand.conv", "conv"), ("_norm0", f"{path}.expand.bn", "bn")]
        kids += [("_conv1", f"{path}.depthwise.conv", "conv"), ("_norm1", f"{path}.depthwise.bn", "bn")]
        if block.se is not None:
            kids += [("_squeeze_excitation/_se_reduce", f"{path}.se.fc1", "conv"),
                     ("_squeeze_excitation/_se_expand", f"{path}.se.fc2", "conv")]
        kids += [("_conv2", f"{path}.project.conv", "conv"), ("_norm2", f"{path}.project.bn", "bn")]
        return tuple(kids)
    raise ValueError(f"converter: no Model Garden mapping for block type {type(block).__name__} at {path}")


class KerasGraph:
    """The layer graph of a Keras functional model, enough to reproduce ``model.layers`` order.

    Each node is one Keras layer (one call). :meth:`keras_order` replicates tf_keras
    ``functional._map_graph_network``: a depth-first traversal from the outputs assigns each
    layer a first-visit index and a post-order; depths are the longest path to an output;
    layers are sorted by decreasing depth, ties by the first-visit index.
    """

    def __init__(self) -> None:
        self.inputs: list[tuple[int, ...]] = []
        self.units: list[Unit | None] = []

    def add(self, *inputs: int, unit: Unit | None = None) -> int:
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


def mg_units(model: SpineNet) -> list[Unit]:
    """Torch units in Model Garden ``layer_with_weights-N`` order (see :class:`KerasGraph`)."""
    g = KerasGraph()
    # The mobile stem has no max pool and its resampling no alpha 1x1 (ResampleSepConv).
    mobile = any(isinstance(b.resample[0], ResampleSepConv) for b in model.blocks)

    def conv_bn(path: str, x: int, *, act: bool) -> int:
        x = g.add(x, unit=Unit("conv", f"{path}.conv"))
        x = g.add(x, unit=Unit("bn", f"{path}.bn"))
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
            x = g.add(x, unit=Unit("block", path, mg_block_children(path, blk)))
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
            x = g.add(x, unit=Unit("block", path, mg_block_children(path, blk)))
        x = g.add(x)  # tf.identity / Activation('linear')
        feats.append(x)
    outputs = []
    # The functional model's outputs are a dict keyed by str(level); nest.flatten sorts the keys.
    for lvl, idx in sorted(model.output_feature_index.items(), key=lambda t: str(t[0])):
        outputs.append(conv_bn(f"endpoints.p{lvl}", feats[idx], act=True))
    return [u for n in g.keras_order(outputs) if (u := g.units[n]) is not None]
