"""``sppo-bench control expert|clone|train|evaluate``: the control track's three stages.

Every stage is cached under ``--runs-dir`` (default ``runs``): rerunning a finished stage does
nothing, an interrupted one resumes. ``--set key=value`` overrides a field of the task spec
``envs/<task>.yaml`` (e.g. ``--set rl.lr=1e-4 --set clone.epochs=5``). With ``--variant NAME`` the
``--set`` overrides are a named variant: runs go to ``<algo>@NAME/``, and stages whose settings
the variant changes to ``clone@NAME/`` / ``expert@NAME/`` (``sppo_bench.control.variants``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from sppo_bench.commands.argtypes import SEED, int_at_least, tensorboard_dir
from sppo_bench.control.tasks import TASKS, get_task
from sppo_bench.core import algorithm_names, get_estimator

ALGO_HELP = f"one of: {', '.join(algorithm_names())}"


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True, help=f"one of: {', '.join(TASKS)}")
    parser.add_argument("--seed", type=SEED, default=0, help="random seed (default 0)")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"), help="run folder root")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a task-spec field (repeatable), e.g. rl.lr=1e-4",
    )
    parser.add_argument(
        "--variant",
        metavar="NAME",
        help="name the --set overrides as a variant: runs in <algo>@NAME, own stages if needed",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _split(args: argparse.Namespace, extra: list[str] | None = None) -> tuple[list[str], Any]:
    """(shared overrides, Variant or None): with ``--variant`` every ``--set`` (and ``extra``)
    belongs to the variant."""
    from sppo_bench.control.variants import Variant

    overrides = [*args.overrides, *(extra or [])]
    if args.variant is None:
        return overrides, None
    return [], Variant(args.variant, tuple(overrides))


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "control", help="control suite: expert -> behaviour cloning -> RL fine-tuning"
    )
    stages = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)

    expert = stages.add_parser("expert", help="train the task's expert on its shaped reward")
    _common(expert)
    expert.add_argument(
        "--timesteps", type=int_at_least(1), help="SB3 PPO timesteps (default: the spec's)"
    )
    expert.set_defaults(func=run_expert, seed=None)  # None: the spec's expert.seed

    clone = stages.add_parser("clone", help="clone successful expert episodes into the policy")
    _common(clone)
    clone.add_argument(
        "--demos",
        type=int_at_least(1),
        help="successful expert episodes to clone (default: the spec's)",
    )
    clone.add_argument(
        "--epochs", type=int_at_least(0), help="behaviour-cloning epochs (default: the spec's)"
    )
    clone.set_defaults(func=run_clone, seed=None)  # None: the spec's clone.seed

    train = stages.add_parser("train", help="RL fine-tuning of the clone with one estimator")
    _common(train)
    train.add_argument("--algo", required=True, help=ALGO_HELP)
    train.add_argument(
        "--episodes",
        type=int_at_least(1, 10**10),
        help="training-episode budget, rounded up to whole updates (default: the spec's)",
    )
    train.add_argument(
        "--tensorboard",
        type=tensorboard_dir,
        help="also write the metrics as TensorBoard scalars here",
    )
    train.set_defaults(func=run_train)

    evaluate = stages.add_parser(
        "evaluate", help="success rates of a run (or, without --algo, of the clone)"
    )
    _common(evaluate)
    evaluate.add_argument("--algo", help=f"{ALGO_HELP} (default: the clone)")
    evaluate.add_argument(
        "--n-eval", type=int_at_least(1), default=128, help="evaluation start states"
    )
    evaluate.add_argument(
        "--calibration",
        nargs=2,
        type=int_at_least(1),
        metavar=("K", "M"),
        help="write calibration.npz: V(s_0) and the success rate of M rollouts, K start states",
    )
    evaluate.set_defaults(func=run_evaluate)


def run_expert(args: argparse.Namespace) -> int:
    from sppo_bench.control.expert import train_expert

    task = get_task(args.task).name
    overrides, variant = _split(args)
    out = train_expert(
        task, args.runs_dir, overrides, args.timesteps, args.seed, not args.no_progress, variant
    )
    print(f"expert: {out}\n{(out / 'summary.json').read_text()}", end="")
    return 0


def run_clone(args: argparse.Namespace) -> int:
    from sppo_bench.control.cloning import clone_expert

    task = get_task(args.task).name
    extra = []
    if args.demos is not None:
        extra.append(f"clone.episodes={args.demos}")
    if args.epochs is not None:
        extra.append(f"clone.epochs={args.epochs}")
    overrides, variant = _split(args, extra)
    out = clone_expert(task, args.runs_dir, overrides, args.seed, not args.no_progress, variant)
    print(f"clone: {out}\n{(out / 'summary.json').read_text()}", end="")
    return 0


def run_train(args: argparse.Namespace) -> int:
    from sppo_bench.control.trainer import train_run

    task = get_task(args.task)  # the task and the algorithm are resolved here, once
    overrides, variant = _split(args)
    out = train_run(
        task,
        get_estimator(args.algo),
        args.seed,
        args.runs_dir,
        args.episodes,
        overrides,
        not args.no_progress,
        args.tensorboard,
        variant,
    )
    print(f"run: {out}\n{(out / 'done').read_text()}", end="")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from sppo_bench.control.assess import calibrate, evaluate_saved
    from sppo_bench.errors import UserError

    task = get_task(args.task).name
    algo = None if args.algo is None else get_estimator(args.algo).run_name
    _, variant = _split(args)
    if args.calibration is not None:
        if algo is None:
            raise UserError("--calibration needs --algo (a run with a critic: sppo or ppo-gae)")
        k, m = args.calibration
        path = calibrate(task, algo, args.seed, args.runs_dir, k, m, not args.no_progress, variant)
        print(f"calibration: {path}")
        return 0
    print(json.dumps(evaluate_saved(task, args.runs_dir, algo, args.seed, args.n_eval, variant)))
    return 0
