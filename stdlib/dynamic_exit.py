"""A draft layer chosen per context: self-speculation whose exit layer is picked between rounds.

    propose = dynamic_exit(target, layers = [1, 2, 3], max = 4, policy = "del")

drafts like `autoregressive(early_exit(target, layer = L), max = 4)`, except that L is chosen per row
and per round among `layers` from what the row's earlier rounds measured (DEL, Zarch et al. 2024;
the "draft sources" arm set of BanditSpec, Hou et al. 2025). It lowers to a draft loop whose body
reads its arm from `draft_arm[policy=..., arms=(1, 2, 3), ...]() -> i64[B]` and calls the views
with `model_select[models=("target/exit1", "target/exit2", "target/exit3")](arm, ctx, drafts, step)`:
row b drafts with view arm[b] for the whole round. The arm is chosen on the host before the round,
by an *arm policy* (the length policies' protocol, stdlib/speculation_length.py):

    state = policy.start(batch, seed); arm = policy.cap(state); state = policy.update(state, accepted, drafted)

Policies (per row; a view's cost c_l = its layers / the target's layers, in target calls):
- "ucb": UCB1 over the views on reward (accepted + 1) / (1 + c_l * drafted), scaled into [0, 1].
- "del": DEL's choice, tokens per cost: each view's acceptance rate alpha_l is estimated from the
  verifications of its drafts, and the view maximizing E_l / (1 + c_l * K) is played, where
  E_l = (1 - alpha_l^(K+1)) / (1 - alpha_l) is the expected tokens a round of K drafts commits
  (Leviathan et al. 2023, eq. 1). DEL reads every layer's acceptance from the target's shared hidden
  states at each verification; here a view's own cache is separate, so only the played view is
  measured, and alpha_l gets an upper-confidence bonus sqrt(ln t / (2 n_l)) so an unlucky start does
  not lock a view out.

Lossless whatever the policy: the arm is a function of the earlier rounds only, fixed before the
round's draft or target is sampled, and each view is an ordinary draft whose q the verifier receives.

    >>> p = ExitPolicy(max=4, arms=(1, 2, 3), algorithm="del")
    >>> p.costs = (0.25, 0.5, 0.75)
    >>> s = p.start(1, seed=0)
    >>> [int(p.cap(s))] + [int(p.cap(s := p.update(s, torch.tensor([a]), torch.tensor([4])))) for a in (0, 1, 4)]
    [0, 1, 2, 1]

(after one round each, layer 2's optimistic acceptance rate reaches 1 at two thirds of layer 3's cost).

Skip-layer sets as arms (SWIFT, Xia et al. 2024; CLaSp, Chen et al. 2025):

    propose = dynamic_skip(target, skips = ["1 2", "2 3"], max = 4, policy = "del")
    propose = dynamic_skip(target, skip = 2, layers = [1, 2, 3, 4], pool = 3, policy = "search")

drafts with `skip_layers(target, layers = S)` (role "target/skip1_2") for the set S chosen per row and round,
at cost its kept layers / the target's; policy "search" (SkipSearch) evolves a seeded pool of r-subsets between
rounds. The same ops, the same contract.
"""
from __future__ import annotations

import builtins
import itertools
import math
import re

import torch

from decspec.compiler.lower import Lowering
from decspec.dsl.diagnostics import DecError
from decspec.stdlib.binding import LAYERED_HINT, layer_count
from decspec.stdlib.drafts import chain_draft
from decspec.stdlib.registry import Component, Contract, Param, register
from decspec.stdlib.speculation_length import POLICIES, State

ALGORITHMS = ("ucb", "del")


