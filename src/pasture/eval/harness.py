"""A Pasture model inside lm-evaluation-harness: the three-method contract as an lm-eval ``LM``.

    >>> from lm_eval import simple_evaluate
    >>> from pasture import load_model
    >>> from pasture.eval import PastureLM
    >>> from pasture.eval.harness import HarnessLM
    >>> lm = PastureLM(*load_model("stories260K.bin", tokenizer="tok512.model"), batch_size=16)
    >>> simple_evaluate(model=HarnessLM(lm), tasks=["arc_easy"], limit=20)

By name, as lm-eval's own models are created (``--model pasture``), once ``register`` has been
given a checkpoint reader (``eval`` may not import ``interop``, so the caller passes it):

    >>> from pasture.eval import harness
    >>> harness.register(load_model)
    >>> args = "checkpoint=stories260K.bin,tokenizer=tok512.model,batch_size=16"
    >>> simple_evaluate(model="pasture", model_args=args, tasks=["arc_easy"])

This is the optional ``lm-eval`` extra: nothing else in Pasture imports this module, and
Pasture's own tasks never need lm-eval. The adapter adds no logic of its own to scoring: every
request goes to ``PastureLM`` (packed context sharing, lm-eval's tokenization split), so lm-eval
tasks and Pasture's tasks see the same numbers. One difference from lm-eval's Hugging Face
backend: ``loglikelihood_rolling`` conditions every window after the first on the window of
tokens before it, where lm-eval's windows are disjoint (one token of earlier context, except
the last window); see ``PastureLM.loglikelihood_rolling``.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

import lm_eval.models  # noqa: F401  (lm-eval's own models, registered before ours: see register)
import torch
from lm_eval.api.instance import Instance
from lm_eval.api.model import LM
from lm_eval.api.registry import model_registry
from lm_eval.utils import simple_parse_args_string

from ..model import Transformer
from .lm import GenerationRequest, PastureLM, Sampling, TokenizerLike
from .task import DEFAULT_BATCH_SIZE

# What a generate_until request may ask for; anything else is an error rather than ignored.
GEN_KWARGS = ("until", "max_gen_toks", "temperature", "do_sample", "top_p", "top_k", "seed")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class HarnessLM(LM):
    """lm-eval's ``LM`` on a ``PastureLM``: ``loglikelihood``, ``loglikelihood_rolling`` and
    ``generate_until`` over lm-eval ``Instance``s.

    ``seed`` seeds sampled generations: a request's draws depend on (seed, its context, how many
    identical requests came before it), so the repeats of a maj@k request differ from each
    other while a result never depends on the batch or on the other tasks in the run.
    ``max_gen_toks`` is the length of a generation whose request does not say.
    """

    def __init__(self, lm: PastureLM, seed: int = 1234, max_gen_toks: int = 256) -> None:
        super().__init__()
        self.lm = lm
        self.seed = seed
        self.max_gen_toks = max_gen_toks
        self._device = lm.device

    # -- the three methods ----------------------------------------------------------------

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        pairs = [(context, continuation) for context, continuation in _args(requests)]
        results = self.lm.loglikelihood(pairs)
        for pair, result in zip(pairs, results, strict=True):
            self.cache_hook.add_partial("loglikelihood", pair, result)
        return results

    def loglikelihood_rolling(self, requests: list[Instance]) -> list[float]:
        texts = [text for (text,) in _args(requests)]
        results = self.lm.loglikelihood_rolling(texts)
        for text, result in zip(texts, results, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), result)
        return results

    def generate_until(self, requests: list[Instance]) -> list[str]:
        seen: dict[tuple[str, str], int] = {}
        translated = []
        for context, gen_kwargs in _args(requests):
            key = (context, repr(sorted(gen_kwargs.items())))
            repeat = seen[key] = seen.get(key, -1) + 1
            translated.append(self.generation_request(context, gen_kwargs, repeat))
        results = self.lm.generate_until(translated)
        for (context, gen_kwargs), result in zip(_args(requests), results, strict=True):
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), result)
        return results

    def generation_request(
        self, context: str, gen_kwargs: dict[str, Any], repeat: int = 0
    ) -> GenerationRequest:
        """lm-eval's generation kwargs as Pasture's request.

        ``until`` (a string or a list) are the stop strings; generation also stops at EOS.
        ``do_sample=False`` is greedy whatever the temperature; ``do_sample=True`` samples at
        ``temperature`` (default 1.0); without ``do_sample``, a temperature above 0 samples.
        """
        unknown = sorted(set(gen_kwargs) - set(GEN_KWARGS))
        if unknown:
            raise ValueError(
                f"generation kwarg {unknown[0]!r} is not supported by the pasture model "
                f"(supported: {', '.join(GEN_KWARGS)}); remove it from the task's "
                "generation_kwargs or --gen_kwargs"
            )
        until = gen_kwargs.get("until") or ()
        stop = (until,) if isinstance(until, str) else tuple(until)
        do_sample = gen_kwargs.get("do_sample")
        temperature = float(gen_kwargs.get("temperature", 1.0 if do_sample else 0.0))
        if do_sample is False:
            temperature = 0.0
        seed = int(gen_kwargs.get("seed", self.seed))
        sampling = Sampling(
            max_new_tokens=int(gen_kwargs.get("max_gen_toks", self.max_gen_toks)),
            temperature=temperature,
            top_p=float(gen_kwargs.get("top_p", 1.0)),
            top_k=int(gen_kwargs.get("top_k", 0)),
            # Below 2**31 so that the sampler's seed * 1_000_003 + position stays in range.
            seed=zlib.crc32(f"{seed}\0{repeat}\0{context}".encode()) >> 1,
        )
        return GenerationRequest(context, stop, sampling)

    # -- what lm-eval asks of a model besides the three methods ---------------------------

    @property
    def tokenizer_name(self) -> str:
        return f"pasture-sentencepiece-{self.lm.tokenizer.vocab_size}"

    def get_model_info(self) -> dict[str, Any]:
        args = self.lm.model.args
        return {
            "model_num_parameters": sum(p.numel() for p in self.lm.model.parameters()),
            "model_dtype": str(self.lm.model.tok_embeddings.weight.dtype),
            "model_args": {"dim": args.dim, "n_layers": args.n_layers, "n_heads": args.n_heads},
        }


def _args(requests: list[Instance]) -> list[tuple]:
    return [request.args for request in requests]


def cuda_available() -> bool:
    return torch.cuda.is_available()


Loader = Callable[..., tuple[Transformer, TokenizerLike | None]]
MODEL_ARGS = ("checkpoint", "tokenizer", "batch_size", "max_length", "device", "dtype", "seed")


def register(load: Loader, name: str = "pasture") -> type[HarnessLM]:
    """Make ``--model pasture`` known to lm-eval in this process.

    ``model_args``: ``checkpoint=PATH`` (any format Pasture reads), ``tokenizer=PATH``
    (SentencePiece ``.model``; default: the one next to the checkpoint), ``batch_size=N``
    (lm-eval's own ``--batch_size`` applies when model_args has none; default
    ``DEFAULT_BATCH_SIZE``, as ``pasture eval``),
    ``max_length``, ``device`` (default cpu), ``dtype`` (float32, bfloat16, float16), ``seed``.
    ``load(checkpoint, tokenizer=..., device=..., dtype=...)`` reads the checkpoint:
    ``pasture.load_model``. (lm-eval fills its registry lazily only while it is empty, so
    its own models are registered first, on import of this module.)
    """

    class CheckpointHarnessLM(HarnessLM):
        @classmethod
        def create_from_arg_string(
            cls, arg_string: str, additional_config: dict | None = None
        ) -> HarnessLM:
            return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

        @classmethod
        def create_from_arg_obj(
            cls, arg_dict: dict[str, Any], additional_config: dict | None = None
        ) -> HarnessLM:
            unknown = sorted(set(arg_dict) - set(MODEL_ARGS))
            if unknown:
                raise ValueError(
                    f"model_args: unknown key {unknown[0]!r} for --model {name} "
                    f"(known: {', '.join(MODEL_ARGS)})"
                )
            if "checkpoint" not in arg_dict:
                raise ValueError(f"model_args: --model {name} needs checkpoint=PATH")
            # lm-eval's own --batch_size / --device fill in what model_args leaves out.
            extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
            args = {k: extra[k] for k in ("batch_size", "device") if k in extra} | arg_dict
            batch_size = args.get("batch_size", DEFAULT_BATCH_SIZE)
            if not isinstance(batch_size, int) or batch_size < 1:
                raise ValueError(
                    f"model_args: batch_size={batch_size!r}: give a positive integer "
                    "(the pasture model packs requests itself; 'auto' is not supported)"
                )
            dtype = args.get("dtype")
            if dtype is not None and dtype not in DTYPES:
                raise ValueError(f"model_args: dtype={dtype!r}: one of {', '.join(DTYPES)}")
            device = str(args.get("device") or "cpu")
            if "device" not in arg_dict and device.startswith("cuda") and not cuda_available():
                device = "cpu"  # lm-eval's CLI defaults to cuda; model_args may insist
            model, tokenizer = load(
                str(args["checkpoint"]),
                tokenizer=args.get("tokenizer"),
                device=device,
                dtype=DTYPES[dtype] if dtype else None,
            )
            if tokenizer is None:
                raise ValueError(
                    f"model_args: {args['checkpoint']} carries no tokenizer; add tokenizer=PATH"
                )
            lm = PastureLM(model, tokenizer, batch_size, args.get("max_length"))
            return cls(lm, seed=int(args.get("seed", 1234)))

    model_registry.register(name)(CheckpointHarnessLM)
    return CheckpointHarnessLM
