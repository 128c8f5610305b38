"""Where an update's time goes: the trainer's step profiled with cProfile, 1 and 10 seeds.

    python bench/profile_trainer.py            # MountainCar, Pendulum, Precision CartPole

For each task and seed count: the wall time of one update (after a warm-up update) split into
collection (``collect_episodes``: policy inference + physics), the update's forward passes for
the old log-probs / values, the advantages, the critic phase and the policy phase; and the
time inside the heaviest torch kernels (the batched matmuls, tanh - ``torch.tanh`` in
collection, ``sigmoid_`` in the update's hand-written passes - and autograd's backward, which
the update no longer calls). Writes
``results/bench/trainer_profile.md`` (one table, with the machine's load) and prints it.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

torch.set_num_threads(1)

import trainer_throughput as ours  # noqa: E402

from sppo_bench.io import atomic_write_text  # noqa: E402

PARTS: dict[str, tuple[tuple[str, str], ...]] = {
    "collection": (("collector.py", "collect_episodes"),),
    "advantages": (("update.py", "_advantages"),),
    "critic phase": (("ppo.py", "stacked_critic_phase"),),
    "policy phase": (("ppo.py", "stacked_policy_phase"),),
    "matmuls": (("~", "<built-in method torch.bmm>"), ("~", "<built-in method torch.baddbmm>")),
    "tanh": (
        ("~", "<built-in method torch.tanh>"),
        ("~", "<method 'sigmoid_' of 'torch._C.TensorBase' objects>"),
    ),
    "autograd backward": (("~", "<method 'run_backward' of 'torch._C._EngineBase' objects>"),),
}


def profile(task: str, algo: str, seeds: int) -> dict[str, float]:
    """Seconds per part of one update (cumulative times; kernels inside the phases)."""
    with tempfile.TemporaryDirectory() as tmp:
        trainer = ours.make_trainer(task, algo, Path(tmp), seeds=seeds)
        trainer.step(1)
        profiler = cProfile.Profile()
        profiler.enable()
        trainer.step(2)
        profiler.disable()
    stats = pstats.Stats(profiler).stats  # (file, line, name) -> (cc, nc, tt, ct, callers)
    out = {"total": max(v[3] for k, v in stats.items() if k[2] == "step")}
    for part, functions in PARTS.items():
        out[part] = sum(
            v[3]
            for k, v in stats.items()
            for file, name in functions
            if k[0].endswith(file) and k[2] == name
        )
    out["steps"] = sum(state["env_steps"] for state in trainer.states) / 2
    return out


def main() -> int:
    header = ["task", "algo", "seeds", "s/update", "steps/s", *PARTS]
    lines = [
        f"Trainer profile (cProfile, one update after a warm-up; load {os.getloadavg()[0]:.2f}); "
        "parts in % of the update (kernels are inside the phases and collection)",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for task in ("mountaincar", "pendulum", "cartpole"):
        for algo in ("sppo", "ppo-gae"):
            for seeds in (1, 10):
                p = profile(task, algo, seeds)
                parts = [f"{100 * p[k] / p['total']:.0f}%" for k in PARTS]
                rate = p["steps"] / p["total"]
                row = [task, algo, str(seeds), f"{p['total']:.3f}", f"{rate:,.0f}", *parts]
                lines.append("| " + " | ".join(row) + " |")
                print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    atomic_write_text(ROOT / "results" / "bench" / "trainer_profile.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
