#!/usr/bin/env bash
# LycheeMemory's own virtual environment, beside compressmem's: their code is a patched copy of transformers
# 4.53.2's Qwen2 modelling file and pins that release (compressmem runs on transformers 5).
# torch first, pinned (a CPU wheel is cached on the project's machines; a looser spec pulls CUDA packages),
# then transformers 4.53.2 and the requirements of their `requirements.txt` (tensordict 0.6.2, pandas,
# openai, psutil, ninja) plus safetensors, at the versions last resolved (requirements.txt, from `pip freeze`).
# Their source is not vendored: get it with source.sh.
#
#     bash benchmarks/peers/lycheememory/setup.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-python3.11}"
if [ ! -x "$here/.venv/bin/python" ]; then
    nice -n 19 "$python" -m venv "$here/.venv"
fi
nice -n 19 "$here/.venv/bin/pip" install --quiet torch==2.13.0
nice -n 19 "$here/.venv/bin/pip" install --quiet -r "$here/requirements.txt"
"$here/.venv/bin/python" -c "import transformers, torch, tensordict, safetensors; \
print('lycheememory venv: transformers', transformers.__version__, 'torch', torch.__version__)"
