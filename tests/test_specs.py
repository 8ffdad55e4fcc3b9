"""Architecture as data: validation errors, JSON / genome round-trips,
overrides, and the zoo tables against SPINENET_BLOCK_SPECS and SCALING_MAP of tensorflow/tpu
models/official/detection/modeling/architecture/spinenet.py."""

from __future__ import annotations

import dataclasses
import json

import pytest

from torchspine.specs import (
    SPINENET_BLOCKS,
    SPINENET_SCALING,
    BlockSpec,
    NormSpec,
    ScalingSpec,
    SpineNetSpec,
    StemSpec,
    spinenet_spec,
)

# SPINENET_BLOCK_SPECS of tensorflow/tpu models/official/detection/modeling/architecture/spinenet.py, typed in by
# hand: (feats idx, level, type, parents, output).
REFERENCE_TABLE = [
    (2, 2, "bottleneck", (0, 1), False),
    (3, 4, "residual", (0, 1), False),
    (4, 3, "bottleneck", (2, 3), False),
    (5, 4, "bottleneck", (2, 4), False),
    (6, 6, "residual", (3, 5), False),
    (7, 4, "bottleneck", (3, 5), False),
    (8, 5, "residual", (6, 7), False),
    (9, 7, "residual", (6, 8), False),
    (10, 5, "bottleneck", (8, 9), False),
    (11, 5, "bottleneck", (8, 10), False),
    (12, 4, "bottleneck", (5, 10), True),
    (13, 3, "bottleneck", (4, 10), True),
    (14, 5, "bottleneck", (7, 12), True),
    (15, 7, "bottleneck", (5, 14), True),
    (16, 6, "bottleneck", (12, 14), True),
]

# SCALING_MAP of tensorflow/tpu models/official/detection/modeling/architecture/spinenet.py: id ->
# (endpoints_num_filters, filter_size_scale, resample_alpha, block_repeats).
REFERENCE_SCALING = {
    "49s": (128, 0.65, 0.5, 1),
    "49": (256, 1.0, 0.5, 1),
    "96": (256, 1.0, 0.5, 2),
    "143": (256, 1.0, 1.0, 3),
    "143l": (256, 1.3, 1.0, 3),
    "190": (512, 1.3, 1.0, 4),
}


def _spec(**overrides) -> SpineNetSpec:
    return dataclasses.replace(spinenet_spec("49"), **overrides)


def _with_block(i: int, **fields) -> SpineNetSpec:
    blocks = list(SPINENET_BLOCKS)
    blocks[i] = dataclasses.replace(blocks[i], **fields)
    return _spec(blocks=tuple(blocks))


# ------------------------------------------------------------------------- zoo tables
def test_zoo_block_table_equals_reference() -> None:
    assert len(SPINENET_BLOCKS) == len(REFERENCE_TABLE) == 15  # TPU / MG-beta: no 16th L2 spec
    for i, (b, (idx, level, kind, parents, out)) in enumerate(zip(SPINENET_BLOCKS, REFERENCE_TABLE)):
        assert i + 2 == idx  # block spec i appends feats[i + 2]
        assert (b.level, b.block_type, tuple(b.input_offsets), b.is_output) == (level, kind, parents, out)


def test_zoo_scaling_equals_reference() -> None:
    for key, (ep, scale, alpha, repeats) in REFERENCE_SCALING.items():
        assert SPINENET_SCALING[key] == ScalingSpec(ep, scale, alpha, repeats)
        spec = spinenet_spec(key)
        assert spec.scaling == ScalingSpec(ep, scale, alpha, repeats)
        assert spec.blocks == SPINENET_BLOCKS
    # The paper copy's 49S (an earlier revision of the paper, Du et al. CVPR 2020, section 3.4): uniform 0.75, 128
    # endpoints.
    assert SPINENET_SCALING["49s_paper"] == ScalingSpec(128, 0.75, 0.5, 1)


