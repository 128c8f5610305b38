"""Seed-stacked training: each seed of an S-seed run is the run that seed makes alone.

The stacked networks compute ``Policy`` / ``ValueNet``'s math; one optimiser over stacked
parameters holds each seed's own Adam state; gradients are clipped per seed; a K-seed run's
metrics equal K single-seed runs' (identical random streams: start states, actions, shuffles;
numbers within float rounding of batched matmuls of other shapes); a diverging seed stops alone.
"""

import json
import math

import numpy as np
import pytest
import torch

from sppo_bench.control.cloning import build_policy, load_policy, save_policy
from sppo_bench.control.envs import make_vector_env
from sppo_bench.control.evaluation import rollout
from sppo_bench.control.policies import Policy, ValueNet
from sppo_bench.control.rollouts import ROLLOUT_STREAM
from sppo_bench.control.spec import load_spec
from sppo_bench.control.stack import (
    StackedPolicy,
    StackedValueNet,
    seed_optimizer_state,
    stack_optimizer_states,
)
from sppo_bench.control.trainer import Trainer, train_run, train_seeds
from sppo_bench.core.ppo import clip_grad_norm_per_seed, step_generator
from sppo_bench.errors import DivergedError, UserError

TINY = ["rl.trajectories_per_update=4", "rl.group_size=2", "rl.n_eval=3", "rl.eval_every=2"]
FLOAT_TOL = dict(rel=1e-4, abs=1e-5)


def _clone(root, task: str, seed: int = 0) -> None:
    spec = load_spec(task, TINY)
    torch.manual_seed(seed)
    save_policy(root / "control" / task / "clone" / "policy.pt", build_policy(spec), spec)


def _rows(run_dir):
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("wall_time", "charts/SPS")} for r in rows]


def _assert_rows_match(stacked, alone, skip_after_update0=()) -> float:
    """Counts and success rates equal, floats within FLOAT_TOL; returns the largest deviation."""
    assert [r["update"] for r in stacked] == [r["update"] for r in alone]
    worst = 0.0
    for a, b in zip(stacked, alone, strict=True):
        assert a.keys() == b.keys()
        for key, x in a.items():
            if a["update"] > 0 and key in skip_after_update0:
                continue
            y = b[key]
            if isinstance(x, float) and isinstance(y, float):
                assert x == pytest.approx(y, **FLOAT_TOL), (key, a["update"])
                worst = max(worst, abs(x - y))
            else:
                assert x == y, (key, a["update"])
    return worst


@pytest.mark.parametrize("discrete", [True, False])
def test_stacked_policy_computes_each_seeds_policy(discrete):
    torch.manual_seed(0)
    singles = [Policy(4, discrete, 3, (16, 16), "tanh", -0.5) for _ in range(3)]
    for p in singles:
        p.set_normalization(torch.randn(4), torch.rand(4) + 0.5)
    stacked = StackedPolicy(singles)
    obs = torch.randn(3, 5, 7, 4)
    actions = torch.randint(0, 3, (3, 5, 7)) if discrete else torch.randn(3, 5, 7, 3)
    log_p, entropy = stacked.log_prob_entropy(obs, actions)
    gens = [torch.Generator().manual_seed(s) for s in range(3)]
    again = [torch.Generator().manual_seed(s) for s in range(3)]
    greedy = torch.tensor([[True, False, False, True, False]] * 3)
    acts = stacked.act(obs[:, :, 0], greedy, gens)
    for k, single in enumerate(singles):
        lp, ent = single.log_prob_entropy(obs[k], actions[k])
        assert torch.allclose(log_p[k], lp, atol=1e-5) and torch.allclose(entropy[k], ent)
        assert torch.allclose(
            acts[k].float(), single.act(obs[k, :, 0], greedy[k], again[k]).float(), atol=1e-5
        )
        state = stacked.seed_state(k)
        assert state.keys() == single.state_dict().keys()
        assert all(torch.equal(state[n], t) for n, t in single.state_dict().items())
    assert [n for n, _ in stacked.named_parameters()][0] == "log_std"  # Policy's order
    critics = [ValueNet(4, (8,), "tanh") for _ in range(3)]
    stacked_critic = StackedValueNet(critics)
    for k, critic in enumerate(critics):
        assert torch.allclose(stacked_critic(obs)[k], critic(obs[k]), atol=1e-5)


