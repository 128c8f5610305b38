r"""Math prompts -> verl's Parquet schema (for the launch scripts in ``llm/verl/``).

One row per problem, the columns verl's ``RLHFDataset`` and reward loop read::

    data_source   str    "deepscaler" | "dapo17k" | an eval set name (aime24, math500, ...)
    prompt        list   [{"role": "user", "content": "<question>\n<INSTRUCTION>"}]
    ability       str    "math"
    reward_model  dict   {"style": "rule", "ground_truth": "<gold answer>"}
    extra_info    dict   {"split": "train" | "test", "index": <row>, "id": "<problem id>"}

The user turn is the one :func:`sppo_bench.llm.data.build_prompt` renders (the question, then
"Please reason step by step, and put your final answer within \boxed{}."); verl applies the
policy's chat template to it. ``llm/verl/reward.py`` grades the last ``\boxed{}`` of a response
against ``ground_truth`` with the project's verifier.

Sources: DeepScaleR (``problem`` / ``answer``, the ``math500`` field mapping), DAPO-Math-17k (the
``dapo17k`` mapping of :mod:`sppo_bench.llm.data`: its chat prompt's "Answer: $Answer" wrapper is
taken off and replaced by the instruction above, its gold is ``reward_model.ground_truth``,
repeated questions are kept once) and the evaluation sets. Each is a Hugging Face Hub id (the
defaults: ``TRAIN_SETS`` and ``EVAL_SETS``; reading them needs the ``datasets`` package and the
network) or a local ``.jsonl`` / ``.parquet`` copy, which overrides the Hub.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sppo_bench.errors import UserError
from sppo_bench.llm.data import (
    EVAL_SETS,
    HUB_SETS,
    INSTRUCTION,
    TRAIN_SETS,
    Problem,
    dapo_question,
    infer_dataset,
    load_problems,
)

__all__ = ["EVAL_FILES", "TRAIN_FORMATS", "dapo_question", "load_train", "main", "verl_rows"]

TRAIN_FORMATS = tuple(TRAIN_SETS)
# the evaluation sets' file names in a local folder (--eval-dir), one per set of EVAL_SETS
EVAL_FILES = ("aime24.jsonl", "aime25.jsonl", "amc23.jsonl", "math500.jsonl", "minerva_math.jsonl")


def load_train(source: str, fmt: str, split: str | None = None) -> list[Problem]:
    """Training problems from DeepScaleR (``fmt="deepscaler"``) or DAPO-Math-17k (``"dapo17k"``);
    ``split`` for a Hub id (``None``: the set's own)."""
    if fmt not in TRAIN_SETS:
        raise UserError(f"unknown training format {fmt!r}; valid: {', '.join(TRAIN_FORMATS)}")
    dataset = "math500" if fmt == "deepscaler" else fmt
    problems = load_problems(source, dataset=dataset, split=split)
    return [Problem(f"{fmt}/{i}", p.question, p.answer) for i, p in enumerate(problems)]


def verl_rows(problems: Sequence[Problem], data_source: str, split: str) -> list[dict[str, Any]]:
    """``problems`` as rows of verl's schema (module docstring)."""
    return [
        {
            "data_source": data_source,
            "prompt": [{"role": "user", "content": f"{p.question}\n{INSTRUCTION}"}],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": p.answer},
            "extra_info": {"split": split, "index": i, "id": p.id},
        }
        for i, p in enumerate(problems)
    ]


def _write(rows: list[dict[str, Any]], path: Path) -> None:
    import pandas as pd

    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path, index=False)


def eval_sources(eval_sets: Sequence[str], eval_dir: str | None) -> list[str]:
    """The evaluation sources: the ``EVAL_FILES`` present in ``eval_dir`` when it is given (a
    local copy), else ``eval_sets`` (Hub ids or files)."""
    if eval_dir is None:
        return list(eval_sets)
    found = [Path(eval_dir).expanduser() / name for name in EVAL_FILES]
    for path in found:
        if not path.is_file():
            print(f"{path}: not there, left out")
    sources = [str(p) for p in found if p.is_file()]
    if not sources:
        raise UserError(
            f"no evaluation set found in {eval_dir} (looked for {', '.join(EVAL_FILES)})"
        )
    return sources


def main(argv: Sequence[str] | None = None) -> None:
    """``--format deepscaler|dapo17k [--train SOURCE] [--eval SOURCE ... | --eval-dir DIR]
    --out DIR``: writes ``OUT/train.parquet`` and ``OUT/val.parquet`` (every eval set;
    ``data_source`` tells them apart, so verl reports each set's accuracy separately)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--format", required=True, choices=TRAIN_FORMATS)
    parser.add_argument("--train", help="file (.jsonl/.parquet) or Hub id (default: the format's)")
    parser.add_argument("--split", default=None, help="Hub split of --train (default: the set's)")
    parser.add_argument(
        "--eval", nargs="+", default=list(EVAL_SETS), help="eval sets: Hub ids or files"
    )
    parser.add_argument(
        "--eval-dir", help=f"a local folder with {', '.join(EVAL_FILES)} (overrides --eval)"
    )
    parser.add_argument("--out", required=True, help="output folder")
    args = parser.parse_args(argv)
    out = Path(args.out).expanduser()
    train = load_train(args.train or TRAIN_SETS[args.format], args.format, args.split)
    _write(verl_rows(train, args.format, "train"), out / "train.parquet")
    print(f"{out / 'train.parquet'}: {len(train)} {args.format} problems")
    rows: list[dict[str, Any]] = []
    for source in eval_sources(args.eval, args.eval_dir):
        dataset = infer_dataset(source if source in HUB_SETS else Path(source).name)
        problems = load_problems(source, dataset=dataset)
        rows += verl_rows(problems, dataset, "test")
        print(f"{source}: {len(problems)} problems")
    _write(rows, out / "val.parquet")
    print(f"{out / 'val.parquet'}: {len(rows)} problems")


if __name__ == "__main__":
    try:
        main()
    except UserError as exc:
        raise SystemExit(f"verl_data: error: {exc}") from None
