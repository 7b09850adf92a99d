"""``pasture <verb>``: one table of subcommands.

    pasture info 7B                                  # a preset's config and parameter count
    pasture info path/to/checkpoint                  # any format: Meta, HF, llama2.c, GGUF
    pasture convert stories260K.bin out-hf --to hf --tokenizer tok512.model
    pasture init debug model-dir --tokenizer tokenizer.model
    pasture generate --checkpoint out-hf --prompt "Once upon a time" --max-new-tokens 50
    pasture quantize out-hf out-int8 --dtype int8    # weight-only int8/int4
    pasture serve --checkpoint out-hf                # OpenAI-compatible server + chat page
    pasture finetune --config configs/finetune/demo.toml --checkpoint out-hf
    pasture tokenizer train --out tokenizer.model --vocab-size 32000   # default corpus: stdlib
    pasture eval --checkpoint out-hf --tasks paper --data-dir ../shared/data/eval --limit 20
    pasture demo

User errors print one line, ``pasture: error: …``, and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from . import interop
from .carbon import footprint as carbon
from .config import data_root
from .data.corpus import default_corpus_files
from .data.tokenizer import Tokenizer, train_tokenizer
from .errors import PastureError
from .eval.task import EvalSettings
from .generate import Llama2cSampler, generate, generate_tokens
from .interop import Checkpoint
from .interop.loading import load_model
from .model import PRESETS, Transformer, count_parameters, preset
from .model.quant import QuantConfig

DEVICE_HELP = "cpu, cuda, cuda:1, mps … (default: cuda if available, else cpu)"
CHAT_TEMPLATE_HELP = (
    "a .jinja file or tokenizer_config.json (default: chat_template.jinja beside the "
    "checkpoint, else Alpaca's headers)"
)
DTYPES_Q = ("int8", "int4")


def _device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise PastureError(f"--device {name!r}: {_first_line(e)}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise PastureError(
                f"--device {name}: CUDA is not available here (torch {torch.__version__}, "
                f"built for CUDA {torch.version.cuda or 'none'}); use --device cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise PastureError(
                f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) visible"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise PastureError(f"--device {name}: MPS is not available here; use --device cpu")
    elif device.type == "meta":
        raise PastureError(f"--device {name}: the meta device holds no data; use cpu or cuda")
    elif device.type != "cpu":
        try:
            torch.empty(1, device=device)
        except Exception as e:  # torch raises RuntimeError, AssertionError, … per backend
            raise PastureError(f"--device {name}: unusable ({_first_line(e)})") from None
    return device


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _default_eval_dir() -> str | None:
    root = data_root()
    return None if root is None else str(root / "eval")


def _tokenizer_arg(path: str | None) -> Tokenizer | None:
    return Tokenizer.from_file(path) if path else None


def cmd_info(args: argparse.Namespace) -> None:
    if args.target in PRESETS:
        config, fmt, tokenizer = PRESETS[args.target], "preset", None
    else:
        ckpt = interop.load(args.target)
        config, fmt, tokenizer = ckpt.args, ckpt.format, ckpt.tokenizer
    info = {
        "format": fmt,
        "parameters": count_parameters(config),
        "config": {**vars(config), "ffn_hidden_dim": config.ffn_hidden_dim},
        "tokenizer": None if tokenizer is None else {"vocab_size": tokenizer.vocab_size},
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return
    print(f"format      {fmt}")
    print(f"parameters  {info['parameters']:,}")
    for key, value in info["config"].items():
        print(f"{key:<19} {value}")
    print(f"tokenizer   {'none' if tokenizer is None else f'{tokenizer.vocab_size} pieces'}")


def _save_options(args: argparse.Namespace) -> dict:
    options: dict = {}
    if args.to == "meta" and args.shards != 1:
        options["shards"] = args.shards
    if args.to == "llama2c":
        options["version"] = args.llama2c_version
    return options


def _target_format(args: argparse.Namespace) -> str:
    if args.to:
        return args.to
    suffix = Path(args.dst).suffix
    inferred = {".gguf": "gguf", ".bin": "llama2c"}.get(suffix)
    if inferred is None:
        raise PastureError(f"{args.dst}: say which format to write with --to {{meta,hf,…}}")
    return inferred


def cmd_convert(args: argparse.Namespace) -> None:
    args.to = _target_format(args)
    interop.check_destination(args.dst, args.to, args.force)
    ckpt = interop.load(args.src, tokenizer=args.tokenizer)
    interop.save(ckpt, args.dst, args.to, dtype=args.dtype, force=args.force, **_save_options(args))
    print(f"{args.src} ({ckpt.format}) -> {args.dst} ({args.to})", file=sys.stderr)


def cmd_init(args: argparse.Namespace) -> None:
    if args.preset not in PRESETS:
        raise PastureError(f"unknown preset {args.preset!r}; known: {', '.join(PRESETS)}")
    args.to = _target_format(args)
    interop.check_destination(args.dst, args.to, args.force)
    tokenizer = _tokenizer_arg(args.tokenizer)
    overrides = {}
    if tokenizer is not None:
        overrides["vocab_size"] = tokenizer.vocab_size
    if args.vocab_size:
        overrides["vocab_size"] = args.vocab_size
    config = preset(args.preset, **overrides)
    model = Transformer(config)
    model.init_weights(seed=args.seed)
    ckpt = Checkpoint.from_model(model, tokenizer)
    interop.save(ckpt, args.dst, args.to, dtype=args.dtype, force=args.force, **_save_options(args))
    params = count_parameters(config)
    print(f"{args.preset}: {params:,} parameters -> {args.dst} ({args.to})", file=sys.stderr)


def cmd_generate(args: argparse.Namespace) -> None:
    if args.max_new_tokens < 0:
        raise PastureError(f"--max-new-tokens {args.max_new_tokens}: must be 0 or more")
    model, tokenizer = load_model(
        args.checkpoint,
        _device(args.device),
        tokenizer=args.tokenizer,
        quantize=_quant_config(args.quantize, args.group_size),
    )
    if tokenizer is None:
        raise PastureError(f"{args.checkpoint}: carries no tokenizer; pass --tokenizer PATH")
    if args.chat:
        _chat(args, model, tokenizer)
        return
    prompts = args.prompt or [""]
    sampler = None
    if args.sampler == "llama2c":
        if args.seed is None:
            raise PastureError("--sampler llama2c needs --seed (run.c's -s)")
        sampler = Llama2cSampler(args.temperature, args.top_p, args.seed)
    if len(prompts) == 1:
        sys.stdout.write(prompts[0])
        sys.stdout.flush()

        def stream(fragment: str) -> None:
            sys.stdout.write(fragment)
            sys.stdout.flush()

        generate(
            model,
            tokenizer,
            prompts[0],
            args.max_new_tokens,
            args.temperature,
            args.top_p,
            args.top_k,
            args.seed,
            stream=stream,
            sampler=sampler,
        )
        sys.stdout.write("\n")
        return
    outs = generate(
        model,
        tokenizer,
        prompts,
        args.max_new_tokens,
        args.temperature,
        args.top_p,
        args.top_k,
        args.seed,
        sampler=sampler,
    )
    for prompt, out in zip(prompts, outs, strict=True):
        print(json.dumps({"prompt": prompt, "completion": out}, ensure_ascii=False))


def _quant_config(dtype: str | None, group_size: int) -> QuantConfig | None:
    return None if dtype is None else QuantConfig(dtype, group_size)


def _chat(args: argparse.Namespace, model: Transformer, tokenizer: Tokenizer) -> None:
    """Each --prompt as one user turn through the checkpoint's chat template (the one saved
    beside it by ``pasture finetune``, else ``--chat-template``, else the default); the answer
    ends at the end-of-sequence token."""
    from .finetune.rendering import TemplateRenderer
    from .finetune.template import (
        DEFAULT_TEMPLATE,
        chat_variables,
        encode_segments,
        find_template,
        load_template,
    )

    if args.chat_template:
        template = load_template(args.chat_template)
    else:
        template = find_template(Path(args.checkpoint)) or DEFAULT_TEMPLATE
    variables = chat_variables(tokenizer)
    with TemplateRenderer(template) as renderer:  # a checkpoint's template: time/memory bound
        prompts = [
            encode_segments(
                tokenizer,
                renderer.segments([{"role": "user", "content": p}], True, **variables),
            )[0]
            for p in args.prompt or [""]
        ]
    outs = generate_tokens(
        model,
        prompts,
        args.max_new_tokens,
        args.temperature,
        args.top_p,
        args.top_k,
        args.seed,
        stop_ids=(tokenizer.eos_id,),
    )
    for prompt, out in zip(args.prompt or [""], outs, strict=True):
        print(json.dumps({"prompt": prompt, "answer": tokenizer.decode(out)}, ensure_ascii=False))


def cmd_quantize(args: argparse.Namespace) -> None:
    from .interop import quantized

    cfg = QuantConfig(args.dtype, args.group_size)
    quantized.check_destination(Path(args.dst), args.force)
    ckpt = interop.load(args.src, tokenizer=args.tokenizer)
    report = quantized.save(ckpt, Path(args.dst), cfg, force=args.force)
    kept = f", {report['kept_float']} kept in float (shape)" if report["kept_float"] else ""
    print(
        f"{len(report['layers'])} linear layers -> {args.dtype}{kept}: {args.dst}", file=sys.stderr
    )


def cmd_serve(args: argparse.Namespace) -> None:
    from .serve import serve  # FastAPI + uvicorn: the serve extra (one line if missing)

    serve(
        args.checkpoint,
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        tokenizer=args.tokenizer,
        device=_device(args.device),
        dtype=interop.DTYPES[args.dtype] if args.dtype else None,
        model_name=args.model_name,
        chat_template=args.chat_template,
        max_batch=args.max_batch,
        max_seq_len=args.max_seq_len,
        quantize=_quant_config(args.quantize, args.group_size),
        compile="inductor" if args.compile else None,
    )


def cmd_finetune(args: argparse.Namespace) -> None:
    from .finetune.config import load_finetune_config
    from .finetune.run import finetune

    cfg = load_finetune_config(args.config, args.set)
    resume: str | bool = True if args.resume == "latest" else (args.resume or False)
    summary = finetune(cfg, args.checkpoint, resume=resume)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary, indent=2))


def cmd_tokenizer_train(args: argparse.Namespace) -> None:
    files = [Path(p) for p in args.input] if args.input else default_corpus_files(args.max_bytes)
    for file in files:
        if not file.is_file():
            raise PastureError(f"{file}: no such file")
    tokenizer = train_tokenizer(files, Path(args.out), vocab_size=args.vocab_size)
    print(f"{tokenizer.vocab_size} pieces from {len(files)} files -> {args.out}", file=sys.stderr)


def cmd_tokenizer_encode(args: argparse.Namespace) -> None:
    tokenizer = Tokenizer.from_file(args.tokenizer)
    print(" ".join(map(str, tokenizer.encode(args.text, bos=args.bos, eos=args.eos))))


def cmd_tokenizer_decode(args: argparse.Namespace) -> None:
    tokenizer = Tokenizer.from_file(args.tokenizer)
    try:
        ids = [int(i) for i in args.ids]
    except ValueError:
        raise PastureError(f"token ids must be integers, got {' '.join(args.ids)!r}") from None
    bad = [i for i in ids if not 0 <= i < tokenizer.vocab_size]
    if bad:
        raise PastureError(f"{args.tokenizer}: id {bad[0]} outside 0..{tokenizer.vocab_size - 1}")
    print(tokenizer.decode(ids))


def cmd_data_build(args: argparse.Namespace) -> None:
    import logging

    from .data.pipeline import BuildConfig, build_dataset, load_config

    logging.basicConfig(level=logging.WARNING, format="pasture: %(message)s")
    cfg = load_config(args.config, args.set) if args.config else BuildConfig()
    if args.workers is not None:
        cfg.workers = args.workers
    report = build_dataset(
        cfg, Path(args.input_root), Path(args.out), args.executor, args.tokenizer
    )
    for row in report["table1"]:
        print(json.dumps(row))
    print(f"report: {Path(args.out) / 'report.md'}", file=sys.stderr)


def cmd_train(args: argparse.Namespace) -> None:
    from .train.config import load_train_config
    from .train.loop import train

    config = args.config or Path(__file__).with_name("train") / "debug.toml"  # packaged
    cfg = load_train_config(config, args.set)
    resume: str | bool = True if args.resume == "latest" else (args.resume or False)
    train(cfg, resume=resume)


def cmd_plot(args: argparse.Namespace) -> None:
    from .train.plot import plot_benchmarks, plot_loss

    runs = [Path(r) for r in args.run_dirs]
    out = plot_loss(runs, Path(args.out) if args.out else runs[0] / "loss.png")
    print(out)
    figure2 = plot_benchmarks(runs, out.with_name("benchmarks.png"))
    if figure2 is not None:
        print(figure2)


def cmd_export(args: argparse.Namespace) -> None:
    from .export import export

    ckpt = export(Path(args.run_dir), Path(args.dst), args.to, args.dtype, force=args.force)
    print(
        f"{args.run_dir} -> {args.dst} ({args.to}, {count_parameters(ckpt.args):,} parameters)",
        file=sys.stderr,
    )


def cmd_eval(args: argparse.Namespace) -> None:
    from .eval import PastureLM
    from .eval.run import evaluate

    if args.data_dir is None:
        raise PastureError("--data-dir is required (or set $PASTURE_DATA to the shared data)")
    data_dir = Path(args.data_dir)
    if not data_dir.is_dir():
        raise PastureError(f"--data-dir {data_dir}: not a directory")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise PastureError(f"--out {out}: exists and is not a folder; name a folder for results")
    device = _device(args.device)
    ckpt = interop.load(args.checkpoint, tokenizer=args.tokenizer)
    if ckpt.tokenizer is None:
        raise PastureError(f"{args.checkpoint}: carries no tokenizer; pass --tokenizer PATH")
    dtype = interop.DTYPES[args.dtype] if args.dtype else None
    model = ckpt.to_model(device=device, dtype=dtype)
    scorer = None
    if args.toxicity_command:
        from .eval.toxicity import CommandScorer

        scorer = CommandScorer(args.toxicity_command)
    settings = EvalSettings(
        toxicity_scorer=scorer,
        data_dir=data_dir,
        shots=args.shots,
        limit=args.limit,
        seed=args.seed,
        samples=args.samples,
        batch_size=args.batch_size,
        allow_uncontained_code=args.allow_uncontained_code,
    )
    lm = PastureLM(model, ckpt.tokenizer, batch_size=settings.batch_size)
    log = lambda line: print(line, file=sys.stderr)  # noqa: E731
    outcome = evaluate(lm, args.tasks, settings, args.out, log=log)
    print(f"results: {Path(args.out) / 'results.md'}", file=sys.stderr)
    if outcome.errors:
        failed = ", ".join(outcome.errors)
        raise PastureError(f"{len(outcome.errors)} task(s) failed ({failed}); the others ran")


def cmd_lm_eval(args: argparse.Namespace) -> None:
    """lm-evaluation-harness's own CLI, with ``--model pasture`` registered."""
    try:
        from lm_eval.__main__ import cli_evaluate

        from .eval.harness import register
    except ImportError:
        raise PastureError(
            "pasture lm-eval needs lm-eval: pip install 'pasture[lm-eval]'"
        ) from None
    from . import load_model

    register(load_model)
    sys.argv = ["lm-eval", *args.harness_args]
    cli_evaluate()


