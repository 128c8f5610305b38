"""Per-step time split and peak memory of SPPO, GRPO and PPO-GAE at real model sizes.

    python bench/llm_step_profile.py --device cuda     # the default grid below, into results/llm/
    python bench/llm_step_profile.py --device cpu --sizes tiny:s --sppo-critic tiny:xs \
        --prompts 4 --max-new-tokens 16 --threads 1     # a CPU smoke run, runs/llm-step-profile/

Grid: policy sizes ``--sizes`` (default ``0.5b 1.5b``: the Qwen2.5-0.5B / -1.5B architectures with
random weights, ``random:qwen2-<size>``, see ``sppo_bench.llm.random_models``; ``tiny:<size>``
for CPU smoke runs) x algorithms ``--algos``: SPPO (N = 1, sequence critic ``--sppo-critic``,
default 0.5b), GRPO (N = 8, no critic), PPO-GAE (N = 1, token critic of the policy's size); N is
the recipe's per-algorithm default. Every configuration is an ``LLMTrainer`` built from
``--recipe`` (default the paper's 1.5B recipe: float32 master weights, AdamW) with the HF engine,
gradient checkpointing, bf16 autocast on CUDA, ``--prompts`` prompts per step (the same
synthetic prompts for every algorithm: ``--prompt-length`` random characters in the chat
template), one optimiser step per RL step (``--mini-batch-size``), no critic warm-up (so PPO-GAE
also updates its policy) and a Bernoulli(0.5) reward from a seeded RNG (random weights solve
nothing; the reward only feeds the estimators). A random model almost never samples eos, so every
response runs to ``--max-new-tokens``.

``--warmup`` untimed steps, then ``--steps`` timed steps: the row holds the mean of each
``time_*`` field of ``LLMTrainer.train_step`` (CUDA-synchronised per phase), generated tokens per
step and the peak memory of the configuration (from the start of its build): on CUDA
``max_memory_allocated`` / ``max_memory_reserved``, on CPU the process's peak RSS
(``resource.getrusage``, reset per configuration through ``/proc/self/clear_refs`` where Linux
allows it; otherwise the process lifetime's). The peak is also split into generation and the rest
of the step (critic, log-probs, updates). The HF engine records the sampled tokens' log-probs
step by step (one ``[generation_batch_size, vocab]`` tensor at a time). The fast GPU setting of
the HF engine is ``--set rollout.generation_dtype=bfloat16 --set rollout.static_cache=true``
(the first step per shape compiles: keep ``--warmup 1``).

An out-of-memory configuration is a row with status ``OOM``. Each row is appended to
``<out>/llm_step_profile.partial.jsonl`` as soon as it is measured; a rerun with the same settings
skips finished rows (delete the file to remeasure). ``<out>/llm_step_profile.{csv,md,json}``
(table, table, settings and versions) are written at the end.
"""

from __future__ import annotations

import argparse
import csv
import gc
import hashlib
import io
import json
import platform
import resource
import string
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from sppo_bench.config import load_config  # noqa: E402
from sppo_bench.core import get_estimator  # noqa: E402
from sppo_bench.errors import UserError  # noqa: E402
from sppo_bench.io import MetricsWriter, atomic_write_json, atomic_write_text  # noqa: E402
from sppo_bench.llm.random_models import PREFIX, RANDOM_SIZES  # noqa: E402
from sppo_bench.llm.recipe import LLMConfig  # noqa: E402
from sppo_bench.llm.tiny import TINY_SIZES  # noqa: E402

NAME = "llm_step_profile"
TIMES = (
    "time_generation", "time_reward", "time_critic", "time_update", "time_weight_sync", "time_step",
)  # fmt: skip
GIB = 1024**3