class ExitPolicy:
    """Per-row choice among draft views (arms) of different costs; `cap(state)` is each row's arm index.

    `costs` (each view's layers / the target's) is set by the draft_arm rule from the bound models
    the first time the op runs (the round graph does not know the target's depth)."""

    def __init__(self, max: int, arms: tuple[int, ...], algorithm: str = "ucb", model: str = "target", views: tuple[str, ...] = ()):
        self.max, self.arms, self.algorithm, self.model, self.views = max, tuple(arms), algorithm, model, tuple(views)
        self.costs: tuple[float, ...] | None = None

    def scale(self) -> float:
        """The best reward any arm can get: (d + 1) / (1 + c * d) over arms and d in 0..max (UCB1 wants r <= 1)."""
        return builtins.max((d + 1) / (1 + c * d) for c in self.costs for d in range(self.max + 1))

    def start(self, batch: int, seed: int) -> State:
        zeros = torch.zeros(batch, len(self.arms), dtype=torch.float64)
        return {"plays": zeros, "total": zeros.clone(), "accepted": zeros.clone(), "trials": zeros.clone(),
                "t": torch.zeros(batch, dtype=torch.long)}

    def cap(self, state: State) -> torch.Tensor:
        """The arm each row plays this round: each arm once in order, then the policy's argmax. -> i64[B]"""
        plays = state["plays"]
        unplayed = plays == 0
        t = state["t"].double().clamp(min=1)[:, None]
        if self.algorithm == "del":
            n = state["trials"].clamp(min=1)
            alpha = (state["accepted"] / n + torch.sqrt(torch.log(t) / (2 * n))).clamp(max=1.0)
            score = expected_tokens(alpha, self.max) / (1 + self._cost(alpha) * self.max)
        else:
            score = state["total"] / plays.clamp(min=1) + torch.sqrt(2 * torch.log(t) / plays.clamp(min=1))
        return torch.where(unplayed.any(-1), unplayed.int().argmax(-1), score.argmax(-1))

    def update(self, state: State, accepted: torch.Tensor, drafted: torch.Tensor) -> State:
        arm = self.cap(state)[:, None]  # the arm played this round (cap is a function of the state)
        accepted, drafted = accepted.double()[:, None], drafted.double()[:, None]
        cost = self._cost(state["total"]).gather(-1, arm)
        ones = torch.ones_like(accepted)
        trials = torch.minimum(accepted + 1, drafted)  # drafts tested: the accepted ones and the first rejected one
        return dict(state, t=state["t"] + 1,
                    plays=state["plays"].scatter_add(-1, arm, ones),
                    total=state["total"].scatter_add(-1, arm, (accepted + 1) / (1 + cost * drafted) / self.scale()),
                    accepted=state["accepted"].scatter_add(-1, arm, accepted),
                    trials=state["trials"].scatter_add(-1, arm, trials))

    def _cost(self, like: torch.Tensor) -> torch.Tensor:
        if self.costs is None:
            raise RuntimeError("the exit policy's view costs were never set (the draft_arm rule sets them from the bound models)")
        return torch.tensor(self.costs, dtype=torch.float64).expand_as(like)


def expected_tokens(alpha: torch.Tensor, k: int) -> torch.Tensor:
    """Expected tokens committed by a round of k drafts accepted i.i.d. with probability alpha: sum_{i<=k} alpha^i."""
    return sum((alpha ** i for i in range(k + 1)), torch.zeros_like(alpha))


POLICIES["exit_layer"] = ExitPolicy


