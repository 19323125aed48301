"""Cross-round exit policies: each round's speculation length, chosen from the rounds before it.

`stop = heuristic(start = 5)` or `stop = bandit(arms = [1, 2, 4, 8])` lowers to one op before the
draft loop, `length_cap[policy=...]() -> i64[B]`, which feeds the loop as its per-row cap: row b
drafts at most cap[b] tokens this round. The cap is chosen on the host, between rounds, by a
*length policy*; for a compiled round it is one more input tensor of a fixed shape, so whatever
lengths the policy picks, the graph never changes (backends/speculation_length.py holds the hook).

A length policy is functional and vectorized over rows, so that the exact backend can follow
every world's own history (and merge only worlds whose histories agree):

    state = policy.start(batch, seed)                # {name: tensor [B, ...]}
    cap = policy.cap(state)                          # i64[B] in [0, max]: this round's lengths
    state = policy.update(state, accepted, drafted)  # after the round, from what it did

Lossless whatever the policy: the cap is a function of the earlier rounds (and of the decoder's
seed), fixed before this round's draft or target is sampled, and rejection (or exact-match)
verification reproduces the target for every speculation length.

    >>> h = Heuristic(max=8, start=5)
    >>> s = h.start(1, seed=0)
    >>> h.cap(s).tolist(), h.cap(h.update(s, torch.tensor([5]), torch.tensor([5]))).tolist()
    ([5], [7])
"""
from __future__ import annotations

import builtins
from typing import Callable, Protocol

import torch

from decspec.dsl.diagnostics import DecError
from decspec.stdlib.registry import Component, Contract, Param, register

State = dict[str, torch.Tensor]


class LengthPolicy(Protocol):
    max: int

    def start(self, batch: int, seed: int) -> State: ...

    def cap(self, state: State) -> torch.Tensor: ...

    def update(self, state: State, accepted: torch.Tensor, drafted: torch.Tensor) -> State: ...


POLICIES: dict[str, Callable[..., LengthPolicy]] = {}  # `length_cap[policy=NAME, max=K, **params]` -> NAME's factory(max=K, **params)


def make_policy(name: str, **params) -> LengthPolicy:
    if name not in POLICIES:
        raise DecError(f"unknown length policy '{name}'; known: {', '.join(sorted(POLICIES))}")
    return POLICIES[name](**params)


class Heuristic:
    """Hugging Face assisted generation's `num_assistant_tokens_schedule="heuristic"`
    (`AssistedCandidateGenerator.update_candidate_strategy`): n starts at `start`; after a round
    whose drafts were all accepted n += 2, else n = max(1, n - 1); a round drafts int(n) tokens
    (bounded by the draft's `max`). Per row, and reset at each generate call (HF's
    "heuristic_transient"; HF's "heuristic" keeps n across calls)."""

    def __init__(self, max: int, start: int = 5):
        self.max, self.first = max, start

    def start(self, batch: int, seed: int) -> State:
        return {"n": torch.full((batch,), float(self.first), dtype=torch.float64)}

    def cap(self, state: State) -> torch.Tensor:
        return state["n"].long().clamp(0, self.max)  # int(num_assistant_tokens); HF's n is unbounded, the draft's max is not

    def update(self, state: State, accepted: torch.Tensor, drafted: torch.Tensor) -> State:
        n = state["n"]
        return {"n": torch.where(accepted.to(n.device) == drafted.to(n.device), n + 2, (n - 1).clamp(min=1))}