def test_filters_truncate_like_the_reference() -> None:
    # FILTER_SIZE_MAP x filter_size_scale, truncated (tensorflow/tpu
    # models/official/detection/modeling/architecture/spinenet.py): x0.65 gives L2 41, L3 83, L4-7 166; x1.3 gives
    # L2 83, L3 166, L4-7 332.
    s = spinenet_spec("49s")
    assert [s.filters(lvl) for lvl in (2, 3, 4, 5, 6, 7)] == [41, 83, 166, 166, 166, 166]
    s = spinenet_spec("190")
    assert [s.filters(lvl) for lvl in (2, 3, 4, 5, 6, 7)] == [83, 166, 332, 332, 332, 332]


# -------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "spec, words",
    [
        # parent offset that is not earlier than the block: block 3 sits at feats index 5.
        (lambda: _with_block(3, input_offsets=(2, 5)), ["block 3", "parent offset 5", "not an earlier block"]),
        (lambda: _with_block(0, input_offsets=(0, 7)), ["block 0", "parent offset 7", "not an earlier block"]),
        (lambda: _with_block(4, input_offsets=(-1, 5)), ["block 4", "parent offset -1", "not an earlier block"]),
        # level outside the supported range [1, 8].
        (lambda: _with_block(6, level=9), ["block 6", "level 9", "outside the supported range"]),
        (lambda: _with_block(6, level=0), ["block 6", "level 0", "outside the supported range"]),
        # in range, but the filter table has no width for L8.
        (lambda: _with_block(6, level=8), ["block 6", "filter_size_map has no entry for level 8"]),
        # two outputs at one level: block 9 (L5) marked as output next to block 12 (P5).
        (lambda: _with_block(9, is_output=True), ["block 12", "second output at level 5", "block 9"]),
        # a missing output level: block 13 (P7) is no longer an output.
        (lambda: _with_block(13, is_output=False), ["no output block for level(s) [7]"]),
        # an unknown block type: the block rejects it when made (its level names it).
        (lambda: _with_block(2, block_type="transformer"), ["block (level 3)", "unknown block type 'transformer'"]),
        # non-positive scales.
        (lambda: _spec(scaling=ScalingSpec(filter_size_scale=0.0)), ["filter_size_scale", "positive", "0.0"]),
        (lambda: _spec(scaling=ScalingSpec(filter_size_scale=-0.5)), ["filter_size_scale", "positive", "-0.5"]),
        (lambda: _spec(scaling=ScalingSpec(resample_alpha=0.0)), ["resample_alpha", "positive"]),
        (lambda: _spec(scaling=ScalingSpec(block_repeats=0)), ["block_repeats", "positive"]),
        (lambda: _spec(scaling=ScalingSpec(endpoints_num_filters=0)), ["endpoints_num_filters", "positive"]),
        # a scale so small that a level has no filters: int(64 * 0.01) = 0.
        (lambda: _spec(scaling=ScalingSpec(filter_size_scale=0.01)), ["level 2", "= 0 filters"]),
        # other settings.
        (lambda: _spec(activation="gelu"), ["unknown activation 'gelu'"]),
        (lambda: _spec(padding="valid"), ["unknown padding 'valid'"]),
        (lambda: _spec(min_level=5, max_level=4), ["min_level 5", "max_level 4"]),
        (lambda: _spec(norm=NormSpec(momentum=1.0)), ["norm.momentum"]),
        (lambda: _spec(stochastic_depth_rate=1.0), ["stochastic_depth_rate"]),
        (lambda: _spec(stem=StemSpec(block_levels=())), ["stem.block_levels is empty"]),
        (lambda: _spec(blocks=()), ["has no blocks"]),
    ],
)
def test_validation_names_block_and_problem(spec, words) -> None:
    with pytest.raises(ValueError) as err:
        spec().validate()
    msg = str(err.value)
    # Spec-level problems name the spec; a block or a section (scaling / norm / stem) rejects
    # its own fields when it is made, before any spec holds it.
    assert msg.startswith(("spec spinenet49:", "block (", "scaling.", "norm.", "stem.")), msg
    for w in words:
        assert w in msg, f"{w!r} not in {msg!r}"