def model_name(size: str) -> str:
    """``0.5b`` / ``qwen2-0.5b`` / ``random:qwen2-0.5b`` / ``tiny:xs`` -> a model name."""
    if size.startswith("tiny:"):
        if size[5:] not in TINY_SIZES:
            raise UserError(f"unknown size {size!r}; tiny sizes: {', '.join(TINY_SIZES)}")
        return size
    name = PREFIX + "qwen2-" + size.removeprefix(PREFIX).removeprefix("qwen2-")
    if name.removeprefix(PREFIX) not in RANDOM_SIZES:
        sizes = [s.removeprefix("qwen2-") for s in RANDOM_SIZES] + [f"tiny:{s}" for s in TINY_SIZES]
        raise UserError(f"unknown size {size!r}; valid: {', '.join(sizes)}")
    return name


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cuda = torch.cuda.is_available()
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if cuda else "cpu")
    p.add_argument("--recipe", default=str(ROOT / "llm/r1-distill-1.5b.yaml"))
    p.add_argument("--sizes", nargs="+", default=["0.5b", "1.5b"], help="policy sizes")
    p.add_argument("--algos", nargs="+", default=["sppo", "grpo", "ppo-gae"])
    p.add_argument("--sppo-critic", default="0.5b", help="size of SPPO's sequence critic")
    p.add_argument("--prompts", type=int, default=64, help="prompts per step (all algorithms)")
    p.add_argument("--prompt-length", type=int, default=64, help="random characters per prompt")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default 1024 CUDA, 32 CPU")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--steps", type=int, default=2, help="timed steps")
    p.add_argument("--micro-batch-size", type=int, default=None, help="rows (default: recipe)")
    p.add_argument("--mini-batch-size", type=int, default=None, help="prompts (default: all)")
    p.add_argument("--generation-batch-size", type=int, default=None, help="default 16 / 64")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", default=None, help="default results/llm (cuda), else runs/...")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    if args.device == "cuda" and not cuda:
        raise UserError(f"--device cuda but CUDA is not available (torch {torch.__version__})")
    for key in ("prompts", "prompt_length", "steps", "max_new_tokens", "micro_batch_size"):
        if getattr(args, key) is not None and getattr(args, key) < 1:
            raise UserError(f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}")
    if args.warmup < 0:
        raise UserError(f"--warmup must be >= 0, got {args.warmup}")
    on_cuda = args.device == "cuda"
    args.max_new_tokens = args.max_new_tokens or (1024 if on_cuda else 32)
    args.mini_batch_size = args.mini_batch_size or args.prompts
    args.generation_batch_size = args.generation_batch_size or (16 if on_cuda else 64)
    args.sizes = [model_name(s) for s in args.sizes]
    args.sppo_critic = model_name(args.sppo_critic)
    args.algos = [get_estimator(a).name for a in args.algos]
    default_out = "results/llm" if on_cuda else "runs/llm-step-profile"
    args.out = Path(args.out or ROOT / default_out)
    return args


def grid(args: argparse.Namespace) -> list[tuple[str, str, str | None]]:
    """(policy, algorithm, critic model or None) per configuration, policy-major."""
    out = []
    for policy in args.sizes:
        for algo in args.algos:
            kind = get_estimator(algo).critic
            critic = {"sequence": args.sppo_critic, "step": policy}.get(kind)
            out.append((policy, algo, critic))
    return out


def settings(args: argparse.Namespace) -> dict[str, object]:
    """Everything a row's numbers depend on besides (policy, algorithm, critic)."""
    keys = ("device", "recipe", "prompts", "prompt_length", "max_new_tokens", "warmup", "steps")
    keys += ("micro_batch_size", "mini_batch_size", "generation_batch_size", "seed", "threads")
    out: dict[str, object] = {k: getattr(args, k) for k in keys}
    out["overrides"] = list(args.overrides)
    out["device_name"] = device_name(args.device)
    return out


def settings_id(s: dict[str, object]) -> str:
    return hashlib.sha1(json.dumps(s, sort_keys=True).encode()).hexdigest()[:12]


