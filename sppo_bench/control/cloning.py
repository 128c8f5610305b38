"""Stage 2: behaviour cloning of the expert's successful episodes into the RL policy network.

The deterministic expert is rolled out on the sparse task from start states ``CLONE_SEED + i``
until ``clone.episodes`` successful episodes are collected (or ``clone.max_rollouts`` tried);
only successful episodes are kept. The policy is fitted on their (s_t, a_t) pairs:

- discrete: cross-entropy, L = -mean log pi(a_t | s_t);
- continuous: squared error of the Gaussian mean, L = mean |mu(s_t) - a_t|^2, and the
  state-independent log-std is set to ``clone.log_std``.

A small ``episodes``/``epochs`` budget keeps the clone imperfect, so that RL has room to improve;
``clone.demo_noise`` = p weakens it further and controllably: before fitting, each demonstrated
action is replaced with probability p by one drawn uniformly from the action space
(``noisy_actions``), so p = 0 is the plain clone and p = 1 a clone of random actions.
Output in ``runs/control/<task>/clone/``: ``policy.pt`` (see ``load_policy``), ``summary.json``
(expert episodes used, clone success rates on the evaluation start states), ``done``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from sppo_bench.config import to_dict, write_yaml_atomic
from sppo_bench.control.envs import EpisodeVectorEnv, make_vector_env, space_dims
from sppo_bench.control.evaluation import concat_batches, evaluate
from sppo_bench.control.expert import (
    ExpertActor,
    check_stage_config,
    evaluate_actor,
)
from sppo_bench.control.policies import Policy
from sppo_bench.control.spec import TaskSpec, load_spec
from sppo_bench.control.variants import Variant, all_overrides, variant_stage_dir
from sppo_bench.errors import UserError
from sppo_bench.io import atomic_torch_save, atomic_write_json, read_torch_file

CLONE_SEED = 3_000_000
NOISE_STREAM = 7  # the demo-noise generator: numpy.random.default_rng([NOISE_STREAM, seed])


def build_policy(spec: TaskSpec, log_std: float | None = None) -> Policy:
    """An untrained policy network for the task, shaped from its spaces and ``spec.policy``."""
    env = spec.info.cls()
    obs_dim, discrete, action_dim = space_dims(EpisodeVectorEnv([env]))
    return Policy(
        obs_dim,
        discrete,
        action_dim,
        spec.policy.hidden,
        spec.policy.activation,
        spec.clone.log_std if log_std is None else log_std,
    )


def save_policy(path: Path, policy: Policy, spec: TaskSpec) -> None:
    """``policy.pt``: the state dict plus what ``build_policy`` needs to rebuild the network."""
    atomic_torch_save(path, {"state_dict": policy.state_dict(), "spec": to_dict(spec)})


def load_policy(path: Path, spec: TaskSpec) -> Policy:
    """Rebuild a saved policy with ``spec``'s network shape and load its weights."""
    if not path.is_file():
        raise UserError(f"no cloned policy at {str(path)!r}; run `sppo-bench control clone` first")
    policy = build_policy(spec)
    policy.load_state_dict(read_torch_file(path, "cloned policy", ("state_dict",))["state_dict"])
    return policy


def expert_demonstrations(spec: TaskSpec, expert: ExpertActor) -> tuple[Any, int]:
    """Successful expert episodes (an ``EpisodeBatch``) and the number of rollouts tried."""
    cfg = spec.clone
    kept, tried, chunk = [], 0, 16
    while sum(len(b.lengths) for b in kept) < cfg.episodes and tried < cfg.max_rollouts:
        n = min(chunk, cfg.max_rollouts - tried)
        _, batches = evaluate_actor(spec.info, expert, n, CLONE_SEED + tried, num_envs=n)
        tried += n
        if not cfg.only_successful:
            kept += batches
            continue
        kept += [b.select(b.success) for b in batches if b.success.any()]
    if not kept:
        raise UserError(
            f"the {spec.task} expert succeeded in none of {tried} rollouts; retrain it "
            "(more expert.total_timesteps) or raise clone.max_rollouts"
        )
    demos = concat_batches(kept)
    return demos.select(np.arange(min(cfg.episodes, len(demos.lengths)))), tried


