r"""A synthetic multi-step arithmetic task with verifiable integer answers, and its warm start.

A problem is a chain of 2 to 4 operations on one-digit operands, written as one expression with
the parentheses that left-to-right evaluation needs; every intermediate result stays in 0..99.
Its worked solution does one operation per line and boxes the result::

    question  (7+5)*3-8
    solution  7+5=12
              12*3=36
              36-8=28
              \boxed{28}

The problems form one deterministic stream of distinct expressions, cut into disjoint splits
(``SPLITS``): ``test`` (held-out evaluation), ``valid`` (early stopping of the warm start),
``train`` (RL prompts) and ``sft`` (worked solutions for the warm start). ``load_toy_problems``
serves them to ``data.load_problems`` as the source ``toy:arithmetic`` (``toy:arithmetic/test``
names a split in the source itself, as evaluation sets need).

The warm start (``build_warm_start``) is supervised fine-tuning of the recipe's tiny Qwen2 on
worked solutions (cross-entropy on the response tokens and the eos only), stopped at the first
check where the held-out ``valid`` accuracy (greedy) reaches ``WarmStartConfig.target_accuracy``,
so that RL starts from a policy that is right on some prompts and wrong on others.
"""

from __future__ import annotations

import operator
import random
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from tqdm import tqdm

from sppo_bench.errors import UserError
from sppo_bench.io import atomic_torch_save
from sppo_bench.llm.prompts import Problem, build_prompt

TASK = "toy:arithmetic"
OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul}
MAX_VALUE = 99
# split -> (first index, size) in the stream of distinct problems
SPLITS: dict[str, tuple[int, int]] = {
    "test": (0, 256),
    "valid": (256, 128),
    "train": (384, 4096),
    "sft": (4480, 8192),
}
STREAM_SEED = 20240601


@dataclass(frozen=True)
class Chain:
    """``start`` then ``steps`` of (op, operand), applied left to right."""

    start: int
    steps: tuple[tuple[str, int], ...]

    def results(self) -> list[int]:
        """The value after each step."""
        value, out = self.start, []
        for op, b in self.steps:
            value = OPS[op](value, b)
            out.append(value)
        return out

    @property
    def answer(self) -> int:
        return self.results()[-1]

    def expression(self) -> str:
        """The chain as one expression; ``*`` after a top-level ``+``/``-`` wraps the left side."""
        text, top = str(self.start), None
        for op, b in self.steps:
            if op == "*" and top in ("+", "-"):
                text = f"({text})"
            text += f"{op}{b}"
            top = op
        return text

    def solution(self) -> str:
        """One ``x op b=y`` line per step, then ``\\boxed{answer}``."""
        lines, value = [], self.start
        for (op, b), result in zip(self.steps, self.results(), strict=True):
            lines.append(f"{value}{op}{b}={result}")
            value = result
        return "\n".join(lines) + f"\n\\boxed{{{value}}}"


def random_chain(rng: random.Random, min_steps: int = 2, max_steps: int = 4) -> Chain:
    """A chain with operands 1..9 (2..9 for ``*``) and every intermediate result in 0..99."""
    value = rng.randint(1, 9)
    start, steps = value, []
    for _ in range(rng.randint(min_steps, max_steps)):
        options = [("+", b) for b in range(1, 10) if value + b <= MAX_VALUE]
        options += [("-", b) for b in range(1, 10) if value - b >= 0]
        options += [("*", b) for b in range(2, 10) if value * b <= MAX_VALUE]
        op = rng.choice(sorted({o for o, _ in options}))
        b = rng.choice([b for o, b in options if o == op])
        steps.append((op, b))
        value = OPS[op](value, b)
    return Chain(start, tuple(steps))


@cache
def problem_stream(size: int) -> tuple[Chain, ...]:
    """The first ``size`` distinct chains (by expression) of the task's fixed-seed stream."""
    rng = random.Random(STREAM_SEED)
    seen: set[str] = set()
    out: list[Chain] = []
    while len(out) < size:
        chain = random_chain(rng)
        if chain.expression() not in seen:
            seen.add(chain.expression())
            out.append(chain)
    return tuple(out)


def split_chains(split: str) -> tuple[Chain, ...]:
    if split not in SPLITS:
        raise UserError(f"unknown toy split {split!r}; valid: {', '.join(SPLITS)}")
    first, size = SPLITS[split]
    total = max(a + n for a, n in SPLITS.values())
    return problem_stream(total)[first : first + size]