class SkipSearch:
    """SWIFT's on-the-fly search of the skip set, simplified: per row, a pool of `pool` skip sets (arms) drawn at
    random (seeded) among `arms`, every set of r layers among some. Each pool member is played once, then the pool's
    best by measured committed tokens per cost, mean of (accepted + 1) / (1 + c * drafted); after each round where
    every member has been measured, the worst member is replaced by a mutation of the best (one skipped layer swapped
    for a kept one, drawn from a generator seeded by the row's seed and round). Measurements are per arm and kept when
    an arm leaves the pool. `cap(state)` is each row's arm index, a function of the earlier rounds only.

    >>> p = SkipSearch(max=4, arms=("1_2", "1_3", "2_3"), pool=2)
    >>> p.costs = (0.5, 0.5, 0.5)
    >>> s = p.start(1, seed=0)
    >>> pool0 = s["pool"].tolist()
    >>> s = p.update(p.update(s, torch.tensor([4]), torch.tensor([4])), torch.tensor([0]), torch.tensor([4]))
    >>> best = pool0[0][0]  # the first member measured 4 of 4, the second 0: the second is replaced by the best's mutant
    >>> s["pool"].tolist()[0][0] == best and s["pool"].tolist()[0][1] not in pool0[0]
    True
    """

    def __init__(self, max: int, arms: tuple[str, ...], pool: int = 3, model: str = "target", views: tuple[str, ...] = ()):
        self.max, self.arms, self.model, self.views = max, tuple(arms), model, tuple(views)
        self.pool = builtins.min(pool, len(self.arms))
        self.costs: tuple[float, ...] | None = None
        sets = [frozenset(int(i) for i in a.split("_")) for a in self.arms]
        # neighbours[a]: the arms one swap away from arm a (same size, one layer different)
        self.neighbours = [[j for j, o in enumerate(sets) if len(o) == len(a) and len(a - o) == 1] for a in sets]

    def start(self, batch: int, seed: int) -> State:
        g = torch.Generator().manual_seed(int(seed))
        pool = torch.stack([torch.randperm(len(self.arms), generator=g)[: self.pool] for _ in range(batch)])
        zeros = torch.zeros(batch, len(self.arms), dtype=torch.float64)
        return {"pool": pool, "plays": zeros, "total": zeros.clone(), "t": torch.zeros(batch, dtype=torch.long),
                "seed": torch.full((batch,), int(seed), dtype=torch.long) * 1_000_003 + torch.arange(batch)}

    def _means(self, state: State) -> torch.Tensor:
        """Each pool member's measured tokens per cost (-1 while unmeasured). -> f64[B, P]"""
        plays, total = state["plays"].gather(-1, state["pool"]), state["total"].gather(-1, state["pool"])
        return torch.where(plays > 0, total / plays.clamp(min=1), torch.full_like(total, -1.0))

    def cap(self, state: State) -> torch.Tensor:
        """Each row's arm: its first unmeasured pool member, else the pool's best. -> i64[B]"""
        means = self._means(state)
        unplayed = means < 0
        slot = torch.where(unplayed.any(-1), unplayed.int().argmax(-1), means.argmax(-1))
        return state["pool"].gather(-1, slot[:, None])[:, 0]

    def update(self, state: State, accepted: torch.Tensor, drafted: torch.Tensor) -> State:
        if self.costs is None:
            raise RuntimeError("the skip search's view costs were never set (the draft_arm rule sets them from the bound models)")
        arm = self.cap(state)[:, None]
        accepted, drafted = accepted.double()[:, None], drafted.double()[:, None]
        cost = torch.tensor(self.costs, dtype=torch.float64)[arm]
        state = dict(state, t=state["t"] + 1,
                     plays=state["plays"].scatter_add(-1, arm, torch.ones_like(accepted)),
                     total=state["total"].scatter_add(-1, arm, (accepted + 1) / (1 + cost * drafted)))
        means, pool = self._means(state), state["pool"].clone()
        for b in range(pool.shape[0]):
            if (means[b] < 0).any() or pool.shape[1] < 2:
                continue
            best, worst = int(means[b].argmax()), int(means[b].argmin())
            if best == worst:
                continue
            fresh = [j for j in self.neighbours[int(pool[b, best])] if j not in pool[b].tolist()]
            if fresh:
                g = torch.Generator().manual_seed(int(state["seed"][b]) * 7919 + int(state["t"][b]))
                pool[b, worst] = fresh[int(torch.randint(len(fresh), (1,), generator=g))]
        return dict(state, pool=pool)


POLICIES["skip_search"] = SkipSearch


def _base_role(inst) -> str:
    base = inst.arg("model")
    if base.name != "model":
        raise DecError(f"{inst.name} drafts from a model bound by name, e.g. {inst.name}(model(\"target\"), ...); found {base.name}(...)",
                       inst.span, hint="apply it to the target itself")
    return base.arg("name")


def _layers(inst) -> tuple[int, ...]:
    layers = tuple(inst.arg("layers"))
    if not layers:
        raise DecError("dynamic_exit needs at least one layer to choose from", inst.span, hint="e.g. layers = [1, 2, 3]")
    if len(set(layers)) != len(layers):
        raise DecError(f"dynamic_exit's layers must differ from each other, found {list(layers)}", inst.span)
    if min(layers) < 1:
        raise DecError(f"dynamic_exit's layers are exit layers >= 1, found {min(layers)}", inst.span)
    return layers


def view_roles(inst) -> tuple[str, ...]:
    """The roles of the views: those `early_exit(target, layer = L)` binds ("target/exitL")."""
    return tuple(f"{_base_role(inst)}/exit{layer}" for layer in _layers(inst))


