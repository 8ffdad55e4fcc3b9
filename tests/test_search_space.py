"""The section 3.1 search space: sizes against the paper's formulas, sampling validity, codec."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest
import torch

from torchspine.models.backbone import SpineNet
from torchspine.search.space import SPACE_PRESETS, TABLE1_ALLOCATIONS, SearchSpace, search_space
from torchspine.specs import SPINENET_BLOCKS, StemSpec, spinenet_spec


def test_r0_sp53_sizes_match_paper_formulas():
    # Paper 3.1 with N = 15 blocks, m = 2 stem blocks (R0-SP53, Table 1):
    # permutations (N-5)! 5! = 10! * 5! = 3628800 * 120.
    sp = search_space("r0_sp53", intermediate_window=None)
    terms = sp.size_terms()
    assert terms["permutations"] == 3628800 * 120 == 435456000
    # connections prod_{i=m}^{N+m-1} C(i, 2) = prod_{i=2}^{16} C(i, 2) = 16! 15! / 2^15.
    assert terms["connections"] == math.factorial(16) * math.factorial(15) // 2**15
    assert terms["level_adjustments"] == 1 and terms["block_types"] == 1


def test_spinenet49_space_adjustment_sizes():
    # 4^(N-5) = 4^10 level adjustments and 2^N = 2^15 block types (paper 3.1).
    terms = search_space("spinenet49").size_terms()
    assert terms["level_adjustments"] == 4**10 == 1048576
    assert terms["block_types"] == 2**15 == 32768


def test_window_restricts_intermediate_parents():
    # Paper 5.1: intermediate blocks choose within the last 5 built blocks (plus the m = 2 stem
    # blocks here); output blocks among everything. Block k (0-based) then has
    # 2 + min(k, 5) candidates if intermediate (k < 10) and 2 + k if output.
    sp = search_space("r0_sp53")
    expected = (math.prod(math.comb(2 + min(k, 5), 2) for k in range(10))
                * math.prod(math.comb(2 + k, 2) for k in range(10, 15)))
    assert sp.size_terms()["connections"] == expected
    assert sp.parent_candidates(7) == (0, 1, 4, 5, 6, 7, 8)


def test_table1_allocations():
    # Section 3.3: ResNet-50's blocks with one L5 replaced by an L6 and an L7 give
    # {L2: 3, L3: 4, L4: 6, L5: 2, L6: 1, L7: 1} (17 blocks) for every R[N]-SP[M] row.
    for name in ("r35_sp18", "r23_sp30", "r14_sp39", "r0_sp53"):
        a = TABLE1_ALLOCATIONS[name]
        total = Counter(a.stem_levels) + Counter(a.permuted_levels)
        assert dict(total) == {2: 3, 3: 4, 4: 6, 5: 2, 6: 1, 7: 1}, name
        # "SP[M]": M = 3 layers per scale-permuted block (+ the 2 stem blocks counted for R0).
    assert len(TABLE1_ALLOCATIONS["r35_sp18"].permuted_levels) * 3 == 18
    assert len(TABLE1_ALLOCATIONS["r23_sp30"].permuted_levels) * 3 == 30
    assert len(TABLE1_ALLOCATIONS["r14_sp39"].permuted_levels) * 3 == 39
    # SpineNet-49's row of Table 1 is the level count of the official block table.
    assert Counter(TABLE1_ALLOCATIONS["spinenet49"].permuted_levels) == Counter(b.level for b in SPINENET_BLOCKS)
    # R35-SP18: 11 stem blocks, so m = 11 candidates and (6-5)! 5! = 120 orderings.
    sp = search_space("r35_sp18")
    assert sp.num_stem_blocks == 11 and sp.size_terms()["permutations"] == 120


def _tiny_space(**kw) -> SearchSpace:
    return SearchSpace(intermediate_levels=(2, 4), output_levels=(3, 4), stem=StemSpec(block_levels=(2, 2)),
                       intermediate_window=None, block_types=("bottleneck", "residual"), name="tiny", **kw)


def _enumerate(space: SearchSpace) -> list[list[int]]:
    out: list[list[int]] = []

    def walk(prefix: list[int]) -> None:
        if len(prefix) == space.num_decisions:
            out.append(list(prefix))
            return
        for o in space.valid_options(prefix):
            walk(prefix + [o])

    walk([])
    return out


def test_tiny_space_enumeration_matches_size_and_sampling_is_uniform():
    # By hand: perms 2! * 2! = 4; parents C(2,2) C(3,2) C(4,2) C(5,2) = 1*3*6*10 = 180;
    # levels {-1,0,1,2} on L2 and L4 all inside [1, 7]: 16; types 2^4 = 16.
    sp = _tiny_space(level_adjustments=(-1, 0, 1, 2))
    assert sp.size_terms() == {"permutations": 4, "connections": 180, "level_adjustments": 16, "block_types": 16}
    sp = _tiny_space()  # no level adjustments: 4 * 180 * 16 = 11520 decision lists
    everything = _enumerate(sp)
    assert len(everything) == sp.size() == 4 * 180 * 16
    assert len({tuple(d) for d in everything}) == len(everything)
    # Uniform sampling: the marginal of one block's parent pair is uniform.
    rng = random.Random(0)
    counts = Counter()
    n = 12000
    for _ in range(n):
        d = sp.sample(rng)
        spec = sp.decode(d)
        counts[spec.blocks[2].input_offsets] += 1  # block 2 has C(4, 2) = 6 equally likely pairs
    assert len(counts) == 6
    for c in counts.values():
        assert abs(c / n - 1 / 6) < 0.015


def test_level_bounds_mask_adjustments():
    # L7 + {1, 2} and L1 - 1 leave [1, 7]: only 2 of 4 offsets remain for an L7 slot, 3 for L1... (L1: 0, 1, 2)
    sp = SearchSpace(intermediate_levels=(7, 1), stem=StemSpec(block_levels=(2, 2)),
                     level_adjustments=(-1, 0, 1, 2), name="edges")
    assert sp.size_terms()["level_adjustments"] == 2 * 3
    rng = random.Random(1)
    for _ in range(300):
        spec = sp.decode(sp.sample(rng))
        assert all(1 <= b.level <= 7 for b in spec.blocks)


@pytest.mark.parametrize("name", sorted(SPACE_PRESETS))
def test_thousands_of_samples_are_valid_specs(name):
    sp = search_space(name)
    rng = random.Random(123)
    n_int = sp.num_intermediate
    for _ in range(1500 if name == "spinenet49" else 400):
        d = sp.sample(rng)
        spec = sp.decode(d)
        spec.validate()
        assert [b.level for b in spec.blocks[n_int:]] != [] and sorted(b.level for b in spec.blocks[n_int:]) == [3, 4, 5, 6, 7]
        assert all(b.is_output == (k >= n_int) for k, b in enumerate(spec.blocks))
        for k, b in enumerate(spec.blocks):
            assert b.input_offsets[0] < b.input_offsets[1]
            assert set(b.input_offsets) <= set(sp.parent_candidates(k))
        # The intermediate levels are the allocation's, each moved by an allowed offset.
        assert sp.decode(sp.encode(spec)).blocks == spec.blocks


def test_samples_build_and_run():
    sp = search_space("spinenet49")
    rng = random.Random(7)
    for _ in range(1):
        spec = sp.decode(sp.sample(rng)).replace(filter_size_scale=0.25, resample_alpha=0.25, endpoints_num_filters=16)
        model = SpineNet(spec).eval()
        with torch.no_grad():
            out = model(torch.randn(1, 3, 64, 64))
        assert [tuple(v.shape[-2:]) for v in out.values()] == [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]


def test_official_spinenet49_lies_in_its_search_space():
    sp = search_space("spinenet49")
    spec = spinenet_spec("49")
    decisions = sp.encode(spec)
    assert sp.decode(decisions).blocks == spec.blocks
    # Without level adjustments (R0-SP53) SpineNet-49's L6/L7 intermediates are unreachable.
    with pytest.raises(ValueError, match="cannot be reached"):
        search_space("r0_sp53", block_types=("bottleneck", "residual")).encode(spec)
    # With a window of 1, its block 3 (parents feats 2 and 4) is outside the space.
    with pytest.raises(ValueError, match="not one of the valid options"):
        search_space("spinenet49", intermediate_window=1).encode(spec)


def test_bad_settings_raise():
    with pytest.raises(ValueError, match="unknown search space"):
        search_space("r99")
    with pytest.raises(ValueError, match="fewer than two candidate parents"):
        SearchSpace(intermediate_levels=(3,), stem=StemSpec(block_levels=(2,)))
    with pytest.raises(ValueError, match="unknown block type"):
        _tiny_space(level_adjustments=(0,)).__class__(intermediate_levels=(3,), block_types=("conv",))
    with pytest.raises(ValueError, match="expected"):
        search_space("r0_sp53").decode([0, 1])


@pytest.mark.parametrize("name", ["hourglass", "fish"])
def test_fixed_orderings_search_connections_only(name):
    # Table 7: the Hourglass / Fish orderings of R0-SP53's blocks are fixed, so the space is
    # R0-SP53's connections alone: 1 ordering, the same prod C(., 2) as r0_sp53 (same N and m).
    from torchspine.specs.ablations import FIXED_ORDERINGS

    sp = search_space(name)
    terms = sp.size_terms()
    assert terms["permutations"] == 1
    assert terms["connections"] == search_space("r0_sp53").size_terms()["connections"]
    assert sp.num_decisions == 2 * 15  # two parents per block, nothing else
    rng = random.Random(0)
    for _ in range(200):
        d = sp.sample(rng)
        spec = sp.decode(d)
        assert tuple(b.level for b in spec.blocks) == FIXED_ORDERINGS[name].levels
        assert sp.encode(spec) == d