def cmd_carbon(args: argparse.Namespace) -> None:
    carbon.report(args.gpu_hours, args.power, args.pue, args.intensity, args.table15, args.json)


def cmd_toxicity_scorer(args: argparse.Namespace) -> None:
    from .eval.toxicity import score_lines

    score_lines(args.model_dir, sys.stdin, sys.stdout, args.batch_size)


def cmd_demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo(Path(args.workdir), data=Path(args.data) if args.data else None)


FORCE_HELP = (
    "write into an existing DST that is not a Pasture checkpoint of this format, replacing "
    "only the files the format writes (everything else in a folder is kept)"
)


def _add_save_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--to", choices=sorted(interop.FORMATS), help="format to write")
    p.add_argument("--force", action="store_true", help=FORCE_HELP)
    p.add_argument("--dtype", choices=sorted(interop.DTYPES), help="weight dtype to write")
    p.add_argument("--tokenizer", help="SentencePiece .model to carry with the checkpoint")
    p.add_argument("--shards", type=int, default=1, help="Meta model-parallel shards to write")
    p.add_argument("--llama2c-version", type=int, choices=(0, 1), default=1)


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line and status 2, like every other error (``main``)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise PastureError(message if self.prog == "pasture" else f"{self.prog}: {message}")


def _checkpoint_verbs(sub: argparse._SubParsersAction) -> None:
    """``info``, ``convert``, ``init``, ``generate``: checkpoints of any format."""
    p = sub.add_parser("info", help="config, parameter count and format of a checkpoint")
    p.add_argument("target", help=f"a checkpoint path or a preset ({', '.join(PRESETS)})")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("convert", help="convert between Meta, HF, llama2.c and GGUF")
    p.add_argument("src")
    p.add_argument("dst")
    _add_save_arguments(p)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("init", help="write a randomly initialized model of a preset size")
    p.add_argument("preset", help=", ".join(PRESETS))
    p.add_argument("dst")
    p.add_argument("--vocab-size", type=int)
    p.add_argument("--seed", type=int, default=0)
    _add_save_arguments(p)
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("generate", help="continue a prompt (streams to stdout)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--tokenizer")
    p.add_argument("--prompt", action="append", help="repeat for a batch (one JSON line each)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int)
    p.add_argument(
        "--sampler",
        choices=("torch", "llama2c"),
        default="torch",
        help="llama2c: run.c's RNG and top-p, to reproduce ./run -t T -p P -s SEED exactly",
    )
    p.add_argument(
        "--chat", action="store_true", help="each prompt is a user turn in the chat template"
    )
    p.add_argument("--chat-template", help=CHAT_TEMPLATE_HELP)
    _add_quantize_arguments(p)
    p.add_argument("--device", help=DEVICE_HELP)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("quantize", help="weight-only int8/int4 copy of a checkpoint")
    p.add_argument("src", help="any format Pasture reads")
    p.add_argument("dst", help="a folder: quantization.json, model.safetensors, tokenizer.model")
    p.add_argument("--dtype", choices=DTYPES_Q, required=True)
    p.add_argument("--group-size", type=int, default=128, help="int4: inputs per scale")
    p.add_argument("--tokenizer")
    p.add_argument("--force", action="store_true", help=FORCE_HELP)
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server and chat page")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--tokenizer")
    p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 exposes it to the network")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", help="then every /v1 request needs Authorization: Bearer KEY")
    p.add_argument("--model-name", help="the name clients use (default: the checkpoint's)")
    p.add_argument("--chat-template", help=CHAT_TEMPLATE_HELP)
    p.add_argument("--max-batch", type=int, default=8, help="requests decoded together")
    p.add_argument("--max-seq-len", type=int, help="KV cache positions (default: the model's)")
    p.add_argument("--dtype", choices=sorted(interop.DTYPES))
    _add_quantize_arguments(p)
    p.add_argument(
        "--compile",
        action="store_true",
        help="compile the decode step whole (CUDA graphs on a GPU); the first requests wait",
    )
    p.add_argument("--device", help=DEVICE_HELP)
    p.set_defaults(func=cmd_serve)