def test_the_official_specs_validate() -> None:
    for key in REFERENCE_SCALING:
        assert spinenet_spec(key).validate() is not None


# ---------------------------------------------------------------------- serialization
def _non_default_spec() -> SpineNetSpec:
    return spinenet_spec("49").replace(
        filter_size_scale=0.65, endpoints_num_filters=128, resample_alpha=1.0, block_repeats=2,
        activation="swish", padding="same", momentum=0.99, epsilon=1e-3,
        stochastic_depth_rate=0.2, stochastic_depth_denominator=16, zero_outdegree_connections=False,
        block_options={"se_ratio": 0.25, "expand_ratio": 6}, name="trial-17",
        **{"stem.conv_filters": 32},
    )


@pytest.mark.parametrize("make", [lambda: spinenet_spec("49"), lambda: spinenet_spec("190"), _non_default_spec])
def test_json_and_genome_round_trip_exactly(make) -> None:
    spec = make()
    text = spec.to_json()
    again = SpineNetSpec.from_json(text)
    assert again == spec and again.to_json() == text
    genome = spec.to_genome()
    assert "\n" not in genome
    again = SpineNetSpec.from_genome(genome)
    assert again == spec and again.to_genome() == genome
    # The two codecs describe the same object.
    assert SpineNetSpec.from_json(SpineNetSpec.from_genome(genome).to_json()) == spec


def test_genome_of_spinenet49_by_hand() -> None:
    # Written from SPINENET_BLOCK_SPECS (tensorflow/tpu
    # models/official/detection/modeling/architecture/spinenet.py): {level}{b|r}{parent0}.{parent1}[o].
    expected = ("v1|2b0.1,4r0.1,3b2.3,4b2.4,6r3.5,4b3.5,5r6.7,7r6.8,5b8.9,5b8.10,"
                "4b5.10o,3b4.10o,5b7.12o,7b5.14o,6b12.14o")
    assert spinenet_spec("49").to_genome() == expected + '|name="spinenet49"'
    assert SpineNetSpec.from_genome(expected).blocks == SPINENET_BLOCKS
    # Non-default fields follow as dotted.name=json.
    g = spinenet_spec("49s").to_genome()
    assert g.endswith('|scaling.endpoints_num_filters=128|scaling.filter_size_scale=0.65|name="spinenet49s"')


def test_save_and_load(tmp_path) -> None:
    spec = _non_default_spec()
    path = tmp_path / "spec.json"
    spec.save(str(path))
    assert SpineNetSpec.load(str(path)) == spec
    gpath = tmp_path / "spec.genome"
    gpath.write_text(spec.to_genome() + "\n")
    assert SpineNetSpec.load(str(gpath)) == spec


@pytest.mark.parametrize(
    "text, words",
    [
        ("v2|2b0.1", ["genome must start with 'v1|"]),
        ("v1|2b0.1,4q0.1", ["genome block 1", "unknown block type code 'q'"]),
        ("v1|2b0.1,xx", ["genome block 1", "cannot parse 'xx'"]),
        ("v1|2b0.1|bogus=1", ["unknown field 'bogus'"]),
        ("v1|2b0.1|scaling.bogus=1", ["unknown field 'scaling.bogus'"]),
    ],
)
def test_bad_genomes(text: str, words: list[str]) -> None:
    with pytest.raises(ValueError) as err:
        SpineNetSpec.from_genome(text)
    for w in words:
        assert w in str(err.value)


def test_bad_json() -> None:
    with pytest.raises(ValueError, match="not valid JSON"):
        SpineNetSpec.from_json("{", source="x.json")
    d = json.loads(spinenet_spec("49").to_json())
    d["colour"] = "red"
    with pytest.raises(ValueError, match=r"x.json: unknown field\(s\) \['colour'\]"):
        SpineNetSpec.from_dict(d, source="x.json")
    d = json.loads(spinenet_spec("49").to_json())
    del d["blocks"][3]["level"]
    with pytest.raises(ValueError, match=r"blocks\[3\]: missing field 'level'"):
        SpineNetSpec.from_dict(d, source="x.json")


