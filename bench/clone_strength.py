"""Clone strength: the clone's start success (update 0) against ``clone.demo_noise``.

For each task, noise level p and clone seed k, clones the task's cached expert with
``clone.demo_noise=p`` (as the variant ``noise<p>``, so each clone has its own folder) and reads
the clone's stochastic and deterministic success on its evaluation start states (the success an
RL run starts from). The experts are trained once (or reused) in ``<runs-dir>/control/<task>/
expert``; each seed's clones go to ``<runs-dir>/clone-seed<k>/`` with a link to that expert.

    python bench/clone_strength.py --runs-dir runs/clone-strength \\
        --out results/control/clone_strength.csv
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import torch

from sppo_bench.control.cloning import clone_expert
from sppo_bench.control.expert import train_expert
from sppo_bench.control.variants import Variant
from sppo_bench.io import atomic_write_text

TASKS = ("mountaincar", "cartpole", "pendulum")
NOISES = (0.0, 0.25, 0.5, 0.75, 1.0)


def measure(
    runs_dir: Path,
    tasks: list[str],
    noises: list[float],
    seeds: int,
    sets: dict[str, list[str]] | None = None,
) -> pd.DataFrame:
    """One row per (task, demo_noise, seed): the clone's success rates and fit time.
    ``sets[task]``: further clone overrides of that task (e.g. a longer fit), recorded in the
    ``settings`` column."""
    rows = []
    for task in tasks:
        expert = train_expert(task, runs_dir, progress=False)
        for seed in range(seeds):
            seed_dir = runs_dir / f"clone-seed{seed}"
            link = seed_dir / "control" / task / "expert"
            if not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(expert.resolve(), target_is_directory=True)
            extra = tuple((sets or {}).get(task, ()))
            tag = "-".join(o.split(".", 1)[-1].replace("=", "") for o in extra)
            for noise in noises:
                name = f"noise{noise:g}" + (f"-{tag}" if tag else "")
                variant = Variant(name, (*extra, f"clone.demo_noise={noise}"))
                start = time.time()
                out = clone_expert(task, seed_dir, seed=seed, progress=False, variant=variant)
                summary = json.loads((out / "summary.json").read_text())
                rows.append(
                    {
                        "task": task,
                        "settings": " ".join(extra) or "task yaml",
                        "demo_noise": noise,
                        "seed": seed,
                        "success_stochastic": summary["success_stochastic"],
                        "success_deterministic": summary["success_deterministic"],
                        "eval_episodes": summary["eval_episodes"],
                        "demo_episodes": summary["demo_episodes"],
                        "seconds": round(time.time() - start, 1),
                    }
                )
                print(rows[-1], flush=True)
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"))
    parser.add_argument("--out", type=Path, default=Path("results/control/clone_strength.csv"))
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--noises", nargs="+", type=float, default=list(NOISES))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="TASK:KEY=VALUE",
        help="an extra clone override for one task (repeatable), e.g. mountaincar:clone.epochs=10",
    )
    parser.add_argument("--append", action="store_true", help="add rows to an existing --out")
    args = parser.parse_args()
    torch.set_num_threads(1)
    sets: dict[str, list[str]] = {}
    for item in args.sets:
        task, _, override = item.partition(":")
        sets.setdefault(task, []).append(override)
    table = measure(args.runs_dir, args.tasks, args.noises, args.seeds, sets)
    if args.append and args.out.is_file():
        table = pd.concat([pd.read_csv(args.out), table], ignore_index=True)
    atomic_write_text(args.out, table.to_csv(index=False, float_format="%.4g"))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
