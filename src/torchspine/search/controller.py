"""The RNN controller trained with REINFORCE (Zoph and Le, ICLR 2017; NAS-FPN, CVPR 2019),
which SpineNet uses for its search (paper 5.1: "the recurrent neural network based controller
proposed in [44] ... the only method we are aware of that supports searching for permutations").

An LSTM cell emits the decisions of a :class:`SearchSpace` one by one. At step ``t`` its input
is the embedding of the previous decision (a learned start vector at ``t = 0``); a linear
head of the step's kind (ordering, parent, level, type) turns the hidden state into logits
over the step's options, and invalid options (used permutation slots, parents outside the
window, out-of-range levels) are masked to ``-inf`` before the softmax, so every sample is a
valid architecture.

Training (Zoph and Le, section 3.2) maximises ``E[R]`` with the REINFORCE gradient
``(R - b) * grad log p(a_1..a_T)``, where the baseline ``b`` is an exponential moving average
of past rewards, plus an entropy bonus ``entropy_weight * sum_t H(p_t)`` that keeps the
policy exploring. One update per finished trial (asynchronous, like the parallel workers of
those papers): the loss is

    loss = -(R - b) * log p(decisions) - entropy_weight * sum_t H_t,

then ``b <- baseline_decay * b + (1 - baseline_decay) * R`` (``b`` starts at the first reward).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from torchspine.search.space import STEP_KINDS, SearchSpace
from torchspine.search.strategy import Strategy

__all__ = ["Controller", "ControllerStrategy"]


@contextmanager
def _single_thread() -> Iterator[None]:
    """The controller is tiny: extra intra-op threads only add contention (10x slower on a busy
    2-core machine), so its steps run on one thread and the setting is restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


class Controller(nn.Module):
    """The policy: an LSTM cell with per-kind input embeddings and output heads.

    Args:
        space: the search space whose decisions it emits.
        hidden_size: LSTM width (Zoph and Le use 35 for CIFAR cells; NASNet 100).
    """

    def __init__(self, space: SearchSpace, *, hidden_size: int = 64) -> None:
        super().__init__()
        self.space = space
        self.hidden_size = hidden_size
        self.kinds = tuple(k for k in STEP_KINDS if any(s.kind == k for s in space.steps))
        self.start = nn.Parameter(torch.zeros(hidden_size))
        self.cell = nn.LSTMCell(hidden_size, hidden_size)
        width = {k: max(s.num_options for s in space.steps if s.kind == k) for k in self.kinds}
        self.embed = nn.ModuleDict({k: nn.Embedding(width[k], hidden_size) for k in self.kinds})
        self.heads = nn.ModuleDict({k: nn.Linear(hidden_size, width[k]) for k in self.kinds})
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Uniform(-0.1, 0.1), as in Zoph and Le (and ENAS); start vector zero."""
        for name, p in self.named_parameters():
            if name != "start":
                nn.init.uniform_(p, -0.1, 0.1)

    def _run(self, decisions: Sequence[int] | None, generator: torch.Generator | None
             ) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        """Sample (``decisions=None``) or score ``decisions``; returns (decisions, log p, entropy sum)."""
        h = torch.zeros(1, self.hidden_size)
        c = torch.zeros(1, self.hidden_size)
        x = self.start.unsqueeze(0)  # (1, hidden)
        taken: list[int] = []
        log_p = torch.zeros(())
        entropy = torch.zeros(())
        for t, step in enumerate(self.space.steps):
            h, c = self.cell(x, (h, c))
            logits = self.heads[step.kind](h)[0]  # (width,)
            valid = self.space.valid_options(taken)
            mask = torch.full_like(logits, float("-inf"))
            mask[valid] = 0.0
            logp_all = torch.log_softmax(logits + mask, dim=-1)
            probs = logp_all.exp()
            entropy = entropy - (probs[valid] * logp_all[valid]).sum()
            if decisions is None:
                choice = int(torch.multinomial(probs.detach(), 1, generator=generator))
            else:
                choice = int(decisions[t])
                if choice not in valid:
                    raise ValueError(f"controller: decision {t} ({step.kind} {step.index}) = {choice} "
                                     f"is not one of the valid options {valid}")
            log_p = log_p + logp_all[choice]
            taken.append(choice)
            x = self.embed[step.kind](torch.tensor([choice]))
        return taken, log_p, entropy

    @torch.no_grad()
    def sample(self, generator: torch.Generator | None = None) -> list[int]:
        return self._run(None, generator)[0]

    def log_prob(self, decisions: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log p(decisions), sum of per-step entropies)``, differentiable."""
        _, log_p, entropy = self._run(decisions, None)
        return log_p, entropy