def noisy_actions(
    actions: np.ndarray, noise: float, space: Any, rng: np.random.Generator
) -> np.ndarray:
    """``actions`` ``[M]`` (discrete) or ``[M, a]`` (Box) with each row replaced, with
    probability ``noise``, by a uniform draw from ``space`` (``n`` actions, or the box
    ``[low, high]``). Returns a new array; ``noise = 0`` returns an unchanged copy."""
    out = np.array(actions, copy=True)
    replace = rng.random(len(out)) < noise
    k = int(replace.sum())
    if k == 0:
        return out
    if hasattr(space, "n"):
        out[replace] = rng.integers(0, int(space.n), size=k).astype(out.dtype)
    else:
        low, high = np.asarray(space.low, float), np.asarray(space.high, float)
        draws = rng.uniform(low, high, size=(k, *low.shape))
        out[replace] = draws.reshape(out[replace].shape).astype(out.dtype)
    return out


def fit(policy: Policy, obs: np.ndarray, actions: np.ndarray, spec: TaskSpec, progress: bool):
    """Behaviour-cloning epochs over (s, a) pairs ``obs [M, d]``, ``actions [M, ...]``."""
    cfg = spec.clone
    policy.set_normalization(obs.mean(0), obs.std(0))
    obs_t = torch.as_tensor(obs, dtype=torch.float32)
    act_t = torch.as_tensor(actions)
    params = [p for name, p in policy.named_parameters() if name != "log_std"]
    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    losses = []
    for _ in tqdm(range(cfg.epochs), desc="clone", disable=not progress):
        for idx in torch.randperm(len(obs_t)).split(cfg.batch_size):
            out = policy(obs_t[idx])
            if policy.discrete:
                loss = torch.nn.functional.cross_entropy(out, act_t[idx].long())
            else:
                loss = (out - act_t[idx].float()).pow(2).sum(-1).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return float(np.mean(losses[-10:])) if losses else float("nan")


def clone_expert(
    task: str,
    runs_dir: Path = Path("runs"),
    overrides: Sequence[str] = (),
    seed: int | None = None,
    progress: bool = True,
    variant: Variant | None = None,
) -> Path:
    """Clone (or skip if done) the task's expert into the RL policy; returns the clone folder
    (the variant's own, ``clone@<variant>``, where its overrides touch what a clone is built
    from). ``seed``: the cloning seed, stored as ``clone.seed`` (None: the spec's)."""
    torch.set_num_threads(1)
    overrides = all_overrides(overrides, variant)
    spec = load_spec(task, overrides)
    if seed is not None:
        spec.clone.seed = seed
    seed = spec.clone.seed
    out = variant_stage_dir(runs_dir, spec.task, "clone", variant)
    check_stage_config(out, spec, ["expert", "policy", "clone"], overrides)
    if (out / "done").is_file():
        return out
    start = time.time()
    torch.manual_seed(seed)
    expert = ExpertActor(variant_stage_dir(runs_dir, spec.task, "expert", variant) / "policy.pt")
    demos, tried = expert_demonstrations(spec, expert)
    keep = demos.mask.astype(bool)
    obs, actions = demos.obs[keep], demos.actions[keep]
    if spec.clone.demo_noise > 0:
        space = spec.info.cls().action_space
        rng = np.random.default_rng([NOISE_STREAM, seed])
        actions = noisy_actions(actions, spec.clone.demo_noise, space, rng)
    policy = build_policy(spec)
    final_loss = fit(policy, obs, actions, spec, progress)
    # the settings are stored with the clone they made: a failed attempt leaves none behind
    write_yaml_atomic(out / "config.yaml", {"task": spec.task, "seed": seed, **to_dict(spec)})
    save_policy(out / "policy.pt", policy, spec)
    fit_time = time.time() - start
    n_eval = spec.clone.eval_episodes
    venv = make_vector_env(spec.info, min(32, n_eval), backend="gymnasium")
    n_eval -= n_eval % venv.num_envs
    det, sto, _ = evaluate(
        venv, policy, n_eval, spec.info.horizon, torch.Generator().manual_seed(seed)
    )
    summary = {
        "task": spec.task,
        "expert_rollouts": tried,
        "demo_episodes": int(len(demos.lengths)),
        "demo_steps": int(keep.sum()),
        "demo_noise": spec.clone.demo_noise,
        "bc_final_loss": final_loss,
        "success_deterministic": det,
        "success_stochastic": sto,
        "eval_episodes": n_eval,
        "fit_wall_time": fit_time,
        "wall_time": time.time() - start,
    }
    atomic_write_json(out / "summary.json", summary)
    atomic_write_json(out / "done", summary)
    return out
