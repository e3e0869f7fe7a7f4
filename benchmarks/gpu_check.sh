#!/usr/bin/env bash
# Everything the project measures on a GPU, in one run of under 8 minutes, results under $OUT.
#
#   OUT=/tmp/gpu bash benchmarks/gpu_check.sh
#
# 1. The gate's Triton kernel against the torch reference, float keys in every dtype and packed keys
#    (8, 4, 2 bits): relative error, blocks/s, and bandwidth as a fraction of the card's measured copy
#    bandwidth at 437,500 keys (a 1.75M-token bank at ratio 4).
#    (The CPU side times the eager reference only: --no-compile.)
# 2. benchmarks/speed.py on a Qwen2.5-7B-shaped random model (bf16): compressmem's default pipeline and
#    4-bit compressed reading against MemAgent mode at 32K-128K tokens.
# Each step has its own time limit, so one slow step cannot eat the others' time.
set -uo pipefail
OUT=${OUT:?set OUT to the folder for the results}
mkdir -p "$OUT"
PY=${PYTHON:-python}
cd "$(dirname "$0")/.."

nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
"$PY" -m pip install -q -e '.[kernels]' > "$OUT/install.txt" 2>&1

for dtype in float32 bfloat16 float16; do
    timeout 60 "$PY" benchmarks/gate_kernel.py --sizes 100000,437500 --dtype "$dtype" --repeats 5 --no-compile \
        --out "$OUT/gate-kernel-$dtype.json" > "$OUT/gate-kernel-$dtype.txt" 2>&1
done
for bits in 8 4 2; do
    timeout 60 "$PY" benchmarks/gate_kernel.py --sizes 100000,437500 --dtype bfloat16 --bits "$bits" --repeats 5 \
        --no-compile --out "$OUT/gate-kernel-packed-$bits.json" > "$OUT/gate-kernel-packed-$bits.txt" 2>&1
done

common=(--shape qwen2.5-7b --device cuda --dtype bfloat16 --chunk-size 4096 --memagent-chunk-size 4096
        --lengths 32k,64k,128k --questions 0)
timeout 120 "$PY" benchmarks/speed.py "${common[@]}" --out "$OUT/speed-default" > "$OUT/speed-default.txt" 2>&1
timeout 120 "$PY" benchmarks/speed.py "${common[@]}" --read compressed --gate lexical --compression none --bits 4 \
    --out "$OUT/speed-compressed-4bit" > "$OUT/speed-compressed-4bit.txt" 2>&1
tail -n 5 "$OUT"/*.txt
