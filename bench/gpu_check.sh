#!/usr/bin/env bash
# One-command GPU check of the LLM track, from the repository root, nothing installed:
#
#   bash bench/gpu_check.sh                  # one CUDA GPU (H100 / H200): about 7 min, 8 at most
#   bash bench/gpu_check.sh --device cpu     # a dry run of every part at toy sizes (CPU)
#
# On a machine without a package index, first run `bash bench/gpu_wheels.sh` where there is one
# and bring .whl/ along: the wheels are installed into /tmp/site here. The check itself is
# bench/gpu_check.py (parts, sizes, outputs: see its docstring). Expected wall time per part on one
# H200 (estimates from the H100 figures in results/llm/, not yet measured on an H200; each part
# has a time cap and the whole check stops at 470 s):
#   start-up and wheels ~15 s | tests (CUDA tests) ~35 s | toy-resume (toy run killed, rerun)
#   ~45 s | hf-generation (3 variants, 64 rows x 256 tokens) ~110 s | profile-fp32 (0.5B policy,
#   SPPO and GRPO, 8 prompts x 256 tokens) ~70 s | profile-bf16-static (the same, bf16 weights and
#   a static KV cache; ~50 s of compilation per shape) ~150 s.
# Outputs (7 files): results/llm/gpu_check_<device>_<commit>/ and, when $OUT is set, a copy in
# $OUT/gpu_check_<device>_<commit>/.
set -euo pipefail
cd "$(dirname "$0")/.."
py=python3
if ! "$py" -c "import torch" 2>/dev/null && [ -x /opt/torch/.venv/bin/python3 ]; then
    py=/opt/torch/.venv/bin/python3
fi
if compgen -G ".whl/*.whl" >/dev/null; then
    if "$py" -m pip --version >/dev/null 2>&1; then
        "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
    else # a venv without pip: the wheels are pure Python, so unpacking them is installing them
        "$py" -c 'import sys, zipfile; [zipfile.ZipFile(w).extractall("/tmp/site") for w in sys.argv[1:]]' \
            .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
    fi
else
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export TOKENIZERS_PARALLELISM=false
exec "$py" bench/gpu_check.py "$@"
