#!/usr/bin/env bash
# SPPO on verl 0.9.1: DeepSeek-R1-Distill-Qwen-1.5B policy + a 1.5B critic (the same model with a
# scalar value head), DeepScaleR, one node of 8 GPUs. The paper's 1.5B settings (its 1.5B run used
# 4 x A100): 256 prompts a step, PPO mini-batch 128, critic lr 5e-6, weight decay 0.01, prompts
# <= 1024 tokens, 1000 steps, validation every 50 steps; the shared settings are in sppo_verl.sh.
# Not yet run on a GPU. Extra arguments are Hydra overrides, e.g. trainer.n_gpus_per_node=4.
#   DATA=~/data/sppo/deepscaler bash llm/verl/sppo_r1_distill_1.5b.sh   (see prepare_data.sh)
set -euo pipefail
export DATA="${DATA:-$HOME/data/sppo/deepscaler}"
export POLICY="${POLICY:-deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B}"
export CRITIC="${CRITIC:-deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B}"
export MAX_PROMPT=1024 BATCH=256 MINI_BATCH=128 WEIGHT_DECAY=0.01 CRITIC_LR=5e-6 ROLLOUT_TP=1
export STEPS=1000 TEST_FREQ=50 SAVE_FREQ=100 NAME=sppo-r1-distill-1.5b
exec bash "$(dirname "$0")/sppo_verl.sh" "$@"
