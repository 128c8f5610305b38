"""Average@k: k sampled responses per problem (temperature 0.6 by default), scored by the verifier.

Average@k of a set = 100 * mean over problems of (correct responses / k). For each set the
evaluator writes ``<out>/<set>.jsonl`` (one row per problem: id, gold answer, the k rewards, their
mean, mean response length) and ``<out>/summary.json`` (per set: Average@k, problems, k); both
atomically. A set whose per-problem file exists and whose ``<set>.meta.json`` matches this
evaluation (policy, checkpoint, k, sampling settings) is read back instead of regenerated, so an
interrupted evaluation resumes; anything else is evaluated afresh.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

from sppo_bench.errors import UserError
from sppo_bench.io import atomic_write_json, atomic_write_text
from sppo_bench.llm.data import build_prompt, infer_dataset, load_problems
from sppo_bench.llm.recipe import LLMConfig

RewardFn = Callable[[list[str], list[str]], list[float]]


def set_name(source: str) -> str:
    """A short name for an eval set: its dataset name when inferable, else the file stem."""
    try:
        return infer_dataset(Path(source).name)
    except UserError:
        return Path(source).stem


def evaluate_set(
    engine,
    tokenizer,
    source: str,
    reward_fn: RewardFn,
    k: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    limit: int | None = None,
    chunk_problems: int = 8,
) -> list[dict]:
    """Per-problem rows for one set (see the module docstring)."""
    problems = load_problems(source, limit=limit)
    rows = []
    for start in tqdm(range(0, len(problems), chunk_problems), desc=set_name(source)):
        part = problems[start : start + chunk_problems]
        prompts = [build_prompt(tokenizer, p.question) for p in part]
        engine.wake_up()
        batch = engine.generate(prompts, k, temperature, top_p, max_new_tokens)
        engine.sleep()
        golds = [part[i].answer for i in batch.prompt_index.tolist()]
        rewards = reward_fn(batch.texts, golds)
        lengths = batch.response_mask.sum(dim=1).tolist()
        for j, problem in enumerate(part):
            mine = [i for i, p in enumerate(batch.prompt_index.tolist()) if p == j]
            r = [float(rewards[i]) for i in mine]
            rows.append(
                {
                    "id": problem.id,
                    "answer": problem.answer,
                    "rewards": r,
                    "mean": sum(r) / len(r),
                    "response_length_mean": sum(lengths[i] for i in mine) / len(mine),
                }
            )
    return rows


def evaluate(
    cfg: LLMConfig,
    policy,
    tokenizer,
    engine,
    reward_fn: RewardFn,
    out_dir: str | Path | None = None,
    identity: dict | None = None,
) -> dict[str, dict]:
    """Average@k on every set of ``cfg.eval.sets``; returns (and writes) the summary."""
    e = cfg.eval
    if not e.sets:
        raise UserError("eval.sets is empty; list .jsonl / .parquet files or Hub dataset ids")
    out = Path(out_dir or e.output_dir)
    summary: dict[str, dict] = {}
    with torch.no_grad():
        for source in e.sets:
            name = set_name(source)
            path = out / f"{name}.jsonl"
            meta_path = out / f"{name}.meta.json"
            meta = {
                **(identity or {}),
                "source": source,
                "k": e.k,
                "temperature": e.temperature,
                "top_p": e.top_p,
                "max_new_tokens": e.max_new_tokens,
                "limit": e.limit,
            }
            if path.exists() and meta_path.exists() and json.loads(meta_path.read_text()) == meta:
                rows = [json.loads(line) for line in path.read_text().splitlines() if line]
            else:
                rows = evaluate_set(
                    engine,
                    tokenizer,
                    source,
                    reward_fn,
                    e.k,
                    e.temperature,
                    e.top_p,
                    e.max_new_tokens,
                    e.limit,
                )
                atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
                atomic_write_json(meta_path, meta)
            summary[name] = {
                "average_at_k": 100.0 * sum(r["mean"] for r in rows) / len(rows),
                "k": len(rows[0]["rewards"]),
                "problems": len(rows),
                "source": source,
                "temperature": e.temperature,
            }
            atomic_write_json(out / "summary.json", summary)
    return summary
