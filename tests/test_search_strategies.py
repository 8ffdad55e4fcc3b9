"""Strategies: controller log-probabilities and a REINFORCE update by hand, evolution, save/restore."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from torchspine.search.controller import Controller, ControllerStrategy
from torchspine.search.evolution import RegularizedEvolution, mutate
from torchspine.search.space import SearchSpace, search_space
from torchspine.search.strategy import create_strategy, load_strategy, save_strategy
from torchspine.specs import StemSpec



def _tiny() -> SearchSpace:
    # 1 intermediate (L3) + outputs L3, L4; stem of 2 blocks; no window; two block types.
    # Steps: perm_output(1 step, 2 options), then parents for 3 blocks, then 3 block types.
    return SearchSpace(intermediate_levels=(3,), output_levels=(3, 4), stem=StemSpec(block_levels=(2, 2)),
                       intermediate_window=None, block_types=("bottleneck", "residual"), name="tiny")


def test_tiny_space_steps():
    sp = _tiny()
    kinds = [s.kind for s in sp.steps]
    assert kinds == ["perm_output", "parent_a", "parent_b", "parent_a", "parent_b", "parent_a", "parent_b",
                     "block_type", "block_type", "block_type"]


def _zero(controller: Controller) -> None:
    with torch.no_grad():
        for p in controller.parameters():
            p.zero_()


def test_log_prob_by_hand_with_zero_weights():
    # With every weight zero the LSTM state stays 0 (c = i*g = 0.5*tanh(0) = 0), logits = 0,
    # so each step is uniform over its valid options: log p = -sum_t log(n_t).
    sp = _tiny()
    ctrl = Controller(sp, hidden_size=4)
    _zero(ctrl)
    decisions = [1, 0, 1, 1, 2, 0, 3, 1, 0, 1]
    # Valid options per step, by hand: perm_output 2 slots; block 0 parents from {0, 1}:
    # a in {0} (1), b in {1} (1); block 1 from {0, 1, 2}: a in {0, 1} (2), b > 1 -> {2} (1);
    # block 2 from {0, 1, 2, 3}: a in {0, 1, 2} (3), b > 0 -> {1, 2, 3} (3); 3 types x 2.
    counts = [2, 1, 1, 2, 1, 3, 3, 2, 2, 2]
    log_p, entropy = ctrl.log_prob(decisions)
    assert float(log_p.detach()) == pytest.approx(-sum(math.log(n) for n in counts), abs=1e-6)
    assert float(entropy.detach()) == pytest.approx(sum(math.log(n) for n in counts), abs=1e-6)


def test_reinforce_update_by_hand():
    # Zero weights, plain SGD: only the output-head biases get a gradient (dlogits/dh = W = 0
    # and h = 0), and d log softmax / d logits = onehot - p with p uniform over valid options;
    # the entropy gradient vanishes at the uniform distribution. So one update adds
    # lr * (R - b) * sum_t (onehot(a_t) - valid_t / n_t) to the bias of step t's kind.
    sp = _tiny()
    st = ControllerStrategy(sp, seed=0, learning_rate=0.5, baseline_decay=0.9, entropy_weight=0.01,
                            hidden_size=4, optimizer="sgd")
    _zero(st.controller)
    p0 = st.ask()
    st.tell(p0.trial_id, 0.3)  # first reward: the baseline starts at it, advantage 0 -> no change
    assert st.baseline == pytest.approx(0.3)
    for p in st.controller.parameters():  # (float rounding of the entropy term only)
        assert float(p.detach().abs().max()) < 1e-9
    p1 = st.ask()
    decisions = list(p1.decisions)
    st.tell(p1.trial_id, 0.8)
    adv = 0.8 - 0.3
    expected = {k: np.zeros(st.controller.heads[k].bias.shape[0]) for k in st.controller.kinds}
    for t, step in enumerate(sp.steps):
        valid = sp.valid_options(decisions[:t])
        g = expected[step.kind]
        g[decisions[t]] += 1.0
        g[valid] -= 1.0 / len(valid)
    for k in st.controller.kinds:
        np.testing.assert_allclose(st.controller.heads[k].bias.detach().numpy(), 0.5 * adv * expected[k], atol=1e-6)
        assert float(st.controller.heads[k].weight.detach().abs().max()) < 1e-9
    # Baseline: 0.9 * 0.3 + 0.1 * 0.8 = 0.35.
    assert st.baseline == pytest.approx(0.35)


def _numpy_log_prob(ctrl: Controller, decisions: list[int]) -> float:
    """An independent LSTM written out with numpy (PyTorch's gate order i, f, g, o)."""
    sd = {k: v.detach().numpy().astype(np.float64) for k, v in ctrl.state_dict().items()}
    hs = ctrl.hidden_size
    h = np.zeros(hs)
    c = np.zeros(hs)
    x = sd["start"]
    sig = lambda z: 1 / (1 + np.exp(-z))
    total = 0.0
    for t, step in enumerate(ctrl.space.steps):
        z = sd["cell.weight_ih"] @ x + sd["cell.bias_ih"] + sd["cell.weight_hh"] @ h + sd["cell.bias_hh"]
        i, f, g, o = sig(z[:hs]), sig(z[hs:2 * hs]), np.tanh(z[2 * hs:3 * hs]), sig(z[3 * hs:])
        c = f * c + i * g
        h = o * np.tanh(c)
        logits = sd[f"heads.{step.kind}.weight"] @ h + sd[f"heads.{step.kind}.bias"]
        valid = ctrl.space.valid_options(decisions[:t])
        lv = logits[valid]
        total += logits[decisions[t]] - (np.log(np.sum(np.exp(lv - lv.max()))) + lv.max())
        x = sd[f"embed.{step.kind}.weight"][decisions[t]]
    return total


def test_log_prob_matches_independent_lstm():
    sp = search_space("r35_sp18")
    torch.manual_seed(0)
    ctrl = Controller(sp, hidden_size=8)
    with torch.no_grad():
        for p in ctrl.parameters():
            p.normal_(0, 0.5)
    for seed in range(3):
        d = ctrl.sample(torch.Generator().manual_seed(seed))
        sp.decode(d)  # a valid architecture
        assert float(ctrl.log_prob(d)[0].detach()) == pytest.approx(_numpy_log_prob(ctrl, d), abs=1e-4)


def test_reinforce_raises_the_mean_reward():
    # Reward: the fraction of decisions equal to a fixed valid target (uniform policy: about
    # 0.6 on this space). REINFORCE must move the policy towards higher reward.
    sp = _tiny()
    st = ControllerStrategy(sp, seed=0, learning_rate=0.05, hidden_size=16)
    target = tuple(sp.sample(random.Random(5)))
    rewards = []
    for _ in range(80):
        p = st.ask()
        rewards.append(sum(a == b for a, b in zip(p.decisions, target)) / len(target))
        st.tell(p.trial_id, rewards[-1])
    assert np.mean(rewards[-20:]) > np.mean(rewards[:20]) + 0.15


def test_mutation_changes_one_choice_and_stays_valid():
    sp = search_space("spinenet49")
    rng = random.Random(0)
    for _ in range(300):
        parent = sp.sample(rng)
        child = mutate(sp, parent, rng)
        a, b = sp.decode(parent), sp.decode(child)
        assert child != parent
        changed = sum(x != y for x, y in zip(a.blocks, b.blocks))
        assert changed >= 1


def test_evolution_ages_population():
    sp = search_space("r35_sp18")
    ev = RegularizedEvolution(sp, seed=0, population_size=4, sample_size=2)
    for i in range(10):
        p = ev.ask()
        ev.tell(p.trial_id, float(i))
    assert len(ev.population) == 4
    assert [r for _, r in ev.population] == [6.0, 7.0, 8.0, 9.0]  # the oldest left, whatever their reward
    # Failed trials (NaN / None) do not enter the population.
    p = ev.ask()
    ev.tell(p.trial_id, float("nan"))
    assert [r for _, r in ev.population] == [6.0, 7.0, 8.0, 9.0]
    with pytest.raises(ValueError, match="not outstanding"):
        ev.tell(p.trial_id, 1.0)


@pytest.mark.parametrize("name", ["random", "evolution", "rl"])
def test_state_save_restore_continues_identically(name, tmp_path):
    sp = search_space("r0_sp53_plus")
    kw = {"population_size": 4, "sample_size": 2} if name == "evolution" else {}
    if name == "rl":
        kw = {"hidden_size": 16}
    a = create_strategy(name, sp, seed=3, **kw)
    for i in range(7):
        p = a.ask()
        a.tell(p.trial_id, 0.1 * (i % 3))
    outstanding = [a.ask(), a.ask()]
    save_strategy(a, tmp_path / "state.pt")
    b = load_strategy(create_strategy(name, sp, seed=99, **kw), tmp_path / "state.pt")
    assert sorted(b.pending) == [p.trial_id for p in outstanding]
    for s in (a, b):
        s.tell(outstanding[1].trial_id, 0.7)
        s.tell(outstanding[0].trial_id, None)
    for _ in range(5):
        pa, pb = a.ask(), b.ask()
        assert (pa.trial_id, pa.decisions) == (pb.trial_id, pb.decisions)
        a.tell(pa.trial_id, 0.5)
        b.tell(pb.trial_id, 0.5)
    with pytest.raises(ValueError, match="strategy state is for"):
        load_strategy(create_strategy("random" if name != "random" else "evolution", sp), tmp_path / "state.pt")