def bind_dynamic_exit(inst, models) -> dict:
    from decspec.stdlib.models.views import EarlyExit

    role = _base_role(inst)
    model = models.get(role)
    if model is None:
        return {}
    n = layer_count(model, role, inst)
    bad = [layer for layer in _layers(inst) if layer > n]
    if bad:
        raise DecError(f"dynamic_exit at layer {bad[0]}, but model '{role}' has {n} layers", inst.span,
                       hint=f"choose layers in 1..{n} (a view runs layers 0..L-1, then the final norm and head)")
    return {r: EarlyExit(model, layer) for r, layer in zip(view_roles(inst), _layers(inst))}


def lower_dynamic_exit(lw: Lowering, inst, ctx):
    """Draft loop whose step reads the round's arm (draft_arm) and the chosen view's logits (model_select)."""
    return _lower_arms(lw, inst, ctx, _layers(inst), view_roles(inst))


def _lower_arms(lw: Lowering, inst, ctx, arms: tuple, roles: tuple[str, ...]):
    """The draft loop over views `roles` (one per arm), the arm chosen per row and round by the policy."""
    k, algorithm = inst.arg("max"), inst.arg("policy")
    known = ALGORITHMS + (("search",) if inst.name == "dynamic_skip" else ())
    if algorithm not in known:
        raise DecError(f"unknown {inst.name} policy {algorithm!r}", inst.span, hint=f"use policy = {' or '.join(map(repr, known))}")
    if algorithm == "search":
        params = dict(policy="skip_search", max=k, arms=arms, pool=inst.arg("pool"), model=_base_role(inst), views=roles)
    else:
        params = dict(policy="exit_layer", max=k, arms=arms, algorithm=algorithm, model=_base_role(inst), views=roles)

    def logits_at(body_ctx, drafts, step):
        arm = lw.b.emit("draft_arm", [], **params)[0]  # the view each row drafts with this round
        return lw.model_logits([body_ctx, drafts, step], roles, arm=arm)  # [B, V]: row b from view arm[b]

    return chain_draft(lw, ctx, k, logits_at)


register(
    Component(
        "draft",
        "dynamic_exit",
        (
            Param("model", "model", doc="the model whose early exits draft: the target"),
            Param("layers", "list[int]", default=(1, 2, 3), doc="the exit layers to choose from (each in 1 .. the model's layer count)"),
            Param("max", "int", default=4, low=1, high=64, doc="most tokens drafted per round"),
            Param("policy", "str", default="del", doc="\"del\" (tokens per cost from estimated acceptance rates) or \"ucb\" (UCB1)"),
        ),
        "Self-speculation from an exit layer chosen per row and round among `layers` by a cross-round policy from the "
        "acceptance measured so far; each layer L drafts as early_exit(model, layer = L) (role \"ROLE/exitL\").",
        Contract(True, "the exit layer is chosen from earlier rounds only, before this round's draft or target is sampled; "
                       "each draft token is sampled from the chosen view's distribution q, which the verifier receives"),
        lower_dynamic_exit,
        cite="Zarch et al. 2024, DEL: Context-Aware Dynamic Exit Layer for Efficient Self-Speculative Decoding",
        bind=bind_dynamic_exit,
    )
)


# --------------------------------------------------------------------------- skip-layer sets (SWIFT, CLaSp)

MAX_ARMS = 128  # views bound by one dynamic_skip (each keeps its own cache)


def _skip_sets(inst) -> tuple[tuple[int, ...], ...]:
    """Each arm of `skips` as its sorted 0-based layers: "1 2", "1_2" and "1,2" all read (1, 2); with `skip` > 0,
    every set of `skip` layers among `layers` instead."""
    r = inst.arg("skip")
    if r or inst.arg("policy") == "search":
        among = tuple(sorted(set(inst.arg("layers"))))
        if not 1 <= r < len(among) or min(among) < 0:
            raise DecError(f"dynamic_skip searches sets of skip = {r} layers among layers = {list(inst.arg('layers'))}", inst.span,
                           hint="give skip >= 1 and more than `skip` distinct 0-based layers, e.g. skip = 2, layers = [1, 2, 3, 4]")
        count = math.comb(len(among), r)
        if count > MAX_ARMS:
            raise DecError(f"dynamic_skip would bind {count} views (every {r} of {len(among)} layers), more than {MAX_ARMS}",
                           inst.span, hint="list fewer layers to search among")
        return tuple(itertools.combinations(among, r))
    raw = tuple(inst.arg("skips"))
    if not raw:
        raise DecError("dynamic_skip needs at least one skip set to choose from", inst.span, hint='e.g. skips = ["1 2", "2 3"]')
    sets = []
    for text in raw:
        parts = [p for p in re.split(r"[\s,_+]+", text.strip()) if p]
        if not parts or not all(p.isdigit() for p in parts):
            raise DecError(f"dynamic_skip's skip set {text!r} is not a list of layer numbers", inst.span,
                           hint='write each set as its 0-based layers separated by spaces, e.g. "1 2"')
        sets.append(tuple(sorted(set(int(p) for p in parts))))
    if len(set(sets)) != len(sets):
        raise DecError(f"dynamic_skip's skip sets must differ from each other, found {[' '.join(map(str, s)) for s in sets]}", inst.span)
    return tuple(sets)


