"""The public API: compile a spec into a Decoder, generate with it.

    >>> import decspec
    >>> from decspec.stdlib.models.table import TableModel
    >>> target, draft = TableModel.random(8, 1, seed=0), TableModel.random(8, 1, seed=1)
    >>> dec = decspec.compile("specs/speculative.dec", target=target, draft=draft, k=3)
    >>> out = dec.generate([[1, 2, 3]], max_new_tokens=5, seed=0)
    >>> len(out.tokens[0])
    5
"""
from __future__ import annotations

import os
import threading
from contextlib import nullcontext
from typing import Any, Mapping, Sequence

from decspec.backends import get_backend
from decspec.backends.arguments import chat_prompts, generate_arguments, logprobs_request, shown, stop_strings
from decspec.backends.runtime import Commit, Interrupted, Result, rounds as run_rounds
from decspec.compiler.analysis import Verdict, losslessness
from decspec.compiler.ir import Graph
from decspec.compiler.lower import lower
from decspec.compiler.passes import run_pipeline
from decspec.dsl.diagnostics import DecError
from decspec.dsl.spec import Spec
from decspec.stdlib.binding import base_role, bind_models
from decspec.stdlib.models.protocol import eos_token_ids
from decspec.stdlib.models.tokenizer import Tokenizer, same_vocabulary
from decspec.stream import Stream, row_texts


def _is_model(v: Any) -> bool:
    from decspec.stdlib.models.diffusion_protocol import is_diffusion

    return (hasattr(v, "forward") and hasattr(v, "new_cache") and hasattr(v, "vocab_size")) or is_diffusion(v)


