"""Decoding that combines several distributions: model expressions whose logits are a function of several models' (or
one model's layers') logits at the same positions. They stand wherever a model stands, the target included:

    target = contrastive(expert = model("target"), amateur = model("draft"), alpha = 0.1, beta = 0.5)   # contrastive decoding
    target = dola(model("target"), layers = [1, 2, 3])                                                   # DoLa

Lowering: where a round reads a combined model's logits (`Lowering.model_logits`: the target in every verifier, a
draft model in a draft loop), it reads each part's logits at the same positions (each grammar-masked, when the spec has a
grammar) and emits one `logits_combine` op over them; what that op yields is what the sampler pipeline, the verifier and
the exit policies see. So speculative decoding *of* a combined target is speculative decoding of that distribution:
`propose = autoregressive(model("draft"))` with `verify = rejection` samples exactly from softmax(pipeline(scores)).

The math (`contrastive_scores`, `dola_scores`) is here, once: the eager rule of `logits_combine` calls it, the exact
backend runs that rule in float64, the inductor backend's kernel is the same call, and `reference_logits` (what
decspec.testing's target distribution reads) applies it to plain forwards of the bound models.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import torch

from decspec.compiler.lower import Combination
from decspec.dsl.diagnostics import DecError
from decspec.stdlib.binding import layer_count
from decspec.stdlib.registry import Component, Contract, Param, register

FORMS = ("weighted", "difference")


def contrastive_scores(expert: torch.Tensor, amateur: torch.Tensor, alpha: float, beta: float = 0.5,
                       form: str = "weighted", tau: float = 1.0) -> torch.Tensor:
    """Contrastive decoding's scores over [..., V] logits.

    V_head = {x : p_exp(x) >= alpha * max p_exp, p_exp(x) > 0} (the plausibility constraint), and on V_head
      form "difference" (Li et al. 2022):          log p_exp(x) - log p_ama(x)
      form "weighted"   (O'Brien & Lewis 2023):    (1 + beta) log p_exp(x) - beta log p_ama(x)
    -inf elsewhere; p_ama is softmax(amateur logits / tau) (Li et al.'s amateur temperature). O'Brien & Lewis write the weighted form on raw logits; log-softmax differs from them by one constant
    per row, which softmax ignores, so the distribution is the same.

        >>> expert, amateur = torch.tensor([[2.0, 1.0, -3.0]]), torch.tensor([[3.0, 0.0, 0.0]])
        >>> scores = contrastive_scores(expert, amateur, alpha=0.1, beta=1.0)   # p_exp = [0.73, 0.27, 0.005]
        >>> scores.isfinite().tolist(), int(scores.argmax())                    # the amateur's favourite loses
        ([[True, True, False]], 1)
    """
    le = torch.log_softmax(expert.to(torch.promote_types(expert.dtype, torch.float32)), -1)  # [..., V]
    la = torch.log_softmax(amateur.to(le.dtype) / tau, -1).clamp_min(-1e30)  # a token the amateur rules out: favoured, never +inf
    head = (le >= le.amax(-1, keepdim=True) + math.log(alpha)) & (le > -math.inf) if alpha > 0 else le > -math.inf
    score = le - la if form == "difference" else (1 + beta) * le - beta * la
    return torch.where(head, score, -math.inf)


def dola_divergence(lf: torch.Tensor, lp: torch.Tensor) -> torch.Tensor:
    """The layer-selection divergence of Hugging Face's DoLa between log-probabilities lf, lp [..., V] -> [...]:
    mean over the vocabulary of 0.5 (m (log m - lf) + m (log m - lp)), m = (p_f + p_p) / 2 (its kl_div(input, target)
    has the mixture as target). Tokens where m = 0 count 0. The paper's Jensen-Shannon divergence has the KLs the other
    way round (p_f log(p_f / m) + p_p log(p_p / m)); HF's form is kept, so that this DoLa is HF's."""
    m = 0.5 * (lf.exp() + lp.exp())
    log_m = torch.log(m.clamp_min(torch.finfo(m.dtype).tiny))
    terms = torch.where(m > 0, m * (2 * log_m - lf.clamp_min(-1e30) - lp.clamp_min(-1e30)), 0.0)
    return 0.5 * terms.mean(-1)


def dola_scores(final: torch.Tensor, premature: list[torch.Tensor], relative_top: float) -> torch.Tensor:
    """DoLa's scores over [..., V] logits of the final layer and of the candidate premature layers.

    Per row (each position of each sequence), the candidate whose log-probabilities diverge most from the final layer's
    (`dola_divergence`; first on ties; no choice with one candidate) is the premature layer M; then
    log p_final(x) - log p_M(x) where log p_final(x) >= max log p_final + log(relative_top) (the relative-top filter),
    -inf elsewhere. Hugging Face chooses M once per batch (its divergence averaged over the rows); here each row
    chooses its own, as the paper does per token: the two agree for one sequence.
    """
    dtype = torch.promote_types(final.dtype, torch.float32)
    lf = torch.log_softmax(final.to(dtype), -1)  # [..., V]
    lps = torch.stack([torch.log_softmax(p.to(dtype), -1) for p in premature])  # [J, ..., V]
    if len(premature) == 1:
        lp = lps[0]
    else:
        chosen = dola_divergence(lf[None], lps).argmax(0)  # [...]
        lp = lps.gather(0, chosen[None, ..., None].expand(1, *lf.shape))[0]
    keep = lf >= lf.amax(-1, keepdim=True) + (math.log(relative_top) if relative_top > 0 else -math.inf)
    return torch.where(keep & (lf > -math.inf), lf - lp.clamp_min(-1e30), -math.inf)


def combine_logits(kind: str, logits: list[torch.Tensor], **params: Any) -> torch.Tensor:
    """`logits_combine`'s meaning: logits[0] is the expert's (contrastive) or the final layer's (dola)."""
    if kind == "contrastive":
        expert, amateur = logits
        return contrastive_scores(expert, amateur, params["alpha"], params["beta"], params["form"], params.get("tau", 1.0))
    if kind == "dola":
        return dola_scores(logits[0], list(logits[1:]), params["relative_top"])
    raise ValueError(f"unknown logits_combine kind {kind!r}")


# --------------------------------------------------------------------------- the components


def _base(inst) -> str:
    base = inst.arg("model")
    if base.name != "model":
        raise DecError(f"dola contrasts the layers of a model bound by name, e.g. dola(model(\"target\"), ...); found "
                       f"{base.name}(...)", inst.span, hint="apply it to the target itself")
    return base.arg("name")


def layer_role(base: str, layer: int, norm: bool) -> str:
    """The role of a premature layer's logits: "target/exit2" with the final norm (early_exit's view), "target/lens2"
    without (the logit lens: the head on the layer's raw output)."""
    return f"{base}/{'exit' if norm else 'lens'}{layer}"


def _layers(inst) -> list[int]:
    layers = list(dict.fromkeys(inst.arg("layers")))
    if not layers:
        raise DecError("dola needs at least one candidate premature layer", inst.span, hint="e.g. layers = [1, 2, 3]")
    return layers


def parts(inst) -> tuple[list, dict[str, Any]]:
    """A combined model's parts, in logits_combine's input order (model instances, or roles its binding adds: DoLa's
    layer views), and the op's params. Raises DecError at the instance for a bad `form`."""
    if inst.name == "contrastive":
        form = inst.arg("form")
        if form not in FORMS:
            raise DecError(f"contrastive form must be {' or '.join(map(repr, FORMS))}, found {form!r}", inst.span,
                           hint='"weighted": (1+beta) log p_exp - beta log p_ama (O\'Brien & Lewis 2023); '
                                '"difference": log p_exp - log p_ama (Li et al. 2022)')
        params = {"alpha": float(inst.arg("alpha")), "beta": float(inst.arg("beta")), "form": form}
        if inst.arg("tau") != 1:  # printed only when set: the default keeps the IR text
            params["tau"] = float(inst.arg("tau"))
        return [inst.arg("expert"), inst.arg("amateur")], params
    base, norm = _base(inst), inst.arg("norm")
    return [inst.arg("model")] + [layer_role(base, i, norm) for i in _layers(inst)], {"relative_top": float(inst.arg("relative_top"))}


def lower_combined(lw, inst) -> str:
    """The name a combined model goes by while lowering (never a bound role, never printed in the IR), registered with
    the Lowering (when there is one: stdlib/binding.py role_of passes None) so `model_logits` expands it."""
    from decspec.stdlib.binding import role_of

    found, params = parts(inst)
    roles = tuple(p if isinstance(p, str) else role_of(p) if lw is None else lw.role(p) for p in found)
    name = f"{inst.name}({', '.join(roles)}; {', '.join(f'{k}={v!r}' for k, v in params.items())})"
    if lw is not None:
        lw.combined[name] = Combination(roles, (("kind", inst.name),) + tuple(params.items()), inst.span, inst.name)
    return name


register(
    Component(
        "model",
        "contrastive",
        (
            Param("expert", "model", doc="the large model whose plausible tokens are kept"),
            Param("amateur", "model", doc="the small model whose preferences are subtracted"),
            Param("alpha", "float", default=0.1, low=0.0, high=1.0,
                  doc="plausibility cut: keep the tokens with p_exp >= alpha * max p_exp (0: every token the expert allows)"),
            Param("beta", "float", default=0.5, low=0.0, high=10.0, doc="the amateur's weight in the \"weighted\" form"),
            Param("form", "str", default="weighted", doc="\"weighted\": (1+beta) log p_exp - beta log p_ama (O'Brien & Lewis "
                  "2023); \"difference\": log p_exp - log p_ama (Li et al. 2022)"),
            Param("tau", "float", default=1.0, low=0.05, high=10.0, doc="the amateur's temperature: p_ama = softmax(amateur "
                  "logits / tau) (Li et al. use 0.5 with small amateurs; 1: none)"),
        ),
        "Contrastive decoding's distribution: on the tokens the expert finds plausible (p_exp >= alpha max p_exp), the "
        "expert's log-probabilities minus the amateur's (weighted by beta, or not), -inf elsewhere; the sampler pipeline "
        "applies to these scores. A model expression: as the target, speculative decoding samples from it exactly.",
        Contract(None, "a combined model carries no sampling contract; as the target, it is the distribution the verifier keeps"),
        lower_combined,
        cite="Li et al. 2022, Contrastive Decoding; O'Brien & Lewis 2023, Contrastive Decoding Improves Reasoning in LLMs",
    )
)


def bind_dola(inst, models: Mapping[str, Any]) -> dict:
    """Each candidate layer as a view of the bound model (stdlib/models/views.py EarlyExit), under layer_role's name."""
    from decspec.stdlib.models.views import EarlyExit

    base, norm = _base(inst), inst.arg("norm")
    model = models.get(base)
    if model is None:  # reported where the spec's models are checked
        return {}
    n = layer_count(model, base, inst)
    bad = [i for i in _layers(inst) if not 0 <= i < n]
    if bad:
        raise DecError(f"dola's candidate layer {bad[0]} is not a premature layer of model '{base}', which has {n} layers",
                       inst.span, hint=f"choose layers in 0..{n - 1} (0: the embeddings; i: the output of the first i layers)")
    return {layer_role(base, i, norm): EarlyExit(model, i, norm=norm) for i in _layers(inst)}


register(
    Component(
        "model",
        "dola",
        (
            Param("model", "model", doc="the model whose layers are contrasted: the target"),
            Param("layers", "list[int]", doc="candidate premature layers: 0 is the embeddings, i the output of the first i "
                  "layers (each below the model's layer count)"),
            Param("relative_top", "float", default=0.1, low=0.0, high=1.0,
                  doc="keep the tokens with p_final >= relative_top * max p_final"),
            Param("norm", "bool", default=False, doc="apply the final norm before the head at the premature layers (false: "
                  "the head reads the layer's raw output, as Hugging Face's generate(dola_layers=...) does)"),
        ),
        "DoLa's distribution: at each position, the candidate layer whose next-token distribution diverges most from the "
        "final layer's is the premature layer; the scores are log p_final - log p_premature on the tokens that pass the "
        "relative-top filter, -inf elsewhere. Each candidate layer is a view of the model (role \"ROLE/lensI\", or "
        "\"ROLE/exitI\" with norm), called beside it.",
        Contract(None, "a combined model carries no sampling contract; as the target, it is the distribution the verifier keeps"),
        lower_combined,
        cite="Chuang et al. 2024, DoLa: Decoding by Contrasting Layers Improves Factuality in Large Language Models",
        bind=bind_dola,
    )
)

COMBINED = ("contrastive", "dola")


def reference_logits(inst, models: Mapping[str, Any], tokens: torch.Tensor,
                     mask: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """A model expression's next-token logits after each row of tokens [S, T], from plain forwards of the bound models
    (`models`: {role: model} as bind_models gives them, views included) -> [S, V] (float64). What a lossless decoder
    of a combined target must reproduce (decspec.testing.target_distribution); no round, no cache reuse. `mask`
    (a grammar's) applies to each part's logits before they are combined, as in a round."""
    if isinstance(inst, str) or inst.name not in COMBINED:
        from decspec.stdlib.binding import role_of

        model = models[inst if isinstance(inst, str) else role_of(inst)]
        logits = model.forward(tokens, model.new_cache(tokens.shape[0], tokens.shape[1])).logits[:, -1].double()
        return logits if mask is None else mask(logits)
    found, params = parts(inst)
    return combine_logits(inst.name, [reference_logits(p, models, tokens, mask) for p in found], **params)
