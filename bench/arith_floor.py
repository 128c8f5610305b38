"""The control update against this machine's arithmetic floor.

    python bench/arith_floor.py            # ~8 min loaded; -> results/bench/arith_floor.{md,json}

Measures, in one process with one torch thread (as the trainer runs):

1. large-matmul rates: a 2048 x 2048 fp32 and bf16 ``torch.mm``, GFLOP/s (2 n^3 per product);
2. a seed-stacked 10-seed 2x64 tanh MLP, forward + backward at 8k rows per seed and at the
   update's chunk (``fastmlp.ROWS_PER_CHUNK`` / 10 rows per seed): autograd (``StackedMLP`` +
   ``backward``) against the hand-written passes (``control.fastmlp``);
3. per task (CartPole, MountainCar, Pendulum) and algorithm (SPPO, PPO-GAE), K = 10 seeds: env
   steps/s of whole updates by the autograd passes (the update as it was) and by the hand-written
   ones, in ``ROUNDS`` interleaved rounds (medians), and the update's achieved GFLOP/s.

FLOPs are counted from the networks' layer sizes, per env step (row) of an update: one policy
forward at collection and one for the old log-probs (2 P each, P = sum of in x out over the
policy's layers), then per epoch a forward and a backward (2 P + 4 P - 2 in_0 out_0: no gradient
for the input); the critic likewise on its rows (every step for PPO-GAE's step critic, one row
per episode for SPPO's s_0 critic). Padding rows and the heads' softmax are not counted. The
update's GFLOP/s is these FLOPs over the wall time of ``ppo_update`` (advantages included,
collection excluded); "whole step" divides by the whole update's time. Efficiency is the
update's rate over the fp32 matmul rate.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

torch.set_num_threads(1)

import trainer_throughput as ours  # noqa: E402

from sppo_bench.control import fastmlp  # noqa: E402
from sppo_bench.control import trainer as loop  # noqa: E402  (the module whose ppo_update is timed)
from sppo_bench.control.policies import mlp  # noqa: E402
from sppo_bench.control.stack import StackedMLP  # noqa: E402
from sppo_bench.io import atomic_write_text  # noqa: E402

OUT = ROOT / "results" / "bench" / "arith_floor"
TASKS = ("cartpole", "mountaincar", "pendulum")
ALGOS = ("sppo", "ppo-gae")
SEEDS = 10
PATHS = ("autograd", "fused")
ROUNDS = 3  # interleaved rounds per task and algorithm (medians: the machine is shared)


def best_seconds(fn: Callable[[], object], min_seconds: float = 1.0) -> float:
    """The fastest of repeated calls of ``fn`` over at least ``min_seconds`` (after one warm-up)."""
    fn()
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < min_seconds:
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def matmul_gflops(dtype: torch.dtype, n: int = 2048) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2 * n**3 / best_seconds(lambda: torch.mm(a, b)) / 1e9


def mlp_gflops(path: str, rows: int = 8192, obs: int = 4, out: int = 3) -> float:
    """A 10-seed 2x64 tanh MLP forward + backward (sum of outputs as the loss) at ``rows`` per
    seed, by autograd or by the hand-written passes."""
    torch.manual_seed(0)
    net = StackedMLP([mlp(obs, (64, 64), out, "tanh") for _ in range(SEEDS)])
    x = torch.randn(SEEDS, rows, obs)
    g = torch.ones(SEEDS, rows, out)

    def autograd() -> None:
        net(x).sum().backward()

    @torch.no_grad()
    def fused() -> None:
        _, inputs = fastmlp.mlp_forward(net, x)
        fastmlp.mlp_backward(net, inputs, g)

    macs = obs * 64 + 64 * 64 + 64 * out
    flops = SEEDS * rows * (6 * macs - 2 * obs * 64)
    return flops / best_seconds(autograd if path == "autograd" else fused) / 1e9


def macs(net: StackedMLP) -> tuple[int, int]:
    """(sum of in x out over the layers, in x out of the first layer) of one seed's MLP."""
    shapes = [getattr(net, f"w{i}").shape[1:] for i in range(net.n_layers)]
    return sum(o * i for o, i in shapes), shapes[0][0] * shapes[0][1]


def update_flops(trainer, steps: int, episodes: int, epochs: int, algo: str) -> float:
    """FLOPs of the updates that took ``steps`` env steps and ``episodes`` episodes (module doc)."""
    p, p0 = macs(trainer.policy.net)
    flops = steps * (2 * p + 2 * p + epochs * (6 * p - 2 * p0))
    if trainer.critic is not None:
        c, c0 = macs(trainer.critic.net)
        rows = steps if algo == "ppo-gae" else episodes
        flops += rows * (2 * c + epochs * (6 * c - 2 * c0))
    return flops


def trainer_row(task: str, algo: str, path: str, updates: int = 2) -> dict[str, float]:
    """K = 10 updates of ``task`` by the ``path`` passes: steps/s, update share, GFLOP/s."""
    real_supported = fastmlp.supported
    fastmlp.supported = real_supported if path == "fused" else lambda net: False
    real_update, update_seconds = loop.ppo_update, []

    def timed_update(*args, **kwargs):
        t = time.perf_counter()
        out = real_update(*args, **kwargs)
        update_seconds.append(time.perf_counter() - t)
        return out

    loop.ppo_update = timed_update
    try:
        with tempfile.TemporaryDirectory() as tmp:
            trainer = ours.make_trainer(task, algo, Path(tmp), seeds=SEEDS)
            steps, secs = ours.timed_updates(trainer, updates)  # after one warm-up update
    finally:
        fastmlp.supported, loop.ppo_update = real_supported, real_update
    spec = trainer.spec
    episodes = updates * SEEDS * spec.rl.trajectories_per_update
    flops = update_flops(trainer, steps, episodes, spec.rl.epochs, algo)
    in_update = sum(update_seconds[1:])
    return {
        "steps_per_s": steps / secs,
        "update_share": in_update / secs,
        "update_gflops": flops / in_update / 1e9,
        "step_gflops": flops / secs / 1e9,
        "flops_per_step": flops / steps,
        "load_1m": os.getloadavg()[0],
    }


