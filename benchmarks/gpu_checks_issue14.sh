#!/usr/bin/env bash
# GPU checks of 2026-12-04's second session part: the resume agreement's collectives on NCCL
# (torchrun, one rank), train/generate refusals that read CUDA memory. Output: $1/checks.log
set -uo pipefail
out=${1:?output folder}; mkdir -p "$out"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
run=/tmp/pasture-nccl-run; rm -rf "$run"
common=(-m pasture.cli train --config configs/train/debug.toml --set run_dir=$run
        --set steps=12 --set checkpoint.every=4 --set optim.warmup_steps=2 --set metrics.log_every=4
        --set data.corpus_bytes=1000000 --set data.vocab_size=1000 --set metrics.tensorboard=false)
{
  echo "== torchrun, 1 rank, NCCL: train, kill-free resume"
  timeout 120 python3 -m torch.distributed.run --nproc-per-node 1 --master-port 29555 "${common[@]}" --set steps=8
  echo "exit $?"
  timeout 90 python3 -m torch.distributed.run --nproc-per-node 1 --master-port 29556 "${common[@]}" --resume
  echo "exit $?"
  tail -n 3 "$run/metrics.jsonl"
  echo "== refusals (each: one line, exit 2)"
  timeout 60 python3 -m pasture.cli train --set run_dir=/tmp/x1 --set device=cuda:7; echo "exit $?"
  timeout 60 python3 -m pasture.cli train --set run_dir=/tmp/x2 --set model.preset=65B --set device=cuda; echo "exit $?"
  timeout 60 python3 -m pasture.cli init debug /tmp/dbg --to hf; echo "exit $?"
  timeout 60 python3 -m pasture.cli generate --checkpoint /tmp/dbg --prompt hi --max-new-tokens 5 --device cuda:3; echo "exit $?"
} 2>&1 | grep -v "it/s\]\|Warning\|warn(" | tee "$out/checks.log"
