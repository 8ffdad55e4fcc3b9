"""The published SpineNet specs and scaling presets.

Block table: official ``SPINENET_BLOCK_SPECS`` (tensorflow/tpu ``spinenet.py``, identical in
Model Garden beta); scaling: official ``SCALING_MAP`` (tensorflow/tpu models/official/detection/modeling/architecture/spinenet.py).
"""

from __future__ import annotations

from torchspine.specs.spec import BlockSpec, ScalingSpec, SpineNetSpec

__all__ = ["SPINENET_BLOCKS", "SPINENET_SCALING", "spinenet_spec"]

B, R = "bottleneck", "residual"

# (level, block_type, (parent0, parent1), is_output); parents index feats, where
# feats[0], feats[1] are the two L2 stem groups.
SPINENET_BLOCKS: tuple[BlockSpec, ...] = tuple(
    BlockSpec(level, kind, parents, out)
    for level, kind, parents, out in (
        (2, B, (0, 1), False),
        (4, R, (0, 1), False),
        (3, B, (2, 3), False),
        (4, B, (2, 4), False),
        (6, R, (3, 5), False),
        (4, B, (3, 5), False),
        (5, R, (6, 7), False),
        (7, R, (6, 8), False),
        (5, B, (8, 9), False),
        (5, B, (8, 10), False),
        (4, B, (5, 10), True),
        (3, B, (4, 10), True),
        (5, B, (7, 12), True),
        (7, B, (5, 14), True),
        (6, B, (12, 14), True),
    )
)

# Official SCALING_MAP (tensorflow/tpu and Model Garden agree), plus the paper copy's 49S.
SPINENET_SCALING: dict[str, ScalingSpec] = {
    "49s": ScalingSpec(endpoints_num_filters=128, filter_size_scale=0.65, resample_alpha=0.5, block_repeats=1),
    "49": ScalingSpec(endpoints_num_filters=256, filter_size_scale=1.0, resample_alpha=0.5, block_repeats=1),
    "96": ScalingSpec(endpoints_num_filters=256, filter_size_scale=1.0, resample_alpha=0.5, block_repeats=2),
    "143": ScalingSpec(endpoints_num_filters=256, filter_size_scale=1.0, resample_alpha=1.0, block_repeats=3),
    "143l": ScalingSpec(endpoints_num_filters=256, filter_size_scale=1.3, resample_alpha=1.0, block_repeats=3),
    "190": ScalingSpec(endpoints_num_filters=512, filter_size_scale=1.3, resample_alpha=1.0, block_repeats=4),
    # The paper (section 3.4) describes 49S as SpineNet-49 with
    # every block's feature dimension scaled uniformly by 0.75 and 128 endpoint filters.
    # No official code uses 0.75 (the code and a later revision say 0.65).
    "49s_paper": ScalingSpec(endpoints_num_filters=128, filter_size_scale=0.75, resample_alpha=0.5, block_repeats=1),
}


def spinenet_spec(model_id: str, **overrides) -> SpineNetSpec:
    """The spec of an official SpineNet model id (``"49s"``, ``"49"``, ``"96"``, ``"143"``,
    ``"143l"``, ``"190"``, or ``"49s_paper"``), with optional field overrides."""
    key = model_id.lower()
    if key not in SPINENET_SCALING:
        raise ValueError(f"unknown SpineNet model id {model_id!r}; known: {sorted(SPINENET_SCALING)}")
    spec = SpineNetSpec(blocks=SPINENET_BLOCKS, scaling=SPINENET_SCALING[key], name=f"spinenet{key}")
    return spec.replace(**overrides) if overrides else spec