def _add_quantize_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quantize", choices=DTYPES_Q, help="weight-only, on load (on the device)")
    p.add_argument("--group-size", type=int, default=128, help="int4: inputs per scale")


def _tokenizer_verbs(sub: argparse._SubParsersAction) -> None:
    """``tokenizer train|encode|decode``."""
    tok = sub.add_parser("tokenizer", help="train, encode, decode").add_subparsers(
        dest="action", required=True
    )
    p = tok.add_parser("train", help="SentencePiece BPE with the paper's settings")
    p.add_argument("--input", nargs="*", help="text files (default: Python's stdlib sources)")
    p.add_argument("--out", required=True)
    p.add_argument("--vocab-size", type=int, default=32000)
    p.add_argument("--max-bytes", type=int, default=None, help="cap on default-corpus bytes")
    p.set_defaults(func=cmd_tokenizer_train)
    p = tok.add_parser("encode")
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--bos", action="store_true")
    p.add_argument("--eos", action="store_true")
    p.add_argument("text")
    p.set_defaults(func=cmd_tokenizer_encode)
    p = tok.add_parser("decode")
    p.add_argument("--tokenizer", required=True)
    p.add_argument("ids", nargs="+")
    p.set_defaults(func=cmd_tokenizer_decode)


def _training_verbs(sub: argparse._SubParsersAction) -> None:
    """``data build``, ``train``, ``plot``, ``export``, ``carbon``: pretraining."""
    data = sub.add_parser("data", help="build the pretraining mixture").add_subparsers(
        dest="action", required=True
    )
    p = data.add_parser("build", help="raw dumps → filtered documents → token shards + report")
    p.add_argument("--config", help="TOML (e.g. configs/data/llama.toml); default: the paper's")
    p.add_argument("--set", action="append", default=[], help="override: key.sub=value")
    p.add_argument("--input-root", required=True, help="folder with one sub-folder per source")
    p.add_argument("--out", required=True)
    p.add_argument("--tokenizer", help="SentencePiece model (default: config, else train one)")
    p.add_argument("--executor", choices=("local", "ray"), default="local")
    p.add_argument("--workers", type=int, help="parallel shards (default: config, else cores)")
    p.set_defaults(func=cmd_data_build)

    p = sub.add_parser("train", help="pretrain with the paper's recipe (one process or torchrun)")
    p.add_argument(
        "--config",
        help="TOML in configs/train/ (default: configs/train/debug.toml, shipped in the package)",
    )
    p.add_argument("--set", action="append", default=[], help="override: key.sub=value")
    p.add_argument("--resume", nargs="?", const="latest", help="latest checkpoint, or a path")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("finetune", help="instruction tuning (LLaMA-I, paper §4): LoRA or full")
    p.add_argument("--config", help="TOML in configs/finetune/ (default: every key's default)")
    p.add_argument("--checkpoint", required=True, help="any format Pasture reads")
    p.add_argument("--set", action="append", default=[], help="override: key.sub=value")
    p.add_argument("--resume", nargs="?", const="latest", help="latest checkpoint, or a path")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("plot", help="loss against tokens (the paper's Figure 1) as a PNG")
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--out", help="PNG path (default: FIRST_RUN/loss.png)")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("export", help="a training run's checkpoint as Meta/HF/llama2.c/GGUF")
    p.add_argument("run_dir")
    p.add_argument("dst")
    p.add_argument("--to", choices=sorted(interop.FORMATS), required=True)
    p.add_argument("--dtype", choices=sorted(interop.DTYPES))
    p.add_argument("--force", action="store_true", help=FORCE_HELP)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("carbon", help="energy (MWh) and tCO2eq from GPU-hours (paper §6, Table 15)")
    p.add_argument("--gpu-hours", type=float, help="GPU-hours of the run")
    p.add_argument(
        "--power",
        type=float,
        help=f"watts per GPU (default {carbon.A100_POWER_WATTS:g}: the paper's figure for an "
        "A100-80GB)",
    )
    p.add_argument(
        "--pue", type=float, default=carbon.PUE, help=f"power usage effectiveness ({carbon.PUE})"
    )
    p.add_argument(
        "--intensity",
        type=float,
        default=carbon.CARBON_INTENSITY,
        help=f"t CO2eq per MWh (US average: {carbon.CARBON_INTENSITY})",
    )
    p.add_argument("--table15", action="store_true", help="recompute the paper's Table 15")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_carbon)