def skip_view_roles(inst) -> tuple[str, ...]:
    """The roles of the views: those `skip_layers(target, layers = [...])` binds ("target/skip1_2")."""
    return tuple(f"{_base_role(inst)}/skip{'_'.join(map(str, s))}" for s in _skip_sets(inst))


def bind_dynamic_skip(inst, models) -> dict:
    from decspec.stdlib.models.views import SkipLayers

    role = _base_role(inst)
    model = models.get(role)
    if model is None:
        return {}
    n = getattr(model, "num_layers", None)
    if n is None or not hasattr(model, "layers_to_run"):
        raise DecError(f"dynamic_skip needs a model that can run any subset of its layers; model '{role}' ({type(model).__name__}) "
                       "cannot", inst.span, hint=LAYERED_HINT)
    for s in _skip_sets(inst):
        bad = [i for i in s if i >= n]
        if bad or len(s) >= n:
            what = f"layer {bad[0]}" if bad else f"all {n} layers"
            raise DecError(f"dynamic_skip's skip set {' '.join(map(str, s))!r} skips {what}, but model '{role}' has {n} layers",
                           inst.span, hint=f"list layers in 0..{n - 1}, keeping at least one")
    return {r: SkipLayers(model, s) for r, s in zip(skip_view_roles(inst), _skip_sets(inst))}


def lower_dynamic_skip(lw: Lowering, inst, ctx):
    """As dynamic_exit, the arms being layer-skipped views (draft_arm's arms name the skip sets "1_2", ...)."""
    return _lower_arms(lw, inst, ctx, tuple("_".join(map(str, s)) for s in _skip_sets(inst)), skip_view_roles(inst))


register(
    Component(
        "draft",
        "dynamic_skip",
        (
            Param("model", "model", doc="the model whose layer-skipped views draft: the target"),
            Param("skips", "list[str]", default=("1 2", "2 3", "1 3"),
                  doc="the skip sets to choose from, each its 0-based skipped layers separated by spaces (\"1 2\"); "
                      "each keeps at least one layer"),
            Param("max", "int", default=4, low=1, high=64, doc="most tokens drafted per round"),
            Param("policy", "str", default="del", doc="\"del\" (tokens per cost from estimated acceptance rates), \"ucb\" (UCB1), "
                                                      "or \"search\" (a pool of sets evolved between rounds; needs `skip`)"),
            Param("skip", "int", default=0, low=0, doc="when > 0: the arms are every set of `skip` layers among `layers` "
                                                       "(`skips` is not read)"),
            Param("layers", "list[int]", default=(1, 2, 3), doc="with `skip` > 0: the 0-based layers the sets are drawn from"),
            Param("pool", "int", default=3, low=1, high=64, doc="with policy \"search\": the skip sets kept per row"),
        ),
        "Self-speculation from a skip set chosen per row and round among `skips` by a cross-round policy from the "
        "acceptance measured so far; each set S drafts as skip_layers(model, layers = S) (role \"ROLE/skipI_J\"), "
        "at cost its kept layers / the model's.",
        Contract(True, "the skip set is chosen from earlier rounds only, before this round's draft or target is sampled; "
                       "each draft token is sampled from the chosen view's distribution q, which the verifier receives"),
        lower_dynamic_skip,
        cite="Xia et al. 2024, SWIFT: On-the-Fly Self-Speculative Decoding for LLM Inference Acceleration",
        bind=bind_dynamic_skip,
    )
)
