"""Generation throughput and peak memory of the HF engine's settings, against the engine as it was.

    python bench/hf_generation.py                     # CUDA if present: random Qwen2.5-0.5B
    python bench/hf_generation.py --device cpu --model random:qwen2-0.5b --rows 8 --new-tokens 64

Variants (each in a fresh subprocess, so that every peak is its own):

- ``logits-stack``: the engine before this benchmark existed, rebuilt here as the peer: the
  policy's own (float32) weights, a dynamic KV cache, ``generate(output_logits=True)`` keeping
  every step's ``[B, V]`` logits of a chunk, log-probs gathered from that stack afterwards;
- ``recorder``: today's default engine: the same sampling, log-probs recorded step by step
  (``SampledLogProbs``), no ``[B, T, V]`` stack;
- ``bf16-static``: today's engine with ``rollout.generation_dtype=bfloat16`` and
  ``rollout.static_cache=true`` (on a GPU, transformers compiles the decoding step).

Per variant and batch size (``--rows``, all rows in one chunk): one untimed call (it compiles
where the variant compiles), then ``--repeats`` timed calls (CUDA-synchronised); tokens/s counts
rows x decoding steps (generation runs until every row of the chunk has stopped). Peak memory:
``max_memory_allocated`` on CUDA, the process's peak RSS on a CPU. Writes
``<out>/hf_generation_<device>.{csv,md}``; the ratio column is tokens/s over ``logits-stack`` at
the same batch size.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from sppo_bench.errors import UserError  # noqa: E402
from sppo_bench.io import atomic_write_text  # noqa: E402

VARIANTS = ("logits-stack", "recorder", "bf16-static")
GIB = 2**30


class LogitsStackEngine:
    """The peer: generate with ``output_logits=True`` and gather log-probs from the stack."""

    def __init__(self, model, tokenizer) -> None:
        self.model, self.tokenizer = model, tokenizer

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], temperature: float, max_new_tokens: int):
        from sppo_bench.llm.rollout import eos_ids, left_pad

        ids, mask = left_pad(prompt_ids, self.tokenizer.pad_token_id)
        device = next(self.model.parameters()).device
        out = self.model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=eos_ids(self.model, self.tokenizer),
            output_logits=True,
            return_dict_in_generate=True,
            do_sample=True,
            temperature=temperature,
            top_k=0,
        )
        response = out.sequences[:, ids.shape[1] :]
        columns = [
            torch.log_softmax(z.float() / temperature, -1).gather(-1, response[:, t, None])
            for t, z in enumerate(out.logits)
        ]
        return response, torch.cat(columns, dim=1)


def run_variant(args: argparse.Namespace) -> dict[str, float]:
    """One variant at one batch size in this process; returns its row."""
    from sppo_bench.llm.models import load_policy, load_tokenizer
    from sppo_bench.llm.rollout import HFEngine

    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    tok = load_tokenizer(args.model)
    model = load_policy(args.model, tok, "float32", args.seed, device).to(device).eval()
    prompts = [[5 + (i * 7 + j) % 40 for j in range(args.prompt_length)] for i in range(args.rows)]
    if args.variant == "logits-stack":
        engine = LogitsStackEngine(model, tok)

        def call():
            response, _ = engine.generate(prompts, 1.0, args.new_tokens)
            return int(response.numel())
    else:
        fast = args.variant == "bf16-static"
        engine = HFEngine(
            model,
            tok,
            generation_batch_size=args.rows,
            dtype=torch.bfloat16 if fast else None,
            static_cache=fast,
        )

        def call():
            return int(engine.generate(prompts, 1, 1.0, 1.0, args.new_tokens).response_ids.numel())

    def clock() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    t0 = clock()
    call()
    first = clock() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    tokens, seconds = 0, 0.0
    for _ in range(args.repeats):
        t0 = clock()
        tokens += call()
        seconds += clock() - t0
    steps = tokens / args.rows
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / GIB
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {
        "variant": args.variant,
        "rows": args.rows,
        "new_tokens": args.new_tokens,
        "first_call_s": round(first, 2),
        "tokens_per_s": round(tokens / seconds, 1),
        "ms_per_step": round(1000 * seconds / steps, 2),
        "peak_gib": round(peak, 2),
    }


def parse(argv: list[str] | None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if cuda else "cpu")
    p.add_argument("--model", default=None, help="default random:qwen2-0.5b (CUDA), tiny:s (CPU)")
    p.add_argument("--rows", type=int, nargs="+", default=None, help="default 64 256 / 8")
    p.add_argument("--new-tokens", type=int, default=None, help="default 512 (CUDA) / 32 (CPU)")
    p.add_argument("--prompt-length", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="default results/llm (CUDA), runs/bench (CPU)")
    p.add_argument("--variant", help=argparse.SUPPRESS)  # internal: run one variant, print JSON
    args = p.parse_args(argv)
    if args.device == "cuda" and not cuda:
        raise UserError(f"--device cuda but CUDA is not available (torch {torch.__version__})")
    on_cuda = args.device == "cuda"
    args.model = args.model or ("random:qwen2-0.5b" if on_cuda else "tiny:s")
    args.rows = args.rows or ([64, 256] if on_cuda else [8])
    args.new_tokens = args.new_tokens or (512 if on_cuda else 32)
    for key in ("new_tokens", "prompt_length", "repeats"):
        if getattr(args, key) < 1:
            raise UserError(f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}")
    if min(args.rows) < 1:
        raise UserError(f"--rows must be >= 1, got {min(args.rows)}")
    args.out = Path(args.out or ROOT / ("results/llm" if on_cuda else "runs/bench"))
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.variant:
        args.rows = args.rows[0]
        print(json.dumps(run_variant(args)))
        return
    rows = []
    for n in args.rows:
        for variant in args.variants:
            cmd = [sys.executable, __file__, "--variant", variant, "--rows", str(n)]
            cmd += ["--device", args.device, "--model", args.model, "--seed", str(args.seed)]
            cmd += ["--new-tokens", str(args.new_tokens), "--repeats", str(args.repeats)]
            cmd += ["--prompt-length", str(args.prompt_length)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
                print(f"{variant} at {n} rows failed: {tail[0]}", file=sys.stderr)
                continue
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    base = {r["rows"]: r["tokens_per_s"] for r in rows if r["variant"] == "logits-stack"}
    for r in rows:
        r["vs_logits_stack"] = (
            round(r["tokens_per_s"] / base[r["rows"]], 2) if r["rows"] in base else ""
        )
        r["device"] = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
        r["model"] = args.model
    if not rows:
        raise UserError("no variant finished")
    args.out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(args.out / f"hf_generation_{args.device}.csv", buf.getvalue())
    cols = list(rows[0])
    md = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    atomic_write_text(args.out / f"hf_generation_{args.device}.md", "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    try:
        main()
    except UserError as err:
        sys.exit(f"hf_generation: error: {err}")
