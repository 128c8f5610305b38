"""Measurements of a trained policy and its critic on held-out toy prompts.

- ``sampled_accuracy``: Average@k, the mean over prompts of the fraction of k sampled responses
  that the reward function accepts;
- ``token_value_traces``: one sampled response per prompt with the token-level critic's V(s_t)
  for every response token and the response's reward (the data of the paper's Figure 1);
- ``token_step_traces``: the same with the response's text, the token where each of its lines
  ends and its first wrong line (``steps``), to see where V moves relative to an error;
- ``sequence_calibration``: the SPPO critic's V(s_p) = sigmoid(v) per prompt against the
  empirical success rate of k sampled responses.

Sampling inside these functions runs under a forked torch RNG seeded with ``seed``: the caller's
RNG stream (a trainer's) is left exactly as it was, and the same seed samples the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from sppo_bench.core.critics import SEQUENCE, STEP
from sppo_bench.llm.data import Problem, build_prompt
from sppo_bench.llm.rollout import HFEngine, RolloutBatch
from sppo_bench.llm.toy import steps
from sppo_bench.llm.update import critic_predictions

RewardFn = Callable[[list[str], list[str]], list[float]]


def _sample(
    policy,
    tokenizer,
    problems: Sequence[Problem],
    k: int,
    temperature: float,
    max_new_tokens: int,
    seed: int,
    generation_batch_size: int = 256,
) -> RolloutBatch:
    engine = HFEngine(policy, tokenizer, generation_batch_size)
    prompts = [build_prompt(tokenizer, p.question) for p in problems]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return engine.generate(prompts, k, temperature, 1.0, max_new_tokens)


def _rewards(batch: RolloutBatch, problems: Sequence[Problem], reward_fn: RewardFn) -> list[float]:
    golds = [problems[i].answer for i in batch.prompt_index.tolist()]
    return [float(r) for r in reward_fn(batch.texts, golds)]


def sampled_accuracy(
    policy,
    tokenizer,
    problems: Sequence[Problem],
    reward_fn: RewardFn,
    k: int,
    temperature: float,
    max_new_tokens: int,
    seed: int = 0,
) -> float:
    """Average@k in [0, 1] (every prompt has k samples, so it is the mean reward)."""
    batch = _sample(policy, tokenizer, problems, k, temperature, max_new_tokens, seed)
    rewards = _rewards(batch, problems, reward_fn)
    return sum(rewards) / len(rewards)


def _token_values(
    policy, critic, tokenizer, problems, reward_fn, temperature, max_new_tokens, seed, micro
) -> tuple[RolloutBatch, list[float], list[list[float]]]:
    """One sample per prompt: (batch, rewards, per row V(s_0..s_{T-1}) over its real tokens)."""
    batch = _sample(policy, tokenizer, problems, 1, temperature, max_new_tokens, seed)
    rewards = _rewards(batch, problems, reward_fn)
    values = critic_predictions(critic, STEP, batch, micro)
    lengths = batch.response_mask.sum(dim=1).tolist()
    rows = [[round(float(v), 5) for v in values[i, :n]] for i, n in enumerate(lengths)]
    return batch, rewards, rows


@torch.no_grad()
def token_value_traces(
    policy,
    critic,
    tokenizer,
    problems: Sequence[Problem],
    reward_fn: RewardFn,
    temperature: float,
    max_new_tokens: int,
    seed: int = 0,
    micro_batch_size: int = 64,
) -> list[dict]:
    """Per prompt: ``{"reward": R, "values": [V(s_0), ..., V(s_{T-1})]}`` for one sample.

    V(s_t) is the token critic's value of the state before response token t (eos included).
    """
    _, rewards, values = _token_values(
        policy, critic, tokenizer, problems, reward_fn, temperature, max_new_tokens, seed,
        micro_batch_size,
    )  # fmt: skip
    return [{"reward": r, "values": v} for r, v in zip(rewards, values, strict=True)]


@torch.no_grad()
def token_step_traces(
    policy,
    critic,
    tokenizer,
    problems: Sequence[Problem],
    reward_fn: RewardFn,
    temperature: float,
    max_new_tokens: int,
    seed: int = 0,
    micro_batch_size: int = 64,
) -> list[dict]:
    """Per toy prompt, one sample: ``{"id", "reward", "text", "values": [V(s_t)] (T),
    "line_end_tokens": per response line the first t whose state holds the whole line
    (``steps.line_end_tokens``), "first_wrong_step": ``steps.first_wrong_step`` or None}``."""
    batch, rewards, values = _token_values(
        policy, critic, tokenizer, problems, reward_fn, temperature, max_new_tokens, seed,
        micro_batch_size,
    )  # fmt: skip
    out = []
    for i, (r, v) in enumerate(zip(rewards, values, strict=True)):
        problem, text = problems[int(batch.prompt_index[i])], batch.texts[i]
        ids = batch.response_ids[i, : len(v)].tolist()
        ends = steps.line_end_tokens(
            steps.token_end_offsets(tokenizer, ids), steps.line_end_offsets(text)
        )
        reference = steps.chain_of(problem.id).solution().split("\n")
        wrong = steps.first_wrong_step(reference, text)
        out.append(
            {
                "id": problem.id,
                "reward": r,
                "text": text,
                "values": v,
                "line_end_tokens": ends,
                "first_wrong_step": wrong,
            }
        )
    return out


@torch.no_grad()
def sequence_calibration(
    policy,
    critic,
    tokenizer,
    problems: Sequence[Problem],
    reward_fn: RewardFn,
    k: int,
    temperature: float,
    max_new_tokens: int,
    seed: int = 0,
    micro_batch_size: int = 64,
) -> list[dict]:
    """Per prompt: ``{"id", "value": V(s_p), "success": mean of k rewards, "k"}``."""
    batch = _sample(policy, tokenizer, problems, k, temperature, max_new_tokens, seed)
    rewards = torch.tensor(_rewards(batch, problems, reward_fn))
    first = torch.arange(0, len(batch), k)  # rows are prompt-major: prompt j at rows j*k...
    logits = critic_predictions(critic, SEQUENCE, batch.select(first), micro_batch_size)
    return [
        {
            "id": problem.id,
            "value": float(torch.sigmoid(logits[j])),
            "success": float(rewards[batch.prompt_index == j].mean()),
            "k": int((batch.prompt_index == j).sum()),
        }
        for j, problem in enumerate(problems)
    ]