class ControllerStrategy(Strategy):
    """REINFORCE on :class:`Controller` (see the module docstring for the update).

    Args:
        learning_rate: Adam step size (ENAS uses 3.5e-4 ... 1e-3; NAS-FPN's PPO 1e-3 order).
        baseline_decay: moving-average decay of the reward baseline (Zoph and Le: 0.95-0.99).
        entropy_weight: weight of the entropy bonus.
        hidden_size: LSTM width.
        optimizer: ``"adam"`` or ``"sgd"`` (plain SGD makes the update checkable by hand).
    """

    name = "rl"

    def __init__(self, space: SearchSpace, *, seed: int = 0, learning_rate: float = 3e-3,
                 baseline_decay: float = 0.95, entropy_weight: float = 1e-3, hidden_size: int = 64,
                 optimizer: str = "adam") -> None:
        if not 0.0 <= baseline_decay < 1.0:
            raise ValueError(f"rl: baseline_decay must be in [0, 1), got {baseline_decay}")
        if learning_rate <= 0 or entropy_weight < 0:
            raise ValueError(f"rl: need learning_rate > 0 and entropy_weight >= 0, got {learning_rate}, "
                             f"{entropy_weight}")
        if optimizer not in ("adam", "sgd"):
            raise ValueError(f"rl: optimizer must be 'adam' or 'sgd', got {optimizer!r}")
        super().__init__(space, seed=seed)
        self.learning_rate = learning_rate
        self.baseline_decay = baseline_decay
        self.entropy_weight = entropy_weight
        self.optimizer_name = optimizer
        init_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        self.controller = Controller(space, hidden_size=hidden_size)
        torch.random.set_rng_state(init_state)
        self.generator = torch.Generator().manual_seed(seed)
        opt_cls = torch.optim.Adam if optimizer == "adam" else torch.optim.SGD
        self.optimizer = opt_cls(self.controller.parameters(), lr=learning_rate)
        self.baseline: float | None = None
        self.last_stats: dict[str, float] = {}

    def _propose(self) -> list[int]:
        with _single_thread():
            return self.controller.sample(self.generator)

    def _learn(self, trial_id: int, decisions: tuple[int, ...], reward: float) -> None:
        with _single_thread():
            self._reinforce(decisions, reward)

    def _reinforce(self, decisions: tuple[int, ...], reward: float) -> None:
        baseline = reward if self.baseline is None else self.baseline
        advantage = reward - baseline
        log_p, entropy = self.controller.log_prob(decisions)
        loss = -advantage * log_p - self.entropy_weight * entropy
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.baseline = self.baseline_decay * baseline + (1.0 - self.baseline_decay) * reward
        self.last_stats = {"advantage": advantage, "log_prob": float(log_p.detach()), "entropy": float(entropy.detach()),
                           "baseline": self.baseline}

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "controller": self.controller.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "baseline": self.baseline,
            "hparams": {"learning_rate": self.learning_rate, "baseline_decay": self.baseline_decay,
                        "entropy_weight": self.entropy_weight, "hidden_size": self.controller.hidden_size,
                        "optimizer": self.optimizer_name},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        hp = state["hparams"]
        if hp["hidden_size"] != self.controller.hidden_size or hp["optimizer"] != self.optimizer_name:
            raise ValueError(f"rl: saved controller has hidden_size={hp['hidden_size']}, optimizer="
                             f"{hp['optimizer']!r}; this one {self.controller.hidden_size}, {self.optimizer_name!r}")
        super().load_state_dict(state)
        self.controller.load_state_dict(state["controller"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.baseline = None if state["baseline"] is None else float(state["baseline"])

    def entropy(self) -> float:
        """The entropy sum of a fresh sample (a measure of how settled the policy is)."""
        with torch.no_grad():
            _, _, ent = self.controller._run(None, torch.Generator().manual_seed(0))
        return float(ent)

