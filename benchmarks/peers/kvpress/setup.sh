#!/usr/bin/env bash
# kvpress's own virtual environment, beside compressmem's: kvpress 0.5.5 pins transformers<5.3.
# torch first, pinned (a CPU wheel is cached on the project's machines; a looser spec pulls CUDA packages),
# then kvpress, optimum-quanto (its quantized cache) and every dependency at the versions last resolved
# (requirements.txt, from `pip freeze`).
#
#     bash benchmarks/peers/kvpress/setup.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-python3.11}"
if [ ! -x "$here/.venv/bin/python" ]; then
    nice -n 19 "$python" -m venv "$here/.venv"
fi
nice -n 19 "$here/.venv/bin/pip" install --quiet torch==2.13.0
nice -n 19 "$here/.venv/bin/pip" install --quiet -r "$here/requirements.txt"
"$here/.venv/bin/python" -c "import kvpress, optimum.quanto, transformers, torch; \
print('kvpress venv: transformers', transformers.__version__, 'torch', torch.__version__)"