# -------------------------------------------------------------------------- overrides
def test_replace_overrides() -> None:
    base = spinenet_spec("49")
    s = base.replace(filter_size_scale=0.25)  # a nested field by its bare name
    assert s.scaling == dataclasses.replace(base.scaling, filter_size_scale=0.25)
    assert base.scaling.filter_size_scale == 1.0  # frozen: the original is unchanged
    s = base.replace(**{"stem.conv_filters": 32, "norm.epsilon": 1e-3}, activation="hard_swish")
    assert (s.stem.conv_filters, s.norm.epsilon, s.activation) == (32, 1e-3, "hard_swish")
    assert s.blocks == base.blocks
    with pytest.raises(ValueError, match="unknown spec field 'filter_scale'"):
        base.replace(filter_scale=0.5)
    with pytest.raises(ValueError, match="filter_size_scale must be positive"):
        base.replace(filter_size_scale=0)  # overrides produce a validated spec
    s = base.replace(blocks=[(2, "bottleneck", (0, 1), False)] + list(base.blocks[1:]))
    assert s.blocks == base.blocks and isinstance(s.blocks[0], BlockSpec)


def test_stochastic_depth_rate_per_block() -> None:
    # Stochastic depth (tensorflow/tpu models/official/detection/modeling/architecture/spinenet.py; rate for spec
    # i = init * (i + 1) / 15 (TPU), / 16 in the newer MG.
    s = spinenet_spec("49", stochastic_depth_rate=0.2)
    assert [s.drop_path_rate(i) for i in range(15)] == pytest.approx([0.2 * (i + 1) / 15 for i in range(15)])
    assert s.drop_path_rate(14) == pytest.approx(0.2)
    s16 = s.replace(stochastic_depth_denominator=16)
    assert s16.drop_path_rate(14) == pytest.approx(0.2 * 15 / 16)
    assert spinenet_spec("49").drop_path_rate(14) == 0.0  # only if 0 < init < 1


# ------------------------------------------------------- checked on construction (typed)
@pytest.mark.parametrize("make, words", [
    (lambda: BlockSpec(3, "bottleneck", 5), ["input_offsets", "5"]),
    (lambda: BlockSpec("3", "bottleneck", (0, 1)), ["level", "'3'"]),
    (lambda: BlockSpec(3, "bottleneck", (0, 1), "false"), ["is_output", "'false'"]),
    (lambda: NormSpec(momentum="x"), ["momentum", "'x'"]),
    (lambda: ScalingSpec(block_repeats=1.5), ["block_repeats", "1.5"]),
    (lambda: StemSpec(kind="vit"), ["stem.kind", "'vit'"]),
    (lambda: _spec(min_level="3"), ["spec spinenet49", "min_level", "'3'"]),
    (lambda: _spec(zero_outdegree_connections="yes"), ["zero_outdegree_connections", "'yes'"]),
    (lambda: _spec(resample="bilinear"), ["resample", "'bilinear'"]),
    # an output block outside [min_level, max_level]: block 0 (L2) marked as output.
    (lambda: _with_block(0, is_output=True), ["block 0", "output block at level 2", "outside [min_level=3"]),
])
def test_no_unchecked_spec_can_exist(make, words):
    with pytest.raises(ValueError) as err:
        make()
    for w in words:
        assert w in str(err.value), (w, str(err.value))


