"""Parallelize a built single-device ``Transformer`` from outside, torchtitan's order:
tensor (+ sequence) parallel → activation checkpointing → compile → FSDP2.

The model code stays single-device (gpt-fast / torchtitan style); every pass here rewrites a
built model in place. One CPU process, no sharding (only AC and compile)::

    model = parallelize_model(Transformer(args), None, ParallelConfig(compile=True))

Under ``torchrun --nproc-per-node 8``, 4-way FSDP × 2-way tensor parallel::

    rank, world_size, device = init_distributed()
    mesh = build_mesh(world_size, tp=2, device_type=device.type)
    model = parallelize_model(model, mesh, ParallelConfig(tp=2))

Tensor parallelism shards the sequence dimension between blocks (Korthikanti et al. 2022, the
paper's "model and sequence parallelism"), so the token batch must be the same on every rank of
a "tp" group and its length a multiple of ``tp``. Data batches differ across "dp_shard" ranks.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

from ..errors import PastureError
from ..model import Transformer
from .activation_checkpoint import apply_activation_checkpointing

AC_MODES = ("none", "full", "selective")
PRECISIONS = ("bf16", "fp32")


@dataclass
class ParallelConfig:
    tp: int = 1  # tensor (+ sequence) parallel degree
    activation_checkpointing: str = "none"  # none | full | selective
    compile: bool = False  # torch.compile each block
    mixed_precision: str = "bf16"  # bf16 (bf16 compute, fp32 master + reductions) | fp32

    def __post_init__(self) -> None:
        if self.tp < 1:
            raise PastureError(f"parallel.tp = {self.tp}: must be at least 1")
        if self.activation_checkpointing not in AC_MODES:
            raise PastureError(
                f"parallel.activation_checkpointing = {self.activation_checkpointing!r}: "
                f"use one of {', '.join(AC_MODES)}"
            )
        if self.mixed_precision not in PRECISIONS:
            raise PastureError(
                f"parallel.mixed_precision = {self.mixed_precision!r}: "
                f"use one of {', '.join(PRECISIONS)}"
            )


def parallelize_model(
    model: Transformer, mesh: DeviceMesh | None, cfg: ParallelConfig
) -> Transformer:
    """Apply TP+SP on ``mesh["tp"]``, activation checkpointing, compile, FSDP2 on
    ``mesh["dp_shard"]``, in that order; returns the same (modified) model.

    With ``mesh=None`` (one process) only AC and compile apply; bf16 mixed precision is then
    the training loop's ``torch.autocast``, as FSDP's ``MixedPrecisionPolicy`` needs a mesh.
    """
    if mesh is None:
        if cfg.tp != 1:
            raise PastureError(
                f"parallel.tp = {cfg.tp} needs {cfg.tp} processes: launch with torchrun "
                f"--nproc-per-node {cfg.tp} (or a multiple), or set parallel.tp = 1"
            )
    else:
        if mesh.mesh_dim_names != ("dp_shard", "tp"):
            raise PastureError(f"expected a ('dp_shard', 'tp') mesh, got {mesh.mesh_dim_names}")
        if mesh["tp"].size() != cfg.tp:
            raise PastureError(
                f"parallel.tp = {cfg.tp} but the mesh's tp dimension is {mesh['tp'].size()}: "
                "build the mesh with build_mesh(world_size, cfg.tp, ...)"
            )
        if cfg.tp > 1:
            apply_tensor_parallel(model, mesh["tp"])

    if cfg.activation_checkpointing != "none":
        apply_activation_checkpointing(model, cfg.activation_checkpointing)

    if cfg.compile:
        if cfg.tp > 1:
            # The embedding's local output is a view of a DTensor's local tensor; fed as is to
            # the compiled first block, its gradient never reaches tok_embeddings (zero grads,
            # silently, in torch 2.13; tests/parallel checks it). A copy cuts the alias.
            model.tok_embeddings.register_forward_hook(_copy_output)
        apply_compile(model)

    if mesh is not None:
        # Also on a dp_shard mesh of size 1 (pure TP): FSDP2 is what gives bf16 compute with
        # fp32 master weights and gradient reductions here.
        apply_fsdp(model, mesh["dp_shard"], cfg.mixed_precision)
    return model


def apply_tensor_parallel(model: Transformer, tp_mesh: DeviceMesh) -> None:
    """Megatron-style TP with sequence parallelism over ``tp_mesh`` (torchtitan's ``apply_tp``).

    Between blocks the residual stream is sharded on the sequence dimension (Shard(1)); the
    norms run on their sequence shard; attention and the feed-forward all-gather it, run their
    column-/row-sharded matmuls on a slice of the heads / hidden units, and reduce-scatter back.
    """
    tp = tp_mesh.size()
    args = model.args
    for name, size in (
        ("n_heads", args.n_heads),
        ("n_kv_heads", args.kv_heads),
        ("SwiGLU hidden size", args.ffn_hidden_dim),
        ("vocab_size", args.vocab_size),
    ):
        if size % tp:
            raise PastureError(f"model {name} {size} is not divisible by parallel.tp = {tp}")
    if args.tie_embeddings:
        raise PastureError(
            "tensor parallelism shards tok_embeddings and output differently, which would untie "
            "them: set parallel.tp = 1 for a model with tie_embeddings"
        )

    parallelize_module(
        model,
        tp_mesh,
        {
            # Replicated tokens in; the embeddings leave sharded on the sequence dimension.
            "tok_embeddings": RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1)),
            "norm": SequenceParallel(),
            # Full logits on every rank (simple and exact; loss_parallel would keep Shard(-1)).
            "output": ColwiseParallel(
                input_layouts=Shard(1), output_layouts=Replicate(), use_local_output=True
            ),
        },
    )
    for block in model.layers:
        parallelize_module(
            block,
            tp_mesh,
            {
                "attention_norm": SequenceParallel(),
                # Attention(x, freqs_cis, *, start_pos, positions, mask): all-gather x; the
                # rotary table (indexed by the replicated tokens' full length T) and the
                # keyword arguments pass through.
                "attention": PrepareModuleInput(
                    input_layouts=(Shard(1), None),
                    desired_input_layouts=(Replicate(), None),
                ),
                "attention.wq": ColwiseParallel(),
                "attention.wk": ColwiseParallel(),
                "attention.wv": ColwiseParallel(),
                "attention.wo": RowwiseParallel(output_layouts=Shard(1)),
                "ffn_norm": SequenceParallel(),
                "feed_forward": PrepareModuleInput(
                    input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)
                ),
                "feed_forward.w1": ColwiseParallel(),
                "feed_forward.w2": RowwiseParallel(output_layouts=Shard(1)),
                "feed_forward.w3": ColwiseParallel(),
            },
        )
        # Attention.forward views the local wq/wk/wv outputs as (B, T, -1, head_dim): each
        # rank holds n_heads / tp query heads and n_kv_heads / tp KV heads (contiguous, so each
        # local query head still meets its own KV head), and nothing in the model is rewritten.

    model.register_forward_pre_hook(_check_sequence_parallel_input(tp), with_kwargs=True)


def _check_sequence_parallel_input(tp: int):
    """A pre-forward hook that rejects inputs sequence parallelism would silently get wrong."""

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        tokens = inspect.signature(module.forward).bind(*args, **kwargs).arguments["tokens"]
        if tokens.shape[1] % tp:
            raise PastureError(
                f"sequence length {tokens.shape[1]} is not a multiple of parallel.tp = {tp}: "
                "sequence parallelism splits it evenly across the tp ranks"
            )

    return hook


def _copy_output(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    return output.clone()


def apply_compile(model: Transformer) -> None:
    """torch.compile each block, as torchtitan does: the blocks are identical, so one compiled
    graph is reused, and FSDP's hooks on the compiled wrapper stay outside the graph.

    The wrapper's ``_orig_mod.`` sits in ``model.state_dict()`` keys; DCP's ``get_state_dict``
    (training checkpoints) drops it, so checkpoints keep Meta's keys.
    """
    for i, block in enumerate(model.layers):
        model.layers[i] = torch.compile(block, fullgraph=True)


def apply_fsdp(model: Transformer, dp_mesh: DeviceMesh, mixed_precision: str) -> None:
    """FSDP2 (``fully_shard``) on each block, then on the root (embeddings, final norm, output).

    Each block is its own all-gather / reduce-scatter unit; FSDP2 prefetches the next block's
    parameters while the current one computes (forward and backward), which is where
    compute/communication overlap comes from. Parameters are resharded after each block's
    forward and gathered again in backward, except the last block's, which backward needs at once.
    """
    if mixed_precision == "bf16":
        # bf16 copies for compute; fp32 sharded master weights, optimizer state, gradient reduction.
        mp_policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    else:
        mp_policy = MixedPrecisionPolicy()
    last = len(model.layers) - 1
    for i, block in enumerate(model.layers):
        fully_shard(block, mesh=dp_mesh, mp_policy=mp_policy, reshard_after_forward=i < last)
    fully_shard(model, mesh=dp_mesh, mp_policy=mp_policy)
