#!/usr/bin/env bash
# SPPO on verl 0.9.1: DeepSeek-R1-Distill-Qwen-7B policy + a decoupled DeepSeek-R1-Distill-Qwen-1.5B
# critic (scalar value head; both models share the Qwen2.5 tokenizer, so the critic reads the
# policy's token ids), DAPO-Math-17k, one node of 8 GPUs. The paper's 7B settings (its 7B runs
# used 4 x H100): 512 prompts a step, 1 response each, PPO mini-batch 32, one epoch, clip 0.2,
# dual clip 3.0, token-mean, lr 1e-6 (critic 1e-5) constant, weight decay 0.1, grad clip 1.0,
# no KL, no entropy bonus, prompts <= 2048 tokens, responses <= 8192, temperature 0.6, 200 steps,
# validation Average@16 on AIME24/25, AMC23, MATH500, Minerva every 20 steps.
# Not yet run on a GPU. Extra arguments are Hydra overrides, e.g. trainer.n_gpus_per_node=4.
#   DATA=~/data/sppo/dapo17k bash llm/verl/sppo_r1_distill_7b_critic_1.5b.sh   (see prepare_data.sh)
set -euo pipefail
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
DATA="${DATA:-$HOME/data/sppo/dapo17k}"
POLICY="${POLICY:-deepseek-ai/DeepSeek-R1-Distill-Qwen-7B}"
CRITIC="${CRITIC:-deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B}"
NGPUS="${NGPUS:-8}"
MAX_PROMPT=2048
MAX_RESPONSE=8192
TOKENS=$(((MAX_PROMPT + MAX_RESPONSE) * 2)) # per GPU per micro-batch (dynamic batch size)

exec "${PYTHON:-python3}" -m verl.trainer.main_ppo \
    algorithm.adv_estimator=sppo \
    algorithm.use_kl_in_reward=False \
    algorithm.gamma=1.0 \
    algorithm.lam=1.0 \
    data.train_files="$DATA/train.parquet" \
    data.val_files="$DATA/val.parquet" \
    data.train_batch_size=512 \
    data.max_prompt_length=$MAX_PROMPT \
    data.max_response_length=$MAX_RESPONSE \
    data.filter_overlong_prompts=True \
    data.truncation=error \
    actor_rollout_ref.model.path="$POLICY" \
    actor_rollout_ref.model.use_remove_padding=True \
    actor_rollout_ref.model.enable_gradient_checkpointing=True \
    actor_rollout_ref.actor.optim.lr=1e-6 \
    actor_rollout_ref.actor.optim.lr_scheduler_type=constant \
    actor_rollout_ref.actor.optim.weight_decay=0.1 \
    actor_rollout_ref.actor.optim.clip_grad=1.0 \
    actor_rollout_ref.actor.ppo_mini_batch_size=32 \
    actor_rollout_ref.actor.ppo_epochs=1 \
    actor_rollout_ref.actor.use_dynamic_bsz=True \
    actor_rollout_ref.actor.ppo_max_token_len_per_gpu=$TOKENS \
    actor_rollout_ref.actor.clip_ratio=0.2 \
    actor_rollout_ref.actor.clip_ratio_c=3.0 \
    actor_rollout_ref.actor.loss_agg_mode=token-mean \
    actor_rollout_ref.actor.entropy_coeff=0 \
    actor_rollout_ref.actor.use_kl_loss=False \
    actor_rollout_ref.rollout.name=vllm \
    actor_rollout_ref.rollout.n=1 \
    actor_rollout_ref.rollout.temperature=0.6 \
    actor_rollout_ref.rollout.tensor_model_parallel_size=2 \
    actor_rollout_ref.rollout.gpu_memory_utilization=0.5 \
    actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu=$TOKENS \
    actor_rollout_ref.rollout.val_kwargs.n=16 \
    actor_rollout_ref.rollout.val_kwargs.do_sample=True \
    actor_rollout_ref.rollout.val_kwargs.temperature=0.6 \
    critic.enable=True \
    critic.model.path="$CRITIC" \
    critic.model.use_remove_padding=True \
    critic.model.enable_gradient_checkpointing=True \
    critic.optim.lr=1e-5 \
    critic.optim.lr_scheduler_type=constant \
    critic.optim.weight_decay=0.1 \
    critic.optim.clip_grad=1.0 \
    critic.ppo_mini_batch_size=32 \
    critic.use_dynamic_bsz=True \
    critic.ppo_max_token_len_per_gpu=$((TOKENS * 2)) \
    reward.custom_reward_function.path="$REPO/llm/verl/reward.py" \
    reward.custom_reward_function.name=compute_score \
    trainer.critic_warmup=0 \
    trainer.total_training_steps=200 \
    trainer.total_epochs=100 \
    trainer.n_gpus_per_node="$NGPUS" \
    trainer.nnodes=1 \
    trainer.val_before_train=True \
    trainer.test_freq=20 \
    trainer.save_freq=50 \
    trainer.project_name=sppo-bench \
    trainer.experiment_name=sppo-r1-distill-7b-critic-1.5b \
    trainer.logger='["console"]' \
    "$@"