@pytest.mark.parametrize("discrete", [True, False])
def test_actions_drawn_beforehand_or_by_mode_are_the_per_call_ones(discrete):
    """The collector's shortcuts give the actions of plain ``act`` calls, bit for bit:
    a categorical's uniforms drawn for a whole collection (``draw_uniforms``), and ``greedy``
    given as a bool when every row agrees."""
    torch.manual_seed(0)
    stacked = StackedPolicy([Policy(4, discrete, 3, (16, 16), "tanh", -0.5) for _ in range(3)])
    obs = torch.randn(6, 3, 5, 4)  # 6 calls of act on [S=3, N=5]

    def generators():
        return [torch.Generator().manual_seed(s) for s in range(3)]

    every, none = torch.ones(3, 5, dtype=torch.bool), torch.zeros(3, 5, dtype=torch.bool)
    plain_gens, ahead_gens = generators(), generators()
    uniforms = StackedPolicy.draw_uniforms(ahead_gens, 6, 5) if discrete else None
    assert not discrete or uniforms.shape == (3, 6, 5, 1)
    for t in range(6):
        plain = stacked.act(obs[t], none, plain_gens)
        ahead = stacked.act(obs[t], False, ahead_gens, uniforms[:, t] if discrete else None)
        assert torch.equal(plain, ahead)
        assert torch.equal(stacked.act(obs[t], every, generators()), stacked.act(obs[t], True, []))
    assert not torch.equal(stacked.act(obs[0], False, generators()), stacked.act(obs[0], True, []))


@pytest.mark.parametrize(
    "task, greedy_every, compared_steps",
    [
        ("mountaincar", 0, None),  # sampled rows only: the draws taken ahead
        ("cartpole", 2, None),  # every other row greedy (ReMax's rows)
        ("pendulum", 0, 10),  # Gaussian noise drawn per call; chaotic later (see below)
    ],
)
def test_collection_samples_as_each_seeds_policy_stepped_call_by_call(
    tmp_path, task, greedy_every, compared_steps
):
    """The trainer's collection (a categorical's draws taken for the whole collection at once,
    ``greedy`` passed as a bool where every row agrees) gives the actions of each seed's own
    ``Policy`` stepped call by call with that seed's generator."""
    _clone(tmp_path, task)
    spec = load_spec(task, TINY)
    clone = tmp_path / "control" / task / "clone" / "policy.pt"
    seeds = [0, 5]
    trainer = Trainer(spec, "sppo", seeds, [tmp_path / f"seed{k}" for k in seeds], clone)
    starts, _ = trainer.start_states(1)
    greedy = np.zeros_like(starts, dtype=bool)
    if greedy_every:
        greedy[:, ::greedy_every] = True
    got = trainer.collect(trainer.train_env, starts, greedy, ROLLOUT_STREAM, 1)
    n = starts.shape[1]
    for k, seed in enumerate(seeds):
        env = make_vector_env(spec.info, n, spec.rl.backend)
        generator = step_generator(seed, 1, ROLLOUT_STREAM)
        ref = rollout(env, load_policy(clone, spec), starts[k], spec.horizon, greedy[k], generator)
        mine = got.select(np.arange(k * n, (k + 1) * n))
        if compared_steps is None:
            assert np.array_equal(mine.lengths, ref.lengths)
            assert np.array_equal(mine.actions, ref.actions)
        else:
            steps = slice(0, compared_steps)
            assert np.allclose(mine.actions[:, steps], ref.actions[:, steps], atol=1e-5)
    trainer.close()


@pytest.mark.parametrize("task, compared_steps", [("mountaincar", None), ("pendulum", 10)])
def test_collection_after_an_update_samples_as_the_updated_policy(tmp_path, task, compared_steps):
    """A collection reads the parameters as they are when it starts (``StackedPolicy.actor``):
    after an update it samples as each seed's updated ``Policy`` (the Gaussian's new std too)."""
    _clone(tmp_path, task)
    spec = load_spec(task, TINY)
    clone = tmp_path / "control" / task / "clone" / "policy.pt"
    seeds = [0, 5]
    trainer = Trainer(spec, "sppo", seeds, [tmp_path / f"seed{k}" for k in seeds], clone)
    trainer.step(1)  # collects, then updates the policy
    starts, _ = trainer.start_states(2)
    got = trainer.collect(trainer.train_env, starts, np.zeros_like(starts, bool), ROLLOUT_STREAM, 2)
    n, before = starts.shape[1], load_policy(clone, spec).state_dict()
    for k, seed in enumerate(seeds):
        policy = build_policy(spec)
        policy.load_state_dict(trainer.policy.seed_state(k))
        after = policy.state_dict()
        assert any(not torch.equal(after[name], before[name]) for name in before)
        if task == "pendulum":
            assert not torch.equal(after["log_std"], before["log_std"])
        env = make_vector_env(spec.info, n, spec.rl.backend)
        generator = step_generator(seed, 2, ROLLOUT_STREAM)
        ref = rollout(env, policy, starts[k], spec.horizon, np.zeros(n, bool), generator)
        mine = got.select(np.arange(k * n, (k + 1) * n))
        if compared_steps is None:
            assert np.array_equal(mine.actions, ref.actions)
        else:
            steps = slice(0, compared_steps)
            assert np.allclose(mine.actions[:, steps], ref.actions[:, steps], atol=1e-5)
    trainer.close()