class Bandit:
    """BanditSpec (Hou et al. 2025): each round, per row, pick an arm (a speculation length) by
    UCB1 or EXP3 and learn from its reward.

    reward = committed tokens / estimated cost of the round, scaled into [0, 1]:
        r = ((accepted + 1) / (1 + draft_cost * drafted)) / max_a (a + 1) / (1 + draft_cost * a)
    (cost in target calls: one target call plus `draft_cost` per drafted token; the scale is the best
    any arm can get, so r <= 1 as UCB1 and EXP3 assume). No clock is read: choices are a function of
    the rows' history and the decoder's seed only.
    - ucb: play each arm once (in order), then argmax mean_a + sqrt(2 ln t / n_a) (Auer et al. 2002).
    - exp3: p = (1 - gamma) softmax(log w) + gamma / A, arm ~ p with a uniform derived from (seed, t);
      log w_a += gamma * (r / p_a) / A for the played arm (Auer et al. 2002).
    """

    def __init__(self, max: int, arms: tuple[int, ...] = (1, 2, 4, 8), algorithm: str = "ucb", draft_cost: float = 0.1, gamma: float = 0.1):
        self.max, self.algorithm, self.cost, self.gamma = max, algorithm, float(draft_cost), float(gamma)
        self.arms = torch.tensor(arms, dtype=torch.long)
        self.scale = builtins.max((a + 1) / (1 + self.cost * a) for a in arms)  # the best reward any arm can get

    def start(self, batch: int, seed: int) -> State:
        A = len(self.arms)
        zeros = torch.zeros(batch, A, dtype=torch.float64)
        return {"plays": zeros, "total": zeros.clone(), "logw": zeros.clone(), "t": torch.zeros(batch, dtype=torch.long),
                "seed": torch.full((batch,), int(seed), dtype=torch.long)}

    def reward(self, accepted: torch.Tensor, drafted: torch.Tensor) -> torch.Tensor:
        return ((accepted + 1).double() / (1 + self.cost * drafted.double())) / self.scale

    def probs(self, state: State) -> torch.Tensor:
        A = len(self.arms)
        return (1 - self.gamma) * torch.softmax(state["logw"], -1) + self.gamma / A

    def choose(self, state: State) -> torch.Tensor:
        """The arm each row plays this round. -> i64[B]"""
        if self.algorithm == "exp3":
            cdf = self.probs(state).cumsum(-1)
            u = round_uniforms(state["seed"], state["t"])
            return torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).squeeze(-1).clamp(max=len(self.arms) - 1)
        plays = state["plays"]
        unplayed = plays == 0
        t = state["t"].double().clamp(min=1)[:, None]
        score = state["total"] / plays.clamp(min=1) + torch.sqrt(2 * torch.log(t) / plays.clamp(min=1))
        return torch.where(unplayed.any(-1), unplayed.int().argmax(-1), score.argmax(-1))

    def cap(self, state: State) -> torch.Tensor:
        return self.arms[self.choose(state)].clamp(0, self.max)

    def update(self, state: State, accepted: torch.Tensor, drafted: torch.Tensor) -> State:
        arm = self.choose(state)[:, None]  # the arm played this round (choose is a function of the state)
        r = self.reward(accepted, drafted)[:, None]
        out = dict(state, t=state["t"] + 1)
        if self.algorithm == "exp3":
            p = self.probs(state).gather(-1, arm)
            out["logw"] = state["logw"].scatter_add(-1, arm, self.gamma * (r / p) / len(self.arms))
        else:
            out["plays"] = state["plays"].scatter_add(-1, arm, torch.ones_like(r))
            out["total"] = state["total"].scatter_add(-1, arm, r)
        return out


