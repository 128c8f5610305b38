#!/usr/bin/env bash
# verl reads Parquet: write DeepScaleR (for the 1.5B script) and DAPO-Math-17k (for the 7B one) as
# OUT/<name>/train.parquet, with the evaluation sets (AIME24/25, AMC23, MATH500, Minerva, from
# EVAL_DIR) as OUT/<name>/val.parquet, in verl's schema (sppo_bench/llm/verl_data.py).
# TRAIN_1_5B / TRAIN_7B may be Hugging Face Hub ids (needs `datasets` and network) or local
# .jsonl / .parquet copies.
set -euo pipefail
OUT="${OUT:-$HOME/data/sppo}"
EVAL_DIR="${EVAL_DIR:-../shared/data/math}"
TRAIN_1_5B="${TRAIN_1_5B:-agentica-org/DeepScaleR-Preview-Dataset}"
TRAIN_7B="${TRAIN_7B:-BytedTsinghua-SIA/DAPO-Math-17k}"
PY="${PYTHON:-python3}"
"$PY" -m sppo_bench.llm.verl_data --train "$TRAIN_1_5B" --format deepscaler \
    --eval-dir "$EVAL_DIR" --out "$OUT/deepscaler"
"$PY" -m sppo_bench.llm.verl_data --train "$TRAIN_7B" --format dapo17k \
    --eval-dir "$EVAL_DIR" --out "$OUT/dapo17k"