def test_stacked_adam_holds_each_seeds_own_state():
    """Adam over stacked parameters, stepped on a sum of per-seed losses, moves each seed as an
    Adam of that seed alone does, and its state slices to (and stacks from) the single format."""
    torch.manual_seed(0)
    singles = [Policy(2, True, 3, (8,)) for _ in range(3)]
    stacked = StackedPolicy(singles)
    opt = torch.optim.Adam(stacked.trainable(), lr=0.01)
    single_opts = [
        torch.optim.Adam([p for p in s.parameters() if p.requires_grad], lr=0.01) for s in singles
    ]
    obs = torch.randn(3, 6, 2)
    for _ in range(3):
        opt.zero_grad()
        (stacked(obs) ** 2).mean(dim=(1, 2)).sum().backward()
        opt.step()
        for k, (single, single_opt) in enumerate(zip(singles, single_opts, strict=True)):
            single_opt.zero_grad()
            (single(obs[k]) ** 2).mean().backward()
            single_opt.step()
    for k, single in enumerate(singles):
        state = stacked.seed_state(k)
        for name, value in single.state_dict().items():
            assert torch.allclose(state[name], value, atol=1e-6), name
        mine, theirs = seed_optimizer_state(opt.state_dict(), k), single_opts[k].state_dict()
        for slot, values in theirs["state"].items():
            for key, value in values.items():
                assert torch.allclose(mine["state"][slot][key], value, atol=1e-6), key
    rebuilt = stack_optimizer_states([seed_optimizer_state(opt.state_dict(), k) for k in range(3)])
    for slot, values in opt.state_dict()["state"].items():
        assert all(torch.equal(rebuilt["state"][slot][k], v) for k, v in values.items())


def test_gradients_are_clipped_per_seed():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(3, 4, 5)), torch.nn.Parameter(torch.randn(3, 4))]
    for p in params:
        p.grad = torch.randn_like(p) * torch.tensor([0.01, 1.0, 10.0]).view(3, *[1] * (p.dim() - 1))
    expected = []
    for k in range(3):
        alone = [torch.nn.Parameter(p[k].detach().clone()) for p in params]
        for a, p in zip(alone, params, strict=True):
            a.grad = p.grad[k].clone()
        expected.append((float(torch.nn.utils.clip_grad_norm_(alone, 1.0)), alone))
    norms = clip_grad_norm_per_seed(params, 1.0, 3)
    for k, (norm, alone) in enumerate(expected):
        assert float(norms[k]) == pytest.approx(norm, rel=1e-6)
        for a, p in zip(alone, params, strict=True):
            assert torch.allclose(p.grad[k], a.grad, atol=1e-7)
    assert float(norms[0]) < 1.0 < float(norms[2])  # one seed below the clip, one above


@pytest.mark.parametrize(
    "task, algo, episodes",
    [
        ("cartpole", "sppo", 16),
        ("cartpole", "ppo-gae", 16),
        ("cartpole", "remax", 16),
        ("mountaincar", "grpo", 16),
        ("pendulum", "reinforce", 4),  # a batch-mean baseline: must not pool seeds' episodes
        # Continuous actions carry the matmuls' rounding (~1e-8) into the physics, and an
        # untrained Pendulum policy is chaotic: perturbing the clone's weights by 1e-7 alone
        # flips evaluation successes and changes the losses by update 2. One update, and its
        # evaluation (rounded weights, then 200 chaotic steps) is not compared.
        ("pendulum", "sppo", 4),
        ("hopper", "ppo-gae", 4),
        ("lunarlander", "sppo", 8),
    ],
)
def test_k_seed_run_equals_single_seed_runs(tmp_path, task, algo, episodes):
    stacked_root, alone_root = tmp_path / "stacked", tmp_path / "alone"
    for root in (stacked_root, alone_root):
        _clone(root, task)
    kwargs = dict(episodes=episodes, overrides=TINY, progress=False)
    seeds = [0, 1, 2]
    stacked = train_seeds(task, algo, seeds, stacked_root, **kwargs)
    for seed, run in zip(seeds, stacked, strict=True):
        alone = train_run(task, algo, seed, alone_root, **kwargs)
        assert alone.relative_to(alone_root) == run.relative_to(stacked_root)
        rows = _rows(run)
        assert len(rows) == 1 + episodes // 4 and rows[-1]["episodes"] == episodes
        chaotic = (
            ("eval/success_stochastic", "eval/success_deterministic")
            if task in ("pendulum", "hopper")
            else ()
        )
        _assert_rows_match(rows, _rows(alone), chaotic)
        assert json.loads((run / "done").read_text())["seed"] == seed
        values = sorted((run / "values").glob("*.npz"))[: 1 if chaotic else None]
        for v in values:
            a, b = np.load(v), np.load(alone / "values" / v.name)
            assert np.array_equal(a["success"], b["success"])
            assert np.allclose(a["v0"], b["v0"], atol=1e-5)
    first = _rows(stacked[0])
    assert any(r != s for r, s in zip(first, _rows(stacked[1]), strict=True))  # seeds differ


