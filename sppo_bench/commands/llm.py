"""``sppo-bench llm train|evaluate --recipe FILE [--algo NAME] [--set key=value ...]``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from sppo_bench.commands.argtypes import int_at_least, tensorboard_dir
from sppo_bench.core import algorithm_names
from sppo_bench.errors import UserError
from sppo_bench.io import read_torch_file
from sppo_bench.rundir import RunDir


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("llm", help="LLM math track: RL training and Average@k")
    sub = parser.add_subparsers(dest="llm_command", metavar="ACTION", required=True)
    for name, func, text in (
        ("train", run_train, "train a policy with one estimator (resumes a finished step)"),
        ("evaluate", run_evaluate, "Average@k of a policy or a training checkpoint"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--recipe", required=True, help="recipe YAML (see llm/)")
        p.add_argument(
            "--algo",
            help=f"estimator: {', '.join(algorithm_names())} (default: the recipe's algo.name)",
        )
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a recipe key, e.g. --set train.steps=10 (repeatable)",
        )
        p.add_argument("--run-dir", help="run folder (default: train.output_dir/<algo>)")
        if name == "train":
            p.add_argument(
                "--tensorboard",
                type=tensorboard_dir,
                help="also write the metrics as TensorBoard scalars",
            )
        p.add_argument(
            "--threads", type=int_at_least(1), default=1, help="torch CPU threads (default 1)"
        )
        if name == "evaluate":
            p.add_argument(
                "--checkpoint", help="a run folder or checkpoint.pt whose policy to evaluate"
            )
            p.add_argument("--out", help="output folder (default: eval.output_dir)")
        p.set_defaults(func=func)


def _config(args: argparse.Namespace):
    from sppo_bench.llm.recipe import load_recipe, resolve_algorithm_defaults

    overrides = list(args.overrides)
    if args.algo:
        overrides.append(f"algo.name={args.algo}")
    return resolve_algorithm_defaults(load_recipe(args.recipe, overrides))


def run_train(args: argparse.Namespace) -> int:
    from sppo_bench.llm.trainer import LLMTrainer, open_session

    torch.set_num_threads(args.threads)
    cfg = _config(args)
    run_dir = Path(args.run_dir or Path(cfg.train.output_dir) / cfg.algo.name)
    run = RunDir(run_dir)
    board = getattr(args, "tensorboard", None)
    with open_session(cfg, run_dir, board) as session:  # settings checked, lock held
        if run.done:
            done = int(run.done_summary().get("step", 0))
            if done >= cfg.train.steps:
                print(f"{run_dir}: finished ({done} steps); nothing to do")
                return 0
        trainer = LLMTrainer(cfg, run_dir, tensorboard=board, session=session)
        try:
            rows = trainer.train()
        finally:
            trainer.close()
    if rows:
        print(json.dumps({k: rows[-1][k] for k in ("step", "reward_mean", "time_step")}))
    print(f"run folder: {run_dir}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from sppo_bench.llm.engines import make_engine, pick_device
    from sppo_bench.llm.evaluate import evaluate
    from sppo_bench.llm.models import load_policy, load_tokenizer
    from sppo_bench.llm.verifier import Verifier

    torch.set_num_threads(args.threads)
    cfg = _config(args)
    tokenizer = load_tokenizer(cfg.model.policy)
    policy = load_policy(cfg.model.policy, tokenizer, cfg.model.dtype, cfg.train.seed)
    checkpoint = None
    if args.checkpoint:
        path = Path(args.checkpoint)
        if path.is_dir():  # a run folder: its latest checkpoint
            state = RunDir(path).load_checkpoint(keys=("policy", "step"))
            if state is None:
                raise UserError(f"run folder {str(path)!r} has no checkpoint yet")
        else:
            state = read_torch_file(path, keys=("policy", "step"))
        policy.load_state_dict(state["policy"])
        checkpoint = {"path": str(path.resolve()), "step": int(state["step"])}
    elif cfg.model.init:
        from sppo_bench.llm.warm_start import initial_policy_state

        m = cfg.model
        policy.load_state_dict(initial_policy_state(m.policy, m.init, m.init_builder))
        checkpoint = {"path": str(Path(m.init).resolve()), "step": 0}
    policy.to(pick_device(cfg.train.device)).eval()
    engine = make_engine(cfg, policy, tokenizer)
    with Verifier(cfg.train.reward_workers, cfg.train.reward_timeout_s) as verifier:
        identity = {"policy": cfg.model.policy, "checkpoint": checkpoint}
        summary = evaluate(cfg, policy, tokenizer, engine, verifier.score_batch, args.out, identity)
    for name, row in summary.items():
        print(f"{name:<10} Average@{row['k']} = {row['average_at_k']:.2f}  ({row['problems']})")
    return 0
