#!/usr/bin/env bash
# verl reads Parquet: write DeepScaleR (for the 1.5B script) and DAPO-Math-17k (for the 7B one) as
# OUT/<name>/train.parquet, with the evaluation sets (AIME24/25, AMC23, MATH500, Minerva) as
# OUT/<name>/val.parquet, in verl's schema (sppo_bench/llm/verl_data.py).
# By default every set is read from the Hugging Face Hub (public ids and field mappings:
# sppo_bench/llm/data.py, TRAIN_SETS / EVAL_SETS / HUB_SETS; needs `datasets` and network).
# Local copies override: TRAIN_1_5B / TRAIN_7B may name .jsonl / .parquet files (or other Hub ids),
# and EVAL_DIR a folder holding aime24.jsonl, aime25.jsonl, amc23.jsonl, math500.jsonl and
# minerva_math.jsonl (any present).
set -euo pipefail
OUT="${OUT:-$HOME/data/sppo}"
TRAIN_1_5B="${TRAIN_1_5B:-agentica-org/DeepScaleR-Preview-Dataset}"
TRAIN_7B="${TRAIN_7B:-BytedTsinghua-SIA/DAPO-Math-17k}"
EVAL=()
if [ -n "${EVAL_DIR:-}" ]; then EVAL=(--eval-dir "$EVAL_DIR"); fi
PY="${PYTHON:-python3}"
"$PY" -m sppo_bench.llm.verl_data --format deepscaler --train "$TRAIN_1_5B" \
    ${EVAL[@]+"${EVAL[@]}"} --out "$OUT/deepscaler"
"$PY" -m sppo_bench.llm.verl_data --format dapo17k --train "$TRAIN_7B" \
    ${EVAL[@]+"${EVAL[@]}"} --out "$OUT/dapo17k"