def round_uniforms(seed: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """One U[0,1) per row, a function of (seed, round): a policy's randomness, apart from the
    round's own draws (which it must not disturb). seed, t: i64[B] -> f64[B]"""
    out = torch.empty(seed.shape, dtype=torch.float64)
    for s, r in {(int(a), int(b)) for a, b in zip(seed.tolist(), t.tolist())}:
        g = torch.Generator().manual_seed((s * 1_000_003 + r) % (2**63 - 1))
        out[(seed == s) & (t == r)] = torch.rand((), generator=g, dtype=torch.float64)
    return out


POLICIES["heuristic"] = Heuristic
POLICIES["bandit"] = Bandit

UNTIL = Param("until", "cond", default=False,
              doc="also stop a round's drafting, within the chosen length, after the step whose draft statistics satisfy "
                  "this condition (as `when` does), e.g. until = draft.prob < 0.4; false: never")
CROSS_ROUND = Contract(True, "the speculation length is chosen from earlier rounds only, before this round's draft or target "
                             "is sampled; verification is lossless for every length")


def _until(lw, inst, logits, token):
    """The stop flag of the policy's optional `until` condition (a `when` inside the length the policy chose), or None."""
    cond = inst.arg("until")
    if cond is False:
        return None
    if cond is True:
        raise DecError("`until = true` stops every round after its first draft", inst.span,
                       hint="give a condition on the draft, e.g. until = draft.prob < 0.4, or set the policy's lengths to 1")
    from decspec.stdlib.exits import lower_condition

    return lower_condition(lw, cond, inst.span, logits, token)


def lower_heuristic(lw, inst, logits, token):
    lw.length_cap("heuristic", {"start": inst.arg("start")})
    return _until(lw, inst, logits, token)


def lower_bandit(lw, inst, logits, token):
    arms, algorithm = tuple(inst.arg("arms")), inst.arg("algorithm")
    if not arms:
        raise DecError("bandit needs at least one arm", inst.span, hint="e.g. arms = [1, 2, 4, 8]")
    if any(a < 1 for a in arms):
        raise DecError(f"bandit arms are speculation lengths >= 1, found {min(arms)}", inst.span)
    if len(set(arms)) != len(arms):
        raise DecError("bandit arms must differ from each other", inst.span)
    if algorithm not in ("ucb", "exp3"):
        raise DecError(f"unknown bandit algorithm {algorithm!r}", inst.span, hint="use algorithm = \"ucb\" or \"exp3\"")

    def fits(k: int) -> None:
        if max(arms) > k:
            raise DecError(f"bandit arm {max(arms)} is longer than the draft's max = {k}", inst.span,
                           hint=f"raise the draft source's max to {max(arms)}, or drop the longer arms")

    lw.length_cap("bandit", {"arms": arms, "algorithm": algorithm, "draft_cost": inst.arg("draft_cost"), "gamma": inst.arg("gamma")}, fits)
    return _until(lw, inst, logits, token)


register(
    Component(
        "exit",
        "heuristic",
        (Param("start", "int", default=5, low=1, high=64, doc="speculation length of the first round"), UNTIL),
        "Hugging Face assisted generation's heuristic schedule: +2 tokens after a round whose drafts were all accepted, "
        "-1 otherwise (at least 1), per row; bounded by the draft's `max`. With `until`, a row also stops drafting "
        "within that length after the step whose draft statistics satisfy the condition (HF's "
        "`assistant_confidence_threshold` is `until = draft.prob < 0.4`).",
        CROSS_ROUND,
        lower_heuristic,
        cite="Hugging Face transformers, assisted generation (num_assistant_tokens_schedule=\"heuristic\"); Gante 2023",
    )
)
register(
    Component(
        "exit",
        "bandit",
        (
            Param("arms", "list[int]", default=(1, 2, 4, 8), doc="the speculation lengths to choose from (each <= the draft's max)"),
            Param("algorithm", "str", default="ucb", doc="\"ucb\" (UCB1) or \"exp3\" (EXP3, randomized from the decoder's seed)"),
            Param("draft_cost", "float", default=0.1, low=0.0, high=10.0, doc="cost of one draft step, in target calls, in the reward"),
            Param("gamma", "float", default=0.1, low=0.0, high=1.0, doc="EXP3's exploration rate"),
            UNTIL,
        ),
        "BanditSpec: per row and round, choose the speculation length among `arms` by UCB1 or EXP3; "
        "reward = tokens committed per estimated cost, (accepted + 1) / (1 + draft_cost * drafted), scaled into [0, 1].",
        CROSS_ROUND,
        lower_bandit,
        cite="Hou et al. 2025, BanditSpec: Adaptive Speculative Decoding via Bandit Algorithms",
    )
)