class Decoder:
    """A compiled spec bound to models.

    spec: the checked Spec; graph: the optimized round IR (None for a `search` spec: beam search runs on the host,
    backends/beam.py); verdict: the losslessness analysis;
    matcher: the compiled grammar (a `Matcher`) when the spec has a `grammar` slot, else None.

    Threads may share a Decoder: every `generate` call owns its state (the committed context, the model
    caches, its random generator seeded by `seed`, its grammar walk), so concurrent calls give the
    tokens they would give one after another. A torch.compile'd round (`backend_options={"compile":
    True}`) keeps static buffers, so its calls are serialized by the Decoder's lock; the models bound
    are only read (a custom model must keep its state in the cache `new_cache` returns).
    """

    def __init__(self, spec: Spec, graph: Graph, models: Mapping[str, Any], backend: str = "eager",
                 backend_options: Mapping[str, Any] | None = None, vocab: Any = None):
        self.spec = spec
        self.graph = graph
        self.models = dict(models)
        self.backend = get_backend(backend)
        self.backend_options = dict(backend_options or {})  # e.g. {"compile": True} for the inductor backend
        backend_option_names(self.backend, self.backend_options)
        self._lock = threading.RLock()  # the lazy builds below, and a serial runner's generations
        self._round_runners: dict[bool, Any] = {}  # open graph? -> its runner
        self._round_runner_options: dict = {}
        self._open: Graph | None = None  # the round with its sampler numbers as inputs (per-call settings), built on first use
        self.verdict: Verdict = losslessness(spec)
        self.search = None  # a `search` slot's plan (stdlib/search.py): beam search instead of rounds, or a Rerank of samples
        if spec.slot("search") is not None:
            from decspec.stdlib.search import Rerank, plan

            if spec.slot("target").name != "model":  # beam search reads one model through the protocol (backends/beam.py)
                raise DecError(f"`search` needs a target bound by name; '{spec.slot('target').name}' combines several models' "
                               "logits, which beam search on the host does not read yet", spec.slot("target").span,
                               hint='use target = model("target"), or drop `search` to decode the combined distribution')

            self.search = plan(spec)
            if not isinstance(self.search, Rerank) and self.backend.NAME not in ("eager", "inductor"):
                raise DecError(f"the {self.backend.NAME} backend cannot run the `search` slot: beam search runs its steps on "
                               "the eager backend, or as a compiled step on the inductor backend", spec.slot("search").span,
                               hint='compile it with backend="eager" or "inductor"')
        self.denoise = None  # a `denoise` slot's plan (stdlib/diffusion.py): generate runs the diffusion loop (backends/diffusion.py)
        if spec.slot("denoise") is not None:
            from decspec.stdlib.diffusion import plan as denoise_plan

            self.denoise = denoise_plan(spec)
            if self.backend.NAME != "eager":
                raise DecError(f"the {self.backend.NAME} backend cannot run the `denoise` slot: masked-diffusion decoding is a "
                               "host loop over the model's denoise calls (backends/diffusion.py), not a round graph to compile",
                               spec.slot("denoise").span, hint='compile it with backend="eager"; its exact distribution: '
                                                               'decoder.distribution(...)')
        from decspec.backends.diffusion import check_model_kinds

        check_model_kinds(spec, self.models)
        self.vocab = vocab  # the grammar's vocabulary as bytes, for targets without a tokenizer
        self._grammars: dict[str, Any] | None = None
        if spec.slot("grammar") is not None and base_role(spec.slot("target")) in self.models:
            self._bound_grammars()  # bound now, so vocabulary errors surface at compile time
            if self.denoise is not None:
                self._diffusion_grammar()  # a diffusion decoder's needs a regular grammar: refused now too

    def _bound_grammars(self) -> dict[str, Any]:
        """{slot: Matcher}: the spec's grammar compiled over the target's vocabulary (once; {} without a grammar)."""
        with self._lock:
            if self._grammars is None:
                from decspec.stdlib.structured import bind_grammar

                role = base_role(self.spec.slot("target"))  # a combined target's first model's vocabulary
                target = self.models[role] if role in self.models else self._bound_models()[role]
                self._grammars = bind_grammar(self.spec, target, self.vocab)
            return self._grammars

    @property
    def matcher(self) -> Any:
        """The compiled grammar of the `grammar` slot (see stdlib/grammars/matcher.py), or None."""
        return self._bound_grammars().get("grammar")

    def _bound_models(self) -> dict[str, Any]:
        with self._lock:
            if not self.models and self.denoise is not None:  # a diffusion decoder: the shipped diffusion model
                from decspec.backends.diffusion import default_model

                self.models = {self.spec.slot("target").arg("name"): default_model()}
            if not self.models:  # nothing bound at compile time: the shipped reference pair
                from decspec.stdlib.models.pretrained import reference_models

                self.models = dict(reference_models())
        missing = [r for r in self.spec.models if r not in self.models]
        if missing:
            args = ", ".join(f"{r}=..." for r in missing)
            raise DecError(f"decoder '{self.spec.name}' needs model(s) {', '.join(map(repr, missing))}; pass them: decspec.compile(spec, {args})")
        bound = bind_models(self.spec, {r: self.models[r] for r in self.spec.models})  # + views of them (early_exit, ...)
        vocab = {r: m.vocab_size for r, m in bound.items()}
        if len(set(vocab.values())) > 1:
            shown = ", ".join(f"'{r}' has {v}" for r, v in vocab.items())
            raise DecError(f"the models' vocabularies differ ({shown}); speculative decoding needs one shared vocabulary")
        tokenizers = {r: t for r, m in bound.items() if (t := getattr(m, "tokenizer", None)) is not None}
        if len(tokenizers) > 1:
            (r0, t0), *rest = tokenizers.items()
            for r, t in rest:
                if t is not t0 and not same_vocabulary(t0, t):
                    raise DecError(
                        f"model '{r0}' ({t0.name or 'its tokenizer'}) and model '{r}' ({t.name or 'its tokenizer'}) "
                        "use different tokenizers (the same ids mean different text); give both models one tokenizer"
                    )
        return bound

    def _runner(self, per_call: bool = False):
        """The backend's round runner, for backends that generate code (built once per Decoder and graph: the spec's, or
        the open one whose sampler numbers are inputs)."""
        if not hasattr(self.backend, "RoundRunner"):
            return None
        backend_option_names(self.backend, self.backend_options)  # set after construction too (dec.backend_options = ...)
        with self._lock:
            if self._round_runner_options != self.backend_options:
                self._round_runners = {}
                self._round_runner_options = dict(self.backend_options)
            if per_call not in self._round_runners:
                graph = self._open_graph() if per_call else self.graph
                self._round_runners[per_call] = self.backend.RoundRunner(graph, **self.backend_options)
            return self._round_runners[per_call]

    @property
    def tokenizer(self) -> Tokenizer | None:
        """The target's tokenizer (the first model role's), when it carries one."""
        first = self._bound_models().get(self.spec.models[0]) if self.spec.models else None
        return getattr(first, "tokenizer", None)

    def generate(self, input_ids: Any = None, max_new_tokens: int = 32, seed: Any = None,
                 eos_token_id: int | Sequence[int] | None = "default", *, stop: Any = None,  # type: ignore[assignment]
                 messages: Any = None, logprobs: bool = False, top_logprobs: int = 0, **sampling: Any) -> Result:
        """Generate up to max_new_tokens per row.

        input_ids: a [B, T] tensor, a ragged list of id lists, one id list — or, when the target
        carries a tokenizer, a string or a list of strings (encoded as the model's own tokenizer does: BOS
        first only if its tokenizer adds one).
        messages: instead of input_ids, a conversation ([{"role": "user", "content": "Hi"}, ...]) or a list of
        them (one per row), rendered with the model's chat template and encoded as Hugging Face
        `apply_chat_template(..., add_generation_prompt=True)` does.
        seed: one integer seeds the call's generator (all rows draw from it); a list of one seed (or None) per
        prompt gives each seeded row a stream of its own (backends/draws.py), so its tokens do not depend on the
        other rows of the call (what decspec serve does with a request's `seed`).
        eos_token_id: stop a row at this token, or at any of a list of them; by default the target's own (all
        of its generation_config's EOS ids); None disables.
        stop: a string or a list of strings (or one list per row): a row ends where its text first contains one,
        and its text is cut right before it, even when a speculative round went past it; its tokens are the
        fewest that cover that text (backends/detokenize.py). Needs a tokenizer.
        **sampling: the numbers of the spec's sampler stages for this call, one for every row or a list of one per
        row: temperature, top_k, top_p, min_p, typical_p, epsilon_cutoff, eta_cutoff, repetition_penalty, frequency_penalty, presence_penalty
        (backends/sampling.py). The spec fixes which stages there are; new values never recompile. Eager and
        inductor backends. max_new_tokens may be one count per row.
        logprobs: also return each token's log-probability under the target's distribution after the sampler
        pipeline (Result.logprobs; one more target forward per round, backends/logprobs.py), masked by the grammar
        first when the spec has one. top_logprobs: also the that many most likely tokens at each position, as
        (id, log p) best first (Result.top_logprobs; OpenAI's top_logprobs), at most 20 (arguments.MAX_TOP_LOGPROBS).
        Returns Result(tokens, stats, text, finish_reason, stopped_by); `text` holds the decoded continuations
        when there is a tokenizer. Every argument is checked before anything is allocated
        (backends/arguments.py): a wrong type or value is a DecError naming it. Ctrl-C raises `Interrupted` (a
        KeyboardInterrupt) whose `result` holds the tokens (and text) generated until then.
        """
        stream = self._stream(input_ids, max_new_tokens, seed, eos_token_id, stop, messages, sampling, (logprobs, top_logprobs),
                              texts=stop is not None)
        tokenizer = self.tokenizer
        try:
            result = stream.run()
        except Interrupted as e:  # Ctrl-C: the text so far travels with the exception
            if tokenizer is not None:
                e.result.text = [tokenizer.decode(row) for row in e.result.tokens]
            raise
        if tokenizer is not None and stop is None:
            result.text = [tokenizer.decode(row) for row in result.tokens]
        return result

    def stream(self, input_ids: Any = None, max_new_tokens: int = 32, seed: Any = None,
               eos_token_id: int | Sequence[int] | None = "default", *, stop: Any = None,  # type: ignore[assignment]
               messages: Any = None, logprobs: bool = False, top_logprobs: int = 0, **sampling: Any) -> Stream:
        """What `generate` does, as it happens: an iterator of `Delta`s (decspec/stream.py), one per row and round
        that added something, each with the round's new tokens and the text they complete (never half a
        character). `stream(...).result` is the Result once the iterator is exhausted; the deltas of a row add up
        to it. The arguments are generate's, checked before the first round runs.

            for delta in decoder.stream("def fibonacci(n):", max_new_tokens=64, stop=["\\n\\n"]):
                print(delta.text, end="", flush=True)

        A `search` spec (beam search) has no rounds to stream: its whole answer comes as one delta per row.
        """
        return self._stream(input_ids, max_new_tokens, seed, eos_token_id, stop, messages, sampling, (logprobs, top_logprobs),
                            texts=True)

    def _stream(self, input_ids: Any, max_new_tokens: Any, seed: Any, eos_token_id: Any, stop: Any, messages: Any,
                sampling: Mapping[str, Any], logprobs: Any, texts: bool) -> Stream:
        """The arguments checked, then a Stream over the rounds (not started). texts: follow each row's text
        (RowText: streaming and stop strings) when the target has a tokenizer."""
        models = self._bound_models()
        tokenizer = self.tokenizer
        target = models[self.spec.models[0]]
        from_model = isinstance(eos_token_id, str) and eos_token_id == "default"  # the sentinel: the target's own
        if from_model:
            eos_token_id = eos_token_ids(target)
        if messages is not None:
            if input_ids is not None:
                raise DecError("give input_ids or messages, not both")
            input_ids = chat_prompts(messages, tokenizer)
        args = generate_arguments(input_ids, max_new_tokens, seed, eos_token_id, vocab_size=target.vocab_size, tokenizer=tokenizer,
                                  eos_from="the target model's eos_token_id" if from_model else "eos_token_id")
        stops = stop_strings(stop, len(args.prompts))
        if stops is not None and tokenizer is None:
            raise DecError("stop strings are matched in the decoded text, but the target model carries no tokenizer; "
                           "end rows at token ids with eos_token_id=[...] instead")
        if stops is not None and self.search is not None:
            raise DecError("beam search (the `search` slot) does not take stop strings: its hypotheses are ranked whole"
                           if self._beam else f"{self.search.method} does not take stop strings yet (each of its n copies "
                           "of a prompt would need its own text tracker)",
                           self.spec.slot("search").span, hint="end hypotheses with eos_token_id=[...] instead")
        if self.denoise is not None:
            from decspec.backends.diffusion import check_arguments

            check_arguments(self.spec, stops, bool(logprobs[0] or logprobs[1]), args.max_new_tokens)
        settings = self._settings(sampling, len(args.prompts)) if sampling else None
        logprobs, top = logprobs_request(*logprobs)
        scoring = self._scoring(logprobs, open=settings is not None)
        if self._beam and isinstance(args.max_new_tokens, list):
            raise DecError("beam search (the `search` slot) takes one max_new_tokens for every prompt", self.spec.slot("search").span)
        rows = row_texts(tokenizer, stops, len(args.prompts)) if texts and tokenizer is not None else None
        return Stream(self._rounds(models, args, rows, settings, scoring, top), rows)

    def _scoring(self, logprobs: Any, open: bool) -> tuple[str, tuple] | None:
        """logprobs=True (checked: logprobs_request): (the target's role, the sampler stages) the runtime scores each
        round's tokens with."""
        if not logprobs:
            return None
        if self.search is not None:
            raise DecError("a `search` spec does not report logprobs; its result has each hypothesis's score (result.scores "
                           "for beam search, result.candidate_scores for the sampling searches)", self.spec.slot("search").span)
        target = self.spec.slot("target")
        if target.name != "model":  # the scorer reads one model's logits (backends/logprobs.py)
            raise DecError(f"logprobs are not reported for a combined target ('{target.name}') yet: the scorer reads one "
                           "model's logits, which would be the expert's, not the combined distribution's", target.span)
        from decspec.backends.sampling import pipeline

        return self.spec.models[0], pipeline(self.spec, open)

    def _settings(self, sampling: Mapping[str, Any], rows: int) -> dict[str, Any]:
        """Per-call sampler settings checked -> the per-row values the open graph's rounds read (backends/sampling.py)."""
        from decspec.backends.sampling import sampler_settings

        if self._beam:
            raise DecError(f"beam search (the `search` slot) does not take per-call sampler settings ({', '.join(sampling)}); "
                           "its scores are fixed by the spec", self.spec.slot("search").span)
        if self.backend.NAME not in ("eager", "inductor"):
            raise DecError(f"per-call sampler settings ({', '.join(sampling)}) run on the eager and inductor backends, not "
                           f"on {self.backend.NAME}; set them in the spec (decspec.compile(..., {next(iter(sampling))}=...))")
        return sampler_settings(self.spec, sampling, rows)

    def _open_graph(self) -> Graph:
        """The round graph with every sampler parameter a per-row input (built once; backends/sampling.py)."""
        with self._lock:
            if self._open is None:
                from decspec.backends.sampling import open_sampler

                self._open = run_pipeline(open_sampler(lower(self.spec)))
            return self._open

    def _rounds(self, models: dict[str, Any], args: Any, texts: list | None, settings: dict[str, Any] | None = None,
                scoring: tuple[str, tuple] | None = None, top_logprobs: int = 0):
        """The runtime's rounds (a generator of Commits returning the Result); a search as one Commit."""
        if self.search is not None and not self._beam:  # a sampling search: the rounds on n copies of each prompt
            return (yield from self._reranked(models, args, texts, settings))
        if self.search is not None:  # deterministic: `seed` is not used
            from decspec.backends.beam import beam_generate

            options = self.backend_options if self.backend.NAME == "inductor" else {}
            if set(options) - {"compile", "mode", "dynamo_backend"}:
                raise DecError(f"beam search on the inductor backend takes the options 'compile', 'mode' and 'dynamo_backend' "
                               f"(got {sorted(options)})", self.spec.slot("search").span)
            target = models[self.spec.slot("target").arg("name")]
            if hasattr(self.search, "words"):  # lexically constrained beam search: a host loop (backends/constrained.py)
                from dataclasses import replace

                from decspec.backends.constrained import constrained_generate

                result = constrained_generate(replace(self.search, phrases=self._phrases(target)), target, args.prompts,
                                              max_new_tokens=args.max_new_tokens, eos_token_id=args.eos_token_id)
            else:
                with self._lock if options.get("compile") else nullcontext():  # a compiled step: one call at a time
                    result = beam_generate(self.search, target, args.prompts,
                                           max_new_tokens=args.max_new_tokens, eos_token_id=args.eos_token_id,
                                           static=self.backend.NAME == "inductor", grammar=self.matcher, **options)
            eos = set(args.eos_token_id or ())
            finished = {b: ("stop", row[-1]) if row and row[-1] in eos else ("length", None) for b, row in enumerate(result.tokens)}
            for b, row in enumerate(result.tokens) if texts is not None else ():
                texts[b].feed(row, last=True)
            yield Commit(result.tokens, finished)
            return result
        if self.denoise is not None:  # masked diffusion: one host loop over the model's denoise calls
            from decspec.backends.diffusion import denoise_generate, with_settings

            role = self.spec.slot("target").arg("name")
            result = denoise_generate(with_settings(self.denoise, self.spec, settings), models[role], args.prompts, max_new_tokens=args.max_new_tokens,
                                      eos_token_id=args.eos_token_id, seed=args.seed, grammar=self._diffusion_grammar(), role=role)
            for b, row in enumerate(result.tokens) if texts is not None else ():
                texts[b].feed(row, last=True)
            yield Commit(result.tokens, {b: (f, s) for b, (f, s) in enumerate(zip(result.finish_reason, result.stopped_by))})
            return result
        graph = self.graph if settings is None else self._open_graph()
        runner = self._runner(per_call=settings is not None)
        with self._lock if runner is not None and runner.serial else nullcontext():
            return (yield from run_rounds(
                graph, models, args.prompts, max_new_tokens=args.max_new_tokens, seed=args.seed,
                eos_token_id=args.eos_token_id, rules=self.backend.RULES, backend=self.backend.NAME, runner=runner,
                grammars=self._bound_grammars(), texts=texts, sampling=settings, logprobs=scoring, top_logprobs=top_logprobs,
            ))

    def _phrases(self, target: Any) -> tuple[tuple[int, ...], ...]:
        """constrained_beam's words as token ids: the target tokenizer's encoding, else ids written in decimal."""
        tokenizer = getattr(target, "tokenizer", None)
        out = []
        for word in self.search.words:
            if tokenizer is not None:
                ids = tokenizer.encode(word)
            else:
                try:
                    ids = [int(x) for x in word.split()]
                except ValueError:
                    raise DecError(f"constrained_beam's word {word!r} is text, but the target has no tokenizer to encode it",
                                   self.spec.slot("search").span, hint='give token ids separated by spaces, e.g. "12 7"') from None
            if not ids or any(not 0 <= i < target.vocab_size for i in ids):
                raise DecError(f"constrained_beam's word {word!r} is not a phrase of the target's vocabulary (ids {ids})",
                               self.spec.slot("search").span)
            out.append(tuple(ids))
        return tuple(out)

    @property
    def _beam(self) -> bool:
        """Whether the spec is a beam search (no round graph), not a sampling search."""
        return self.search is not None and self.graph is None

    def _reranked(self, models: dict[str, Any], args: Any, texts: list | None, settings: dict[str, Any] | None):
        """A sampling search (stdlib/search.py Rerank, backends/rerank.py): the spec's rounds over n copies of each prompt,
        one candidate picked per prompt; yielded as one Commit."""
        from decspec.backends.rerank import rerank
        from decspec.backends.sampling import pipeline

        span = self.spec.slot("search").span
        if isinstance(args.seed, (list, tuple)):
            raise DecError(f"{self.search.method} samples n = {self.search.n} candidates per prompt in one batch; give one "
                           "seed for the call (a seed per prompt would give its n copies the same stream)", span)
        decode = self._decoder()

        def run(prompts, max_new_tokens, per_row, scored):
            graph = self.graph if per_row is None else self._open_graph()
            runner = self._runner(per_call=per_row is not None)
            scoring = (self.spec.models[0], pipeline(self.spec, per_row is not None)) if scored else None
            with self._lock if runner is not None and runner.serial else nullcontext():
                rounds = run_rounds(graph, models, prompts, max_new_tokens=max_new_tokens, seed=args.seed,
                                    eos_token_id=args.eos_token_id, rules=self.backend.RULES, backend=self.backend.NAME,
                                    runner=runner, grammars=self._bound_grammars(), sampling=per_row, logprobs=scoring)
                try:
                    while True:
                        next(rounds)
                except StopIteration as done:
                    return done.value

        result = rerank(self.search, run, args.prompts, args.max_new_tokens, settings, decode)
        if self.tokenizer is None and self.vocab is not None:  # text spelled from the vocabulary (a tokenizer's: generate)
            result.text = [texts[c] for texts, c in zip(result.candidate_texts, result.chosen)]
        finished = {b: ("stop", by) if reason == "stop" else ("length", None)
                    for b, (reason, by) in enumerate(zip(result.finish_reason, result.stopped_by))}
        for b, row in enumerate(result.tokens) if texts is not None else ():
            texts[b].feed(row, last=True)
        yield Commit(result.tokens, finished)
        return result

    def _decoder(self):
        """ids -> text: the target's tokenizer, else the `vocab` bytes given to compile, else the ids in decimal separated
        by spaces ("12 5 7": what a sampling search's answer regex and chrF read for a model without a vocabulary)."""
        tokenizer = self.tokenizer
        if tokenizer is not None:
            return tokenizer.decode
        if self.vocab is not None:
            vocab = list(self.vocab)
            return lambda ids: b"".join(vocab[i] or b"" for i in ids if 0 <= i < len(vocab)).decode("utf-8", "replace")
        return lambda ids: " ".join(map(str, ids))

    def _diffusion_grammar(self) -> Any:
        """The grammar of a `denoise` spec as the diffusion decoder reads it (backends/diffusion_grammar.py), or None."""
        if self.matcher is None:
            return None
        from decspec.backends.diffusion_grammar import DiffusionGrammar

        target = self._bound_models()[self.spec.slot("target").arg("name")]
        try:
            return DiffusionGrammar(self.matcher, target.mask_id, target.vocab_size)
        except DecError as e:
            raise DecError(e.diagnostics[0].message, self.spec.slot("grammar").span, hint=e.diagnostics[0].hint) from None

    def distribution(self, prompt: Any, max_new_tokens: int, **kwargs: Any):
        """The exact distribution of the tokens this decoder generates after one prompt, computed by
        the exact backend ({tokens: probability}; small vocabularies, e.g. table models). See
        decspec.backends.exact.exact_distribution for the keyword arguments (a `denoise` decoder's:
        backends/exact/diffusion.py, eos_token_id only)."""
        from decspec.backends.exact import exact_distribution

        if self.denoise is not None:
            from decspec.backends.exact.diffusion import diffusion_distribution
            from decspec.stdlib.models.protocol import eos_token_ids

            target = self._bound_models()[self.spec.slot("target").arg("name")]
            eos = kwargs.pop("eos_token_id", "default")
            eos = eos_token_ids(target) if isinstance(eos, str) and eos == "default" else ([eos] if isinstance(eos, int) else eos)
            limit = {"max_worlds": kwargs.pop("max_rows")} if "max_rows" in kwargs else {}
            if kwargs:
                raise DecError(f"a diffusion decoder's distribution takes eos_token_id and max_rows, not {', '.join(kwargs)}")
            return diffusion_distribution(self.denoise, target, list(prompt), max_new_tokens, eos, self._diffusion_grammar(), **limit)

        return exact_distribution(self, prompt, max_new_tokens, **kwargs)

    def __repr__(self) -> str:
        return f"Decoder({self.spec.name!r}, backend={self.backend.NAME!r}, models={sorted(self.models)})"