def load_toy_problems(source: str, split: str = "test", limit: int | None = None) -> list:
    """``data.Problem`` rows of a split (``source``: ``toy:arithmetic[/<split>]``)."""

    name, _, named_split = source.partition("/")
    if name != TASK:
        raise UserError(f"unknown toy task {name!r}; valid: {TASK}")
    split = named_split or split
    chains = split_chains(split)[:limit]
    return [
        Problem(f"{TASK}/{split}/{i}", c.expression(), str(c.answer)) for i, c in enumerate(chains)
    ]


# ----------------------------------------------------------------------------- warm start
@dataclass
class WarmStartConfig:
    """Supervised warm start: AdamW at ``lr`` on batches of ``batch_size`` worked solutions
    (cycling through the ``sft`` split), at most ``max_steps`` steps; greedy accuracy on the
    ``valid`` split every ``check_every`` steps; stop at the first check >= ``target_accuracy``."""

    max_steps: int = 3000
    batch_size: int = 32
    lr: float = 1e-3
    check_every: int = 100
    target_accuracy: float = 0.3
    max_new_tokens: int = 64
    seed: int = 0


def sft_batch(tokenizer, prompts: list[str], responses: list[str]) -> dict[str, torch.Tensor]:
    """Right-padded ``[B, L]`` input_ids / attention_mask / labels for prompt + response + eos.

    labels are -100 on the prompt and padding, so the loss is
    -mean over response tokens (and the eos) of log pi(y_t | x, y_<t).
    """
    rows = []
    for prompt, response in zip(prompts, responses, strict=True):
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        r = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append((p + r, [-100] * len(p) + r))
    length = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), length), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), length), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, (seq, lab) in enumerate(rows):
        ids[i, : len(seq)] = torch.tensor(seq)
        labels[i, : len(seq)] = torch.tensor(lab)
        mask[i, : len(seq)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def sft_step(model, optimizer, batch: dict[str, torch.Tensor], grad_clip: float = 1.0) -> float:
    """One optimiser step of the response cross-entropy; returns the loss before the step."""
    model.train()
    loss = model(**batch, use_cache=False).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def greedy_accuracy(model, tokenizer, split: str, max_new_tokens: int = 64) -> float:
    """Fraction of a split answered correctly by greedy decoding (graded by exact integer match
    of the last box: the toy's answers are integers, so this equals the verifier's verdict)."""
    from sppo_bench.llm.answers import last_boxed
    from sppo_bench.llm.rollout import HFEngine

    problems = load_toy_problems(TASK, split)
    engine = HFEngine(model, tokenizer, generation_batch_size=128)
    prompts = [build_prompt(tokenizer, p.question) for p in problems]
    batch = engine.generate(prompts, 1, 0.0, 1.0, max_new_tokens)
    right = [last_boxed(t) == p.answer for t, p in zip(batch.texts, problems, strict=True)]
    return sum(right) / len(right)


def build_warm_start(
    policy_name: str, path: str | Path, cfg: WarmStartConfig | None = None, progress: bool = True
) -> dict:
    """Fine-tune ``policy_name`` (a ``tiny:<size>``) on worked solutions and save its state dict
    (atomically) to ``path``; returns ``{"steps", "valid_accuracy", "loss"}`` of the stop."""
    from sppo_bench.llm.models import load_policy, load_tokenizer

    cfg = cfg or WarmStartConfig()
    tokenizer = load_tokenizer(policy_name)
    model = load_policy(policy_name, tokenizer, seed=cfg.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    chains = list(split_chains("sft"))
    random.Random(cfg.seed).shuffle(chains)
    prompts = [build_prompt(tokenizer, c.expression()) for c in chains]
    solutions = [c.solution() for c in chains]
    torch.manual_seed(cfg.seed)
    info = {"steps": 0, "valid_accuracy": 0.0, "loss": float("nan")}
    bar = tqdm(range(1, cfg.max_steps + 1), desc="warm start (SFT)", disable=not progress)
    for step in bar:
        start = ((step - 1) * cfg.batch_size) % len(chains)
        rows = [(start + i) % len(chains) for i in range(cfg.batch_size)]
        batch = sft_batch(tokenizer, [prompts[i] for i in rows], [solutions[i] for i in rows])
        info["loss"] = sft_step(model, optimizer, batch)
        info["steps"] = step
        if step % cfg.check_every == 0 or step == cfg.max_steps:
            info["valid_accuracy"] = greedy_accuracy(model, tokenizer, "valid", cfg.max_new_tokens)
            bar.set_postfix(loss=f"{info['loss']:.3f}", valid=f"{info['valid_accuracy']:.2f}")
            if info["valid_accuracy"] >= cfg.target_accuracy:
                break
    atomic_torch_save(path, {"policy": model.state_dict(), "warm_start": info})
    return info
