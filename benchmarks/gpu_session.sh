#!/usr/bin/env bash
# One lent GPU session's checks, as one command (the device tool runs it in the repo root):
#   bash benchmarks/gpu_session.sh OUT_DIR
# 1. benchmarks/gpu_train_speed.py: bf16 matmul peak, Pasture vs HF training step (1.26B).
# 2. `pasture train` on CUDA end to end: bf16 autocast, compiled blocks, a DCP checkpoint,
#    a resume from it, NVML energy in carbon.jsonl, export to HF format.
# Uses the machine's own python3 (torch, transformers preinstalled); Pasture from src/.
set -uo pipefail
out=${1:?output folder}
mkdir -p "$out"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
py=python3
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,power.limit --format=csv
  $py -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)"
  nproc
} 2>&1 | tee "$out/machine.txt"

timeout 400 $py benchmarks/gpu_train_speed.py ${BENCH_ARGS:---budget-s 200} --out "$out/gpu_train_speed.jsonl" \
  2>&1 | tee "$out/gpu_train_speed.log"
echo "gpu_train_speed exit: $?"

run=/tmp/pasture-gpu-run
rm -rf "$run"
common=(--config configs/train/debug.toml --set device=cuda --set parallel.mixed_precision=bf16
        --set parallel.compile=true --set run_dir=$run --set metrics.log_every=5 --set eval_every=10
        --set checkpoint.every=10 --set optim.warmup_steps=5)
{
  timeout 150 $py -m pasture.cli train "${common[@]}" --set steps=20
  echo "train exit: $?"
  timeout 100 $py -m pasture.cli train "${common[@]}" --set steps=30 --resume
  echo "resume exit: $?"
  timeout 60 $py -m pasture.cli export "$run" /tmp/pasture-gpu-hf --to hf
  echo "export exit: $?"
  cat "$run/carbon.jsonl"
} 2>&1 | tail -n 60 | tee "$out/train_cuda.log"
cp "$run/metrics.jsonl" "$out/train_cuda_metrics.jsonl" 2>/dev/null
echo done