def compile(
    spec: str | os.PathLike,
    *,
    decoder: str | None = None,
    backend: str = "eager",
    models: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
    vocab: Any = None,
    backend_options: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> Decoder:
    """Compile a .dec file (path) or spec text into a Decoder.

    Keyword arguments that are models bind the spec's model roles (`target=..., draft=...`);
    the others override the decoder's parameters (`k=6`). `models=`/`overrides=` take dicts.
    With no models at all, the shipped reference pair (`reference_models()`) binds "target" and "draft".
    A spec with a `grammar` slot compiles its grammar over the target's tokenizer, or over `vocab` (one
    bytes or None per token id, e.g. `[b"a", b"b", b"{", b"}", None]` for a table model) when given.
    `backend_options`: the backend's options, e.g. `{"compile": True}` for the inductor backend (docs/backends.md).
    """
    if not isinstance(spec, (str, os.PathLike)):
        raise DecError(f"spec must be a .dec file's path or spec text (got {shown(spec)})")
    if decoder is not None and not isinstance(decoder, str):
        raise DecError(f"decoder must be the name of a decoder in the spec, or None (got {shown(decoder)})")
    get_backend(backend)  # its name, checked before the spec is
    models, overrides = _mapping("models", models), _mapping("overrides", overrides)
    for role, model in models.items():
        if not _is_model(model):
            raise DecError(f"models[{role!r}] is {shown(model)}, not a model: {MODEL_PROTOCOL}")
    passed = {}  # keyword arguments that are not models: parameter overrides, unless the spec has no such parameter
    for name, value in kwargs.items():
        (models if _is_model(value) else passed)[name] = value
    overrides.update(passed)

    from decspec.dsl.check import load

    try:
        checked = load(spec, overrides=overrides, decoder=decoder)
    except DecError as e:  # a keyword argument meant as a model (target=None) is not a misspelled parameter
        for name, value in passed.items():
            if not isinstance(value, (bool, int, float, str, list, tuple)) and any(d.message.startswith(f"unknown parameter '{name}' in overrides") for d in e.diagnostics):
                raise DecError(f"{name}={shown(value)} is not a model, and the decoder has no parameter '{name}' to set; "
                               f"{MODEL_PROTOCOL}") from None
        raise
    from decspec.stdlib.search import has_round

    graph = run_pipeline(lower(checked)) if has_round(checked) else None  # beam search has no round graph
    return Decoder(checked, graph, models, backend, vocab=vocab, backend_options=_mapping("backend_options", backend_options))


def backend_option_names(backend: Any, options: Mapping[str, Any]) -> None:
    """A DecError naming an option the backend does not take (the inductor backend's are its RoundRunner's keywords)."""
    import inspect

    runner = getattr(backend, "RoundRunner", None)
    known = [] if runner is None else [p for p in inspect.signature(runner).parameters if p != "graph"]
    unknown = [k for k in options if k not in known]
    if unknown:
        takes = f"takes {', '.join(map(repr, known))}" if known else "takes no options"
        raise DecError(f"backend_options: the {backend.NAME} backend has no option {unknown[0]!r}; it {takes}",
                       hint="see docs/backends.md")


MODEL_PROTOCOL = "a model has forward, new_cache and vocab_size (stdlib/models/protocol.py)"


def _mapping(name: str, value: Any) -> dict[str, Any]:
    """A `models=` / `overrides=` argument: None or a mapping with str keys."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise DecError(f"{name} must be a dict from names to values, or None (got {shown(value)})")
    bad = next((k for k in value if not isinstance(k, str)), None)
    if bad is not None:
        raise DecError(f"{name} keys must be names (str); got {shown(bad)}")
    return dict(value)