@pytest.mark.parametrize("mutate, words", [
    (lambda d: d["blocks"][3].update(input_offsets=5), ["x.json: blocks[3]", "input_offsets", "5"]),
    (lambda d: d["blocks"][11].update(is_output="false"), ["x.json: blocks[11]", "is_output", "'false'"]),
    (lambda d: d["blocks"][2].update(colour="red"), ["x.json: blocks[2]", "unknown key", "colour"]),
    (lambda d: d["norm"].update(momentum="x"), ["x.json", "norm", "momentum", "'x'"]),
    (lambda d: d["norm"].update(decay=0.9), ["x.json", "unknown key", "decay", "'norm'"]),
    (lambda d: d.update(min_level="3"), ["x.json", "min_level", "'3'"]),
    (lambda d: d.update(blocks=5), ["x.json", "blocks", "list"]),
])
def test_json_type_errors_name_the_file_block_and_field(mutate, words):
    d = json.loads(spinenet_spec("49").to_json())
    mutate(d)
    with pytest.raises(ValueError) as err:
        SpineNetSpec.from_dict(d, source="x.json")
    for w in words:
        assert w in str(err.value), (w, str(err.value))


def test_literal_field_types():
    import typing

    from torchspine.specs.spec import Activation, Padding

    hints = typing.get_type_hints(SpineNetSpec)
    assert hints["activation"] == Activation and typing.get_args(Activation) == ("relu", "swish", "hard_swish")
    assert hints["padding"] == Padding and typing.get_args(Padding) == ("symmetric", "same")


def test_block_types_are_open():
    from torchspine.specs import BLOCK_TYPE_CODES, register_block_type

    with pytest.raises(ValueError, match="'fancy'"):
        BlockSpec(3, "fancy", (0, 1))
    register_block_type("fancy", "f")
    try:
        blocks = list(SPINENET_BLOCKS)
        blocks[2] = dataclasses.replace(blocks[2], block_type="fancy")
        spec = _spec(blocks=tuple(blocks))
        assert ",3f2.3," in spec.to_genome()
        assert SpineNetSpec.from_genome(spec.to_genome()) == spec
        with pytest.raises(ValueError, match="already used by block type 'fancy'"):
            register_block_type("other", "f")
    finally:
        BLOCK_TYPE_CODES.pop("fancy")


def test_codebase_flavours_come_from_one_table():
    from torchspine.interop.convert import CODEBASE_DEFAULTS
    from torchspine.specs import CODEBASE_FLAVORS, codebase_overrides
    from torchspine.specs.mobile import mobile_spec

    # tensorflow/tpu: BN 0.997 / 1e-4, symmetric padding; Model Garden: 0.99 / 1e-3, 'SAME' padding.
    assert codebase_overrides("tpu") == {"padding": "symmetric", "momentum": 0.997, "epsilon": 1e-4}
    assert codebase_overrides("mg") == {"padding": "same", "momentum": 0.99, "epsilon": 1e-3}
    assert CODEBASE_DEFAULTS is CODEBASE_FLAVORS
    default = spinenet_spec("49")
    assert (default.norm, default.padding) == (NormSpec(0.997, 1e-4), "symmetric")
    mg = mobile_spec("49", flavor="mg")
    assert (mg.norm, mg.padding) == (NormSpec(0.99, 1e-3), "same")
    tpu = mobile_spec("49", flavor="tpu")
    assert (tpu.norm, tpu.padding) == (NormSpec(0.997, 1e-4), "symmetric")


def test_genome_with_non_default_levels_round_trips():
    # The genome codec must not build a default-level spec on the way (it would be invalid).
    base = spinenet_spec("49")
    blocks = list(base.blocks)
    blocks[13] = dataclasses.replace(blocks[13], is_output=False)  # no P7 output
    spec = base.replace(blocks=tuple(blocks), max_level=6)
    assert SpineNetSpec.from_genome(spec.to_genome()) == spec


def test_numpy_numbers_are_accepted_and_stored_as_python_numbers():
    import numpy as np

    b = BlockSpec(np.int64(3), "bottleneck", np.array([0, 1]).tolist(), np.bool_(True))
    assert (type(b.level), b.input_offsets, type(b.is_output)) == (int, (0, 1), bool)
    n = NormSpec(np.float32(0.5), 1e-3)
    assert type(n.momentum) is float and n.momentum == 0.5
    assert json.loads(_spec(min_level=np.int64(3)).to_json())["min_level"] == 3
