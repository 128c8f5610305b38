#!/usr/bin/env bash
# SPPO on verl 0.9.1, one node: the settings every recipe shares (the paper's: 1 response per
# prompt, one PPO epoch, clip 0.2, dual clip 3.0, token-mean, constant lr 1e-6, grad clip 1.0, no
# KL, no entropy bonus, responses <= 8192 tokens, temperature 0.6, validation Average@16). A
# recipe script sets the rest and runs this file: DATA POLICY CRITIC MAX_PROMPT BATCH MINI_BATCH
# WEIGHT_DECAY CRITIC_LR ROLLOUT_TP STEPS TEST_FREQ SAVE_FREQ NAME (NGPUS, PYTHON optional).
# Extra arguments are Hydra overrides. Not yet run on a GPU.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DATA="${DATA:?DATA: the folder with train.parquet and val.parquet}"
POLICY="${POLICY:?}"
CRITIC="${CRITIC:?}"
NGPUS="${NGPUS:-8}"
MAX_PROMPT="${MAX_PROMPT:?}"
MAX_RESPONSE=8192
TOKENS=$(((MAX_PROMPT + MAX_RESPONSE) * 2)) # per GPU per micro-batch (dynamic batch size)
# verl 0.9.1's v1 trainer sizes the critic's micro-batches, forward and update alike, by
# critic.ppo_infer_max_token_len_per_gpu (not in verl's YAML, hence "++"; default 32768) and
# ignores critic.ppo_max_token_len_per_gpu (trainer/ppo/v1/trainer_base.py).
CRITIC_TOKENS=$((TOKENS * 2))

# Refuse to start (one line, before Ray) unless `import verl` registers the SPPO plugin here.
"${PYTHON:-python3}" -m sppo_bench.verl_check >/dev/null || exit 1

exec "${PYTHON:-python3}" -m verl.trainer.main_ppo \
    algorithm.adv_estimator=sppo \
    algorithm.use_kl_in_reward=False \
    algorithm.gamma=1.0 \
    algorithm.lam=1.0 \
    data.train_files="$DATA/train.parquet" \
    data.val_files="$DATA/val.parquet" \
    data.train_batch_size="$BATCH" \
    data.max_prompt_length=$MAX_PROMPT \
    data.max_response_length=$MAX_RESPONSE \
    data.filter_overlong_prompts=True \
    data.truncation=error \
    actor_rollout_ref.model.path="$POLICY" \
    actor_rollout_ref.model.use_remove_padding=True \
    actor_rollout_ref.model.enable_gradient_checkpointing=True \
    actor_rollout_ref.actor.optim.lr=1e-6 \
    actor_rollout_ref.actor.optim.lr_scheduler_type=constant \
    actor_rollout_ref.actor.optim.weight_decay="$WEIGHT_DECAY" \
    actor_rollout_ref.actor.optim.clip_grad=1.0 \
    actor_rollout_ref.actor.ppo_mini_batch_size="$MINI_BATCH" \
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
    actor_rollout_ref.rollout.tensor_model_parallel_size="$ROLLOUT_TP" \
    actor_rollout_ref.rollout.gpu_memory_utilization=0.5 \
    actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu=$TOKENS \
    actor_rollout_ref.rollout.val_kwargs.n=16 \
    actor_rollout_ref.rollout.val_kwargs.do_sample=True \
    actor_rollout_ref.rollout.val_kwargs.temperature=0.6 \
    critic.enable=True \
    critic.model.path="$CRITIC" \
    critic.model.use_remove_padding=True \
    critic.model.enable_gradient_checkpointing=True \
    critic.optim.lr="$CRITIC_LR" \
    critic.optim.lr_scheduler_type=constant \
    critic.optim.weight_decay="$WEIGHT_DECAY" \
    critic.optim.clip_grad=1.0 \
    critic.ppo_mini_batch_size="$MINI_BATCH" \
    critic.use_dynamic_bsz=True \
    ++critic.ppo_infer_max_token_len_per_gpu=$CRITIC_TOKENS \
    reward.custom_reward_function.path="$REPO/llm/verl/reward.py" \
    reward.custom_reward_function.name=compute_score \
    trainer.critic_warmup=0 \
    trainer.total_training_steps="$STEPS" \
    trainer.total_epochs=100 \
    trainer.n_gpus_per_node="$NGPUS" \
    trainer.nnodes=1 \
    trainer.val_before_train=True \
    trainer.test_freq="$TEST_FREQ" \
    trainer.save_freq="$SAVE_FREQ" \
    trainer.project_name=sppo-bench \
    trainer.experiment_name="$NAME" \
    trainer.logger='["console"]' \
    "$@"