def median_row(task: str, algo: str, rounds: int) -> dict[str, dict[str, float]]:
    """Both paths ``rounds`` times, interleaved (autograd, fused, autograd, ...); per path the
    median of each figure, and ``speedup``: the median of the rounds' fused / autograd ratios."""
    runs = [{path: trainer_row(task, algo, path) for path in PATHS} for _ in range(rounds)]
    out = {
        path: {k: statistics.median(r[path][k] for r in runs) for k in runs[0][path]}
        for path in PATHS
    }
    ratios = [r["fused"]["steps_per_s"] / r["autograd"]["steps_per_s"] for r in runs]
    out["fused"]["speedup"] = statistics.median(ratios)
    return out


def main() -> int:
    load0 = os.getloadavg()
    result: dict[str, object] = {"load_start": load0, "threads": torch.get_num_threads()}
    fp32, bf16 = matmul_gflops(torch.float32), matmul_gflops(torch.bfloat16)
    result["matmul_gflops"] = {"float32": fp32, "bfloat16": bf16}
    result["mlp_gflops"] = {path: mlp_gflops(path) for path in PATHS}
    chunk = fastmlp.ROWS_PER_CHUNK // SEEDS
    result["mlp_gflops_chunk"] = {path: mlp_gflops(path, rows=chunk) for path in PATHS}
    result["chunk_rows_per_seed"] = chunk
    print(f"matmul 2048^2: fp32 {fp32:.1f}, bf16 {bf16:.1f} GFLOP/s", flush=True)
    print(f"10-seed 2x64 MLP fwd+bwd, 8k rows/seed: {result['mlp_gflops']}", flush=True)
    print(f"the same at {chunk} rows/seed: {result['mlp_gflops_chunk']}", flush=True)
    rows: dict[str, dict[str, dict[str, float]]] = {}
    for task in TASKS:
        for algo in ALGOS:
            key = f"{task}/{algo}"
            rows[key] = median_row(task, algo, ROUNDS)
            print(key, json.dumps(rows[key]), flush=True)
    result["trainer_k10"] = rows
    result["load_end"] = os.getloadavg()
    atomic_write_text(OUT.with_suffix(".json"), json.dumps(result, indent=1) + "\n")
    atomic_write_text(OUT.with_suffix(".md"), report(result))
    print(report(result))
    return 0


def report(result: dict) -> str:
    fp32 = result["matmul_gflops"]["float32"]
    bf16 = result["matmul_gflops"]["bfloat16"]
    load = result["load_start"][0], result["load_end"][0]
    mlp_rates, chunk = result["mlp_gflops"], result["mlp_gflops_chunk"]
    lines = [
        f"Arithmetic floor (one torch thread; load {load[0]:.2f} at the start, {load[1]:.2f} at "
        f"the end): 2048^2 matmul fp32 **{fp32:.1f}** GFLOP/s, bf16 **{bf16:.1f}** GFLOP/s.",
        "",
        f"10-seed 2x64 tanh MLP, forward + backward, 8k rows per seed: autograd "
        f"{mlp_rates['autograd']:.1f} GFLOP/s ({100 * mlp_rates['autograd'] / fp32:.0f}% of fp32 "
        f"matmul), hand-written {mlp_rates['fused']:.1f} GFLOP/s "
        f"({100 * mlp_rates['fused'] / fp32:.0f}%); at the update's chunk of "
        f"{result['chunk_rows_per_seed']} rows per seed: autograd {chunk['autograd']:.1f}, "
        f"hand-written {chunk['fused']:.1f} GFLOP/s ({100 * chunk['fused'] / fp32:.0f}%).",
        "",
        f"K = 10 trainer updates, autograd passes -> hand-written passes (same run, {ROUNDS} "
        "interleaved rounds, medians; speed-up: the median of the rounds' ratios). "
        "Update GFLOP/s: FLOPs over the time in `ppo_update`; efficiency: that over the fp32 "
        "matmul rate; whole step: FLOPs over the whole update's time (collection included).",
        "",
        "| task | algo | kFLOP / env step | env steps/s | speed-up | update share | "
        "update GFLOP/s | efficiency | whole-step GFLOP/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, by_path in result["trainer_k10"].items():
        old, new = by_path["autograd"], by_path["fused"]
        task, algo = key.split("/")
        lines.append(
            f"| {task} | {algo} | {new['flops_per_step'] / 1e3:.0f} | "
            f"{old['steps_per_s']:,.0f} -> {new['steps_per_s']:,.0f} | "
            f"{new['speedup']:.2f}x | "
            f"{100 * old['update_share']:.0f}% -> {100 * new['update_share']:.0f}% | "
            f"{old['update_gflops']:.1f} -> {new['update_gflops']:.1f} | "
            f"{100 * old['update_gflops'] / fp32:.0f}% -> {100 * new['update_gflops'] / fp32:.0f}% "
            f"| {old['step_gflops']:.1f} -> {new['step_gflops']:.1f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
