#!/usr/bin/env bash
# SPPO on verl 0.9.1: DeepSeek-R1-Distill-Qwen-7B policy + a decoupled DeepSeek-R1-Distill-Qwen-1.5B
# critic (scalar value head; both models share the Qwen2.5 tokenizer, so the critic reads the
# policy's token ids), DAPO-Math-17k, one node of 8 GPUs. The paper's 7B settings (its 7B runs
# used 4 x H100): 512 prompts a step, PPO mini-batch 32, critic lr 1e-5, weight decay 0.1,
# prompts <= 2048 tokens, 200 steps, validation every 20 steps; vLLM with tensor parallel 2; the
# shared settings are in sppo_verl.sh. Not yet run on a GPU. Extra arguments are Hydra overrides.
#   DATA=~/data/sppo/dapo17k bash llm/verl/sppo_r1_distill_7b_critic_1.5b.sh   (see prepare_data.sh)
set -euo pipefail
export DATA="${DATA:-$HOME/data/sppo/dapo17k}"
export POLICY="${POLICY:-deepseek-ai/DeepSeek-R1-Distill-Qwen-7B}"
export CRITIC="${CRITIC:-deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B}"
export MAX_PROMPT=2048 BATCH=512 MINI_BATCH=32 WEIGHT_DECAY=0.1 CRITIC_LR=1e-5 ROLLOUT_TP=2
export STEPS=200 TEST_FREQ=20 SAVE_FREQ=50 NAME=sppo-r1-distill-7b-critic-1.5b
exec bash "$(dirname "$0")/sppo_verl.sh" "$@"