def device_name(device: str) -> str:
    """The GPU's name, or the CPU's model name from ``/proc/cpuinfo`` where there is one."""
    if device == "cuda":
        return torch.cuda.get_device_name()
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    names = [x.split(":", 1)[1].strip() for x in lines if x.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def trainer_config(args: argparse.Namespace, policy: str, algo: str, critic: str | None):
    """The recipe with this configuration's overrides (the user's ``--set`` last)."""
    overrides = [
        f"model.policy={policy}",
        f"critic.model={critic or 'null'}",
        f"algo.name={algo}",
        "model.init=null",
        "model.gradient_checkpointing=true",
        f"model.compute_dtype={'bfloat16' if args.device == 'cuda' else 'float32'}",
        "critic.warmup_steps=0",
        "rollout.engine=hf",
        f"rollout.max_new_tokens={args.max_new_tokens}",
        f"rollout.generation_batch_size={args.generation_batch_size}",
        f"train.batch_size={args.prompts}",
        f"algo.mini_batch_size={args.mini_batch_size}",
        f"train.steps={args.warmup + args.steps}",
        f"train.device={args.device}",
        f"train.seed={args.seed}",
    ]
    if args.micro_batch_size:
        overrides.append(f"train.micro_batch_size={args.micro_batch_size}")
    return load_config(LLMConfig, args.recipe, overrides + list(args.overrides))


def synthetic_prompts(tokenizer, count: int, length: int, seed: int) -> list[str]:
    """``count`` chat prompts, each a question of ``length`` random letters, digits and spaces."""
    from sppo_bench.llm.data import build_prompt

    alphabet = np.array(list(string.ascii_letters + string.digits + " "))
    rng = np.random.default_rng(seed)
    return [build_prompt(tokenizer, "".join(rng.choice(alphabet, length))) for _ in range(count)]


def bernoulli_reward(seed: int) -> Callable[[list[str], list[str]], list[float]]:
    """A reward_fn: R ~ Bernoulli(0.5) per response, from an RNG seeded once."""
    rng = np.random.default_rng(seed)
    return lambda texts, golds: rng.integers(0, 2, len(texts)).astype(float).tolist()


class PeakMemory:
    """Peak memory since ``reset()``: CUDA allocated / reserved bytes, or the CPU's peak RSS."""

    def __init__(self, device: str) -> None:
        self.cuda = device == "cuda"
        self.resettable = self.cuda or _reset_rss()
        if self.cuda:
            self.label = "CUDA max_memory_allocated (reserved: max_memory_reserved)"
        elif self.resettable:
            self.label = "CPU peak RSS (getrusage ru_maxrss, reset per phase via clear_refs)"
        else:
            self.label = "CPU peak RSS (getrusage ru_maxrss, process lifetime, not reset)"

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        else:
            _reset_rss()

    def read(self) -> tuple[float, float]:
        """(peak GiB, peak reserved GiB; NaN on CPU)."""
        if self.cuda:
            return torch.cuda.max_memory_allocated() / GIB, torch.cuda.max_memory_reserved() / GIB
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB, float("nan")


def _reset_rss() -> bool:
    """Reset this process's peak RSS (Linux ``clear_refs`` 5); False where that is not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class PhasePeaks:
    """Wraps a rollout engine: after each ``generate`` the peak so far counts as generation's and
    the counters restart, so the next reading is the rest of the step's peak."""

    def __init__(self, engine, memory: PeakMemory) -> None:
        self.engine, self.memory = engine, memory
        self.generation, self.training = 0.0, 0.0
        self.reserved = 0.0 if memory.cuda else float("nan")

    def generate(self, *args, **kwargs):
        self.record("training")  # what came before: the build or the previous step's updates
        try:
            return self.engine.generate(*args, **kwargs)
        finally:  # an out-of-memory error in generation counts there too
            self.record("generation")

    def record(self, phase: str) -> None:
        peak, reserved = self.memory.read()
        setattr(self, phase, max(getattr(self, phase), peak))
        if self.memory.cuda:
            self.reserved = max(self.reserved, reserved)
        if self.memory.resettable:
            self.memory.reset()

    def __getattr__(self, name: str):  # wake_up, sleep, sync_weights
        return getattr(self.engine, name)


def measure(args, policy: str, algo: str, critic: str | None, peaks: PhasePeaks) -> dict:
    """Build the trainer, run warm-up and timed steps; the mean of each time field and more."""
    from sppo_bench.llm.models import load_tokenizer
    from sppo_bench.llm.trainer import LLMTrainer

    cfg = trainer_config(args, policy, algo, critic)
    prompts = synthetic_prompts(load_tokenizer(policy), args.prompts, args.prompt_length, 0)
    t0 = time.perf_counter()
    trainer = LLMTrainer(
        cfg, args.out, bernoulli_reward(args.seed), prompts=prompts, golds=["0"] * len(prompts)
    )
    try:
        peaks.engine, trainer.engine = trainer.engine, peaks
        print(f"  built in {time.perf_counter() - t0:.1f} s", flush=True)
        rows = []
        for step in range(args.warmup + args.steps):
            row = trainer.train_step(step)
            kind = "warm-up" if step < args.warmup else "timed"
            print(f"  {kind} step {step + 1}: {row['time_step']:.2f} s", flush=True)
            if step >= args.warmup:
                rows.append(row)
        peaks.record("training")
        n = trainer.cfg.algo.n_samples
        count = lambda m: sum(p.numel() for p in m.parameters()) / 1e6 if m is not None else 0.0
        out = {k: float(np.mean([r[k] for r in rows])) for k in TIMES}
        length = float(np.mean([r["response_length_mean"] for r in rows]))
        out.update(
            n_samples=n,
            rows=args.prompts * n,
            response_length_mean=length,
            tokens_per_step=length * args.prompts * n,
            tokens_per_s=float(np.mean([r["tokens_per_s"] for r in rows])),
            policy_params_m=count(trainer.policy),
            critic_params_m=count(trainer.critic),
        )
        return out
    finally:
        trainer.close()


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate" in text)


def run_one(args, policy: str, algo: str, critic: str | None, memory: PeakMemory) -> dict:
    """One configuration's row; an out-of-memory error becomes a row with status OOM."""
    release()
    memory.reset()
    peaks = PhasePeaks(None, memory)
    row: dict[str, object] = {"policy": policy, "algo": algo, "critic": critic or "-"}
    try:
        row.update(measure(args, policy, algo, critic, peaks), status="ok", note="")
    except Exception as exc:  # only an out-of-memory error is recorded; the rest propagate
        if not is_oom(exc):
            raise
        row.update(status="OOM", note=str(exc).splitlines()[0][:200])
    peaks.record("training")
    peak = max(peaks.generation, peaks.training)
    peaks.engine = None  # it holds the policy
    release()
    if not memory.resettable:  # a process-lifetime peak cannot be split by phase
        peaks.generation = peaks.training = float("nan")
    row.update(
        peak_gib=peak,
        peak_reserved_gib=peaks.reserved,
        peak_generation_gib=peaks.generation,
        peak_training_gib=peaks.training,
    )
    return row


def release() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


COLUMNS = (
    "policy", "algo", "n_samples", "critic", "status", *TIMES, "tokens_per_step", "tokens_per_s",
    "response_length_mean", "rows", "policy_params_m", "critic_params_m", "peak_gib",
    "peak_reserved_gib", "peak_generation_gib", "peak_training_gib", "note",
)  # fmt: skip


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def to_markdown(rows: list[dict], memory_label: str) -> str:
    """One line per configuration: seconds per step by phase, tokens, peak memory in GiB."""
    head = [
        "policy", "algo", "N", "critic", "status", "gen s", "reward s", "critic s", "update s",
        "sync s", "step s", "tokens/step", "gen tok/s", "peak GiB", "gen / rest GiB",
    ]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    f = lambda v, d=2: "-" if v is None or v != v else f"{v:,.{d}f}"
    for r in rows:
        cells = [r["policy"], r["algo"], str(r.get("n_samples", "-")), r["critic"], r["status"]]
        cells += [f(r.get(k)) for k in TIMES]
        cells += [f(r.get("tokens_per_step"), 0), f(r.get("tokens_per_s"), 1), f(r["peak_gib"])]
        cells.append(f"{f(r['peak_generation_gib'])} / {f(r['peak_training_gib'])}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\nMemory: {memory_label}.\n"


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    configs = grid(args)
    s = settings(args)
    sid = settings_id(s)
    memory = PeakMemory(args.device)
    partial = MetricsWriter(args.out / f"{NAME}.partial.jsonl", strict=False)
    meta = {
        "device": args.device,
        "device_name": s["device_name"],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "memory": memory.label,
        "settings": s,
        "settings_id": sid,
        "grid": [{"policy": p, "algo": a, "critic": c} for p, a, c in configs],
    }
    atomic_write_json(args.out / f"{NAME}.json", meta)
    for i, (policy, algo, critic) in enumerate(configs, 1):
        key = {"policy": policy, "algo": algo, "critic": critic or "-", "settings_id": sid}
        if any(all(r.get(k) == v for k, v in key.items()) for r in partial.rows()):
            print(f"[{i}/{len(configs)}] {policy} {algo}: measured before, skipped", flush=True)
            continue
        print(f"[{i}/{len(configs)}] {policy} {algo} (critic {critic or '-'})", flush=True)
        try:
            row = run_one(args, policy, algo, critic, memory)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        partial.append({**row, "settings_id": sid})
        print(f"  {row['status']}: step {row.get('time_step', float('nan')):.2f} s, "
              f"peak {row['peak_gib']:.2f} GiB", flush=True)  # fmt: skip
    done = {
        (r["policy"], r["algo"], r["critic"]): r for r in partial.rows() if r["settings_id"] == sid
    }
    rows = [done[(p, a, c or "-")] for p, a, c in configs]
    table = to_markdown(rows, memory.label)
    atomic_write_text(args.out / f"{NAME}.csv", to_csv(rows))
    atomic_write_text(args.out / f"{NAME}.md", table)
    atomic_write_json(args.out / f"{NAME}.json", {**meta, "rows": len(rows)})
    print(table)
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
