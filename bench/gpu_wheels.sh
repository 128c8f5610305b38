#!/usr/bin/env bash
# Fetch, on a machine with a package index, the wheels that the LLM path needs and that the bare
# GPU machine lacks (it has Python 3.12 with torch, transformers, numpy, pandas, pyarrow, scipy,
# matplotlib, pyyaml, tqdm, pytest, safetensors, tokenizers and torch's own sympy; no index).
# They go to .whl/ (git-ignored), which travels with the work tree; bench/gpu_check.sh installs
# them into /tmp/site first.
#
#   bash bench/gpu_wheels.sh            # then carry .whl to the GPU machine
#
# math-verify[antlr4_13_2] (the LLM track's answer checker) = math-verify, latex2sympy2_extended
# and antlr4-python3-runtime; all three are pure Python (well under 1 MiB together). The LLM path
# needs nothing else beyond the GPU machine's packages: gymnasium and stable-baselines3 belong to
# the control track, which bench/gpu_check.sh does not import.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(
    math-verify==0.9.0
    latex2sympy2_extended==1.11.0
    antlr4-python3-runtime==4.13.2
)
mkdir -p .whl
for spec in "${WHEELS[@]}"; do
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux1_x86_64 -d .whl "$spec"
done
total=$(du -cb .whl/*.whl | tail -1 | cut -f1)
if [ "$total" -gt $((60 * 1024 * 1024)) ]; then
    echo "gpu_wheels: .whl holds $total bytes, over the 60 MiB carry budget" >&2
    exit 1
fi
ls -l .whl
echo "gpu_wheels: $(ls .whl/*.whl | wc -l) wheels, $total bytes in .whl/"
