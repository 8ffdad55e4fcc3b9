"""SpineNet-Mobile specs (paper Appendix A; tensorflow/tpu models/official/detection/modeling/architecture/spinenet_mbconv.py).

Block table: official SpineNet-Mobile ``SPINENET_BLOCK_SPECS`` (tensorflow/tpu
``spinenet_mbconv.py``, identical in Model Garden ``spinenet_mobile.py``): 16 MBConv blocks;
``feats[0]`` is the L1 stem block and ``feats[1]`` the L2 stem block.

Scaling presets: the released code has 49 / 49S / 49XS (scale 1.0 / 0.65 / 0.6, endpoints and
head 48 / 40 / 24 filters). The paper (Appendix A and Table 9)
names four models 49XXS / 49XS / 49S / 49 at scales 0.6 / 0.65 / 0.75 / 1.0 with head filters
24 / 40 / 48 / 48, so its 49XXS is the released 49XS, its 49XS the released 49S, and only its
49S (0.75, 48) has no released counterpart. Those are kept under ``*_paper`` names.

Two flavours follow the two official codebases (the table ``CODEBASE_FLAVORS`` in
:mod:`torchspine.specs.spec`):

* ``"tpu"`` (default; the code the paper links): swish everywhere, SE with swish inside and a
  sigmoid gate, BN 0.997 / 1e-4, symmetric fixed padding;
* ``"mg"`` (Model Garden): hard-swish for 49 / 49S and swish for 49XS (its yamls), SE with relu
  inside and a hard-sigmoid gate, BN 0.99 / 1e-3, TF 'SAME' padding.
"""

from __future__ import annotations

from typing import Any, Literal

from torchspine.specs.spec import CODEBASE_FLAVORS, BlockSpec, NormSpec, ScalingSpec, SpineNetSpec, StemSpec

__all__ = [
    "MOBILE_BLOCKS",
    "MOBILE_FILTER_SIZE_MAP",
    "MOBILE_SCALING",
    "MOBILE_INPUT_SIZE",
    "mobile_spec",
]

M = "mbconv"

MOBILE_BLOCKS: tuple[BlockSpec, ...] = tuple(
    BlockSpec(level, M, parents, out)
    for level, parents, out in (
        (2, (0, 1), False),
        (2, (1, 2), False),
        (4, (1, 2), False),
        (3, (3, 4), False),
        (4, (3, 5), False),
        (6, (4, 6), False),
        (4, (4, 6), False),
        (5, (7, 8), False),
        (7, (7, 9), False),
        (5, (9, 10), False),
        (5, (9, 11), False),
        (4, (6, 11), True),
        (3, (5, 11), True),
        (5, (8, 13), True),
        (7, (6, 15), True),
        (6, (13, 15), True),
    )
)

# Official mobile FILTER_SIZE_MAP (level 0's 8 filters are the stem conv, StemSpec.conv_filters).
MOBILE_FILTER_SIZE_MAP: tuple[tuple[int, int], ...] = (
    (1, 16), (2, 24), (3, 40), (4, 80), (5, 112), (6, 112), (7, 112),
)

# Official SCALING_MAP (49 / 49s / 49xs) and the paper copy's Table 9 models. resample_alpha is
# unused by the separable resampling (the alpha 1x1 was removed) and left at its default.
MOBILE_SCALING: dict[str, ScalingSpec] = {
    "49": ScalingSpec(endpoints_num_filters=48, filter_size_scale=1.0),
    "49s": ScalingSpec(endpoints_num_filters=40, filter_size_scale=0.65),
    "49xs": ScalingSpec(endpoints_num_filters=24, filter_size_scale=0.6),
    # Paper copy Appendix A: scales 0.6 / 0.65 / 0.75 / 1.0, box/class filters 24 / 40 / 48 / 48.
    "49xxs_paper": ScalingSpec(endpoints_num_filters=24, filter_size_scale=0.6),
    "49xs_paper": ScalingSpec(endpoints_num_filters=40, filter_size_scale=0.65),
    "49s_paper": ScalingSpec(endpoints_num_filters=48, filter_size_scale=0.75),
    "49_paper": ScalingSpec(endpoints_num_filters=48, filter_size_scale=1.0),
}

# Training / profiling input size (official SpineNet-Mobile yamls; paper Appendix A: 256 for 49XXS).
MOBILE_INPUT_SIZE: dict[str, int] = {
    "49": 384, "49s": 384, "49xs": 256,
    "49xxs_paper": 256, "49xs_paper": 384, "49s_paper": 384, "49_paper": 384,
}

Flavor = Literal["tpu", "mg"]


def mobile_spec(model_id: str, *, flavor: Flavor = "tpu", **overrides: Any) -> SpineNetSpec:
    """The spec of a SpineNet-Mobile model id (see :data:`MOBILE_SCALING`), in the given
    official flavour, with optional spec-field overrides (``se_gating=...`` and the other MBConv
    settings go through ``block_options``)."""
    key = model_id.lower()
    if key not in MOBILE_SCALING:
        raise ValueError(f"unknown SpineNet-Mobile model id {model_id!r}; known: {sorted(MOBILE_SCALING)}")
    if flavor == "tpu":
        activation, se_act, se_gate = "swish", "swish", "sigmoid"
    elif flavor == "mg":
        # Model Garden yamls: hard_swish for 49 / 49S, swish for 49XS.
        activation = "swish" if key in ("49xs", "49xxs_paper") else "hard_swish"
        se_act, se_gate = "relu", "hard_sigmoid"
    else:
        raise ValueError(f"unknown SpineNet-Mobile flavor {flavor!r}; expected 'tpu' or 'mg'")
    codebase = CODEBASE_FLAVORS[flavor]  # BN momentum / epsilon and padding of the official codebase
    norm, padding = NormSpec(codebase["momentum"], codebase["epsilon"]), codebase["padding"]
    options = {"expand_ratio": 6, "kernel_size": 3, "se_ratio": 0.2, "se_activation": se_act, "se_gating": se_gate}
    # MBConv settings may be overridden by name (se_gating="hard_sigmoid", se_ratio=0.25, ...).
    for name in list(overrides):
        if name in options:
            options[name] = overrides.pop(name)
    spec = SpineNetSpec(
        blocks=MOBILE_BLOCKS,
        scaling=MOBILE_SCALING[key],
        stem=StemSpec(kind="mobile", conv_filters=8, block_levels=(1, 2), block_type=M),
        activation=activation,
        norm=norm,
        padding=padding,
        resample="sepconv",
        filter_size_map=MOBILE_FILTER_SIZE_MAP,
        block_options=tuple(sorted(options.items())),
        name=f"spinenet_mobile{key}",
    )
    return spec.replace(**overrides) if overrides else spec
