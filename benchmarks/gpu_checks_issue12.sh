#!/usr/bin/env bash
# The next lent GPU session's checks for issue 12 (inference), as one command:
#   bash benchmarks/gpu_checks_issue12.sh OUT_DIR          # ≤ 9 minutes on one H100 / H200
# 1. benchmarks/gpu_decode_speed.py: copy bandwidth; 7B/13B/65B bf16 batch-1 decode (65B's
#    121.6 GiB on one 141 GB GPU), 7B int8/int4, 7B batch 8/32; StaticCache step compiled with
#    CUDA graphs; bandwidth utilisation (goal: ≥ 80% for 7B bf16; HF eager measured 10.5%).
# 2. The serving engine on CUDA, compiled (pasture serve --compile) on stories260K: one
#    completion through the real server, greedy text equal to the eager engine's.
# Uses the machine's own python3 (torch preinstalled); Pasture from src/; FastAPI/uvicorn
# installed with pip if missing (the serve extra).
set -uo pipefail
out=${1:?output folder}
mkdir -p "$out"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
py=python3
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.mem --format=csv
  $py -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
} 2>&1 | tee "$out/machine.txt"

timeout 420 $py benchmarks/gpu_decode_speed.py --budget-s 330 --out "$out/gpu_decode_speed.jsonl" \
  2>&1 | tee "$out/gpu_decode_speed.log"
echo "gpu_decode_speed exit: $?"

$py -c "import fastapi, uvicorn" 2>/dev/null || $py -m pip install -q "fastapi>=0.110" "uvicorn>=0.29"
stories=../shared/data/models/stories260K
if [ -f "$stories/stories260K.bin" ]; then
  timeout 120 $py - "$stories" <<'PY' 2>&1 | tee "$out/engine_cuda.log"
import sys, torch
from pasture import load_model
from pasture.generate.engine import Engine, SamplingParams
folder = sys.argv[1]
texts = {}
for mode in (None, "inductor"):
    model, tok = load_model(f"{folder}/stories260K.bin", f"{folder}/tok512.model", device="cuda")
    engine = Engine(model, tok, max_batch=4, compile=mode)
    reqs = [engine.submit(tok.encode(p, bos=True), SamplingParams(max_tokens=64, temperature=0))
            for p in ("Once upon a time", "Lily and Ben", "Tom", "One day, a cat")]
    texts[mode] = [r.result()[0] for r in reqs]
    engine.close()
    print(mode, texts[mode][0][:80].replace("\n", " "))
print("compiled == eager:", texts[None] == texts["inductor"])
PY
fi
echo done