def _eval_verbs(sub: argparse._SubParsersAction) -> None:
    """``eval``, ``lm-eval``, ``toxicity-scorer``, ``demo``."""
    p = sub.add_parser("eval", help="the paper's benchmarks (Tables 3-12) on any checkpoint")
    p.add_argument("--checkpoint", required=True, help="any format: Meta, HF, llama2.c, GGUF")
    p.add_argument("--tokenizer", help="SentencePiece .model if the checkpoint carries none")
    p.add_argument("--tasks", default="paper", help="comma-separated task names, or paper")
    p.add_argument(
        "--data-dir",
        default=_default_eval_dir(),
        help="benchmark files, one folder per task (default: $PASTURE_DATA/eval)",
    )
    p.add_argument("--out", default="eval-results", help="folder for JSON and results.md")
    p.add_argument("--shots", type=int, help="few-shot examples (default: the paper's)")
    p.add_argument("--limit", type=int, help="evaluate the first N items of each task")
    p.add_argument("--batch-size", type=int, default=EvalSettings.batch_size)
    p.add_argument("--samples", type=int, help="k for maj1@k / n for pass@k")
    p.add_argument(
        "--seed", type=int, default=EvalSettings.seed, help="few-shot draws and sampling"
    )
    p.add_argument("--device", help=DEVICE_HELP)
    p.add_argument("--dtype", choices=sorted(interop.DTYPES), help="cast weights (e.g. bf16)")
    p.add_argument(
        "--toxicity-command",
        help="RealToxicityPrompts scorer: a command reading JSON lines, writing scores "
        "(else $PASTURE_PERSPECTIVE_KEY for the Perspective API)",
    )
    p.add_argument(
        "--allow-uncontained-code",
        action="store_true",
        help="run HumanEval/MBPP programs even where the sandbox cannot contain them: "
        "model-written code then gets network and write access to this machine",
    )
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "lm-eval",
        help="lm-evaluation-harness's CLI with --model pasture "
        "(model_args checkpoint=PATH,tokenizer=PATH,batch_size=N)",
    )
    p.add_argument("harness_args", nargs=argparse.REMAINDER, help="lm-eval's own arguments")
    p.set_defaults(func=cmd_lm_eval)

    p = sub.add_parser(
        "toxicity-scorer",
        help='score JSON lines {"text": ...} from stdin with a classifier '
        "(a PASTURE_TOXICITY_COMMAND for RealToxicityPrompts)",
    )
    kind = p.add_subparsers(dest="kind", required=True)
    p = kind.add_parser("hf", help="a Hugging Face sequence-classification model directory")
    p.add_argument("model_dir")
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(func=cmd_toxicity_scorer)

    p = sub.add_parser("demo", help="the main job on data that needs no download")
    p.add_argument("--workdir", default="runs/demo")
    p.add_argument("--data", help="shared data folder (default: $PASTURE_DATA or ../shared/data)")
    p.set_defaults(func=cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pasture", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="verb", required=True)

    for add in (_checkpoint_verbs, _tokenizer_verbs, _training_verbs, _eval_verbs):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        func: Callable[[argparse.Namespace], None] = args.func
        func(args)
    except PastureError as e:
        print(f"pasture: error: {e}", file=sys.stderr)
        if "torch.distributed" in sys.modules:  # a rank of torchrun: exit with status 2
            from .parallel.mesh import shutdown_distributed

            shutdown_distributed()
        return 2
    except KeyboardInterrupt:
        print("pasture: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