def test_stack_resumes_and_groups_seeds_by_progress(tmp_path, monkeypatch):
    """Seed 0 interrupted at update 3, seeds 1-2 not started: one call finishes all three, each
    equal to its uninterrupted single-seed run."""
    _clone(tmp_path / "a", "cartpole")
    _clone(tmp_path / "b", "cartpole")
    kwargs = dict(episodes=24, overrides=[*TINY, "rl.checkpoint_every=2"], progress=False)
    original = Trainer.step

    def interrupted(self, update):
        if update == 4:
            raise KeyboardInterrupt
        return original(self, update)

    monkeypatch.setattr(Trainer, "step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_run("cartpole", "sppo", 0, tmp_path / "a", **kwargs)
    monkeypatch.setattr(Trainer, "step", original)
    stacks = []
    monkeypatch.setattr(Trainer, "run", _spy(Trainer.run, stacks))
    runs = train_seeds("cartpole", "sppo", [0, 1, 2], tmp_path / "a", **kwargs)
    assert stacks == [[1, 2], [0]]  # the fresh seeds first, then seed 0 from its checkpoint
    for seed, run in zip([0, 1, 2], runs, strict=True):
        alone = train_run("cartpole", "sppo", seed, tmp_path / "b", **kwargs)
        _assert_rows_match(_rows(run), _rows(alone))


def _spy(method, calls):
    def run(self, *args, **kwargs):
        calls.append(list(self.seeds))
        return method(self, *args, **kwargs)

    return run


def test_a_diverging_seed_stops_alone(tmp_path, monkeypatch):
    _clone(tmp_path, "cartpole")
    kwargs = dict(episodes=24, overrides=[*TINY, "rl.checkpoint_every=1"], progress=False)
    original = Trainer.update

    def poisoned(self, data, generators):
        rows = original(self, data, generators)
        if self.states[0]["update"] == 2 and 1 in self.seeds:
            with torch.no_grad():
                for p in self.policy.trainable():
                    p[self.seeds.index(1)].fill_(float("nan"))
        return rows

    monkeypatch.setattr(Trainer, "update", poisoned)
    with pytest.raises(DivergedError, match=r"seed\(s\) \[1\] diverged"):
        train_seeds("cartpole", "sppo", [0, 1, 2], tmp_path, **kwargs)
    base = tmp_path / "control/cartpole/sppo"
    assert (base / "seed0/done").is_file() and (base / "seed2/done").is_file()
    assert not (base / "seed1/done").exists() and (base / "seed1/diverged").is_file()
    assert not (base / "seed0/diverged").exists()
    blob = torch.load(base / "seed1/checkpoints/latest.pt", weights_only=False)
    assert all(torch.isfinite(t).all() for t in blob["policy"].values())
    rows = _rows(base / "seed1")
    assert all(math.isfinite(r["losses/policy"]) for r in rows[1:])


def test_bf16_compute_reaches_the_update_and_stays_close(tmp_path):
    """rl.compute_dtype=bfloat16: the update's losses move at the bf16 level (~1e-2), not more;
    an unknown dtype is a one-line error before any work."""
    rows = {}
    for dtype in ("float32", "bfloat16"):
        root = tmp_path / dtype
        _clone(root, "cartpole")
        overrides = [*TINY, f"rl.compute_dtype={dtype}"]
        run = train_run(
            "cartpole", "ppo-gae", 0, root, episodes=4, overrides=overrides, progress=False
        )
        rows[dtype] = _rows(run)[1]
    for key in ("losses/policy", "losses/value", "losses/entropy"):
        a, b = rows["float32"][key], rows["bfloat16"][key]
        assert a != b and b == pytest.approx(a, rel=3e-2, abs=1e-3), key
    with pytest.raises(
        UserError, match=r"unknown rl.compute_dtype 'float16'; valid: float32, bfloat16"
    ):
        train_run(
            "cartpole",
            "sppo",
            0,
            tmp_path / "bad",
            episodes=4,
            overrides=[*TINY, "rl.compute_dtype=float16"],
        )
    assert not (tmp_path / "bad").exists()
