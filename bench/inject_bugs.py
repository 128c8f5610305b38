"""Inject known wiring bugs one at a time and check that the test suite catches each.

For every bug: copy the project (package, tests, task specs, recipes) to a temporary folder,
apply one textual patch there (never to the working tree), run the tests against the copy and
record which tests failed; the selected bugs' test files must first pass unpatched. A patch whose
pattern no longer matches exactly once stops the script with an error naming the bug and file,
so the list cannot silently go stale after a refactor.

    python bench/inject_bugs.py            # the test files relevant to each bug
    python bench/inject_bugs.py --full     # the whole fast suite for every bug
    python bench/inject_bugs.py --only control-lr-ignored

Prints a table ``bug | caught (failed tests) / NOT caught`` and exits 1 if any bug is not caught.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COPIED = ("sppo_bench", "tests", "envs", "llm", "hyperparams", "pyproject.toml")
SETTINGS_TESTS = ("tests/test_settings_reach_the_update.py",)
CONTROL_TESTS = (
    "tests/test_control_update.py",
    "tests/test_control_pipeline.py",
    "tests/test_fastmlp.py",  # the hand-written passes against the core's losses
    *SETTINGS_TESTS,
)
LLM_TESTS = ("tests/test_llm_update_wiring.py", "tests/test_llm_trainer.py", *SETTINGS_TESTS)
STACK_TESTS = ("tests/test_seed_stack.py", "tests/test_fastmlp.py")
SESSION_TESTS = ("tests/test_run_session.py", "tests/test_llm_trainer.py")
WARMUP_TESTS = ("tests/test_critic_warmup.py",)


@dataclass(frozen=True)
class Bug:
    """Replace the single match of ``pattern`` (a regex) in ``path`` by ``replacement``."""

    name: str
    path: str
    pattern: str
    replacement: str
    tests: tuple[str, ...]


BUGS = (
    Bug(
        "control-advantage-sign",
        "sppo_bench/control/update.py",
        r"advantages\.append\(out\.advantages\.detach\(\)\)",
        "advantages.append(-out.advantages.detach())",
        CONTROL_TESTS,
    ),
    Bug(
        "llm-advantage-sign",
        "sppo_bench/llm/trainer.py",
        r"(old_lp,\s*)out\.advantages,",
        r"\1-out.advantages,",
        LLM_TESTS,
    ),
    Bug(
        "control-clip-ignored",  # the control track takes its clip from the shared PPOConfig
        "sppo_bench/core/ppo.py",
        r"clip_eps=self\.clip_eps",
        "clip_eps=0.2",
        CONTROL_TESTS,
    ),
    Bug(
        "control-lr-ignored",
        "sppo_bench/control/trainer.py",
        r"torch\.optim\.Adam\(self\.policy\.trainable\(\), lr=cfg\.lr\)",
        "torch.optim.Adam(self.policy.trainable())",
        CONTROL_TESTS,
    ),
    Bug(
        "control-critic-warmup-ignored",  # the policy moves from the first update on
        "sppo_bench/control/trainer.py",
        r"warmup = self\.update_count < self\.spec\.rl\.critic_warmup_updates",
        "warmup = False",
        WARMUP_TESTS,
    ),
    Bug(
        "control-critic-never-steps",
        "sppo_bench/control/trainer.py",
        r"self\.critic_opt = torch\.optim\.Adam\(",
        "self.critic_opt = None and torch.optim.Adam(",
        CONTROL_TESTS,
    ),
    Bug(
        "core-loop-critic-never-steps",
        "sppo_bench/core/ppo.py",
        r"norms = _step\(params, optimizer, cfg\.max_grad_norm, stacked\)\n(\s*)for s in seeds:\n"
        r"(\s*)stats\[\"losses/value_grad_norm\"\]",
        r'norms = [0.0] * len(seeds)\n\1for s in seeds:\n\2stats["losses/value_grad_norm"]',
        CONTROL_TESTS + LLM_TESTS,
    ),
    Bug(
        "stack-seeds-share-one-shuffle",
        "sppo_bench/control/update.py",
        r"cfg\.mini_batch_size, g\) for g in generators\]",
        "cfg.mini_batch_size, generators[0]) for g in generators]",
        STACK_TESTS,
    ),
    Bug(
        "stack-clip-across-seeds",  # one norm over all seeds' gradients instead of one per seed
        "sppo_bench/core/ppo.py",
        r"norms = clip_grad_norm_per_seed\(params, max_norm, stacked\)\.tolist\(\)",
        "norms = [float(torch.nn.utils.clip_grad_norm_(params, max_norm))] * stacked",
        STACK_TESTS,
    ),
    Bug(
        "stack-pools-batch-mean",  # REINFORCE's batch-mean baseline taken over all seeds
        "sppo_bench/core/advantages.py",
        r'@register\("reinforce", batch_wide=True,',
        '@register("reinforce",',
        STACK_TESTS,
    ),
    Bug(
        "ppo-bce-target-flipped",  # the per-step BCE critic fitted to 1 - R
        "sppo_bench/core/critics.py",
        r"output, targets\.to\(output\.dtype\), reduction",
        "output, 1 - targets.to(output.dtype), reduction",
        CONTROL_TESTS,
    ),
    Bug(
        "variant-clone-reused",  # a variant that changes clone.* shares the plain clone
        "sppo_bench/control/variants.py",
        r'"clone": \("expert", "policy", "clone"\)',
        '"clone": ("expert", "policy")',
        ("tests/test_variants.py",),
    ),
    Bug(
        "entropy-bonus-ignored",  # both tracks build their phase settings from PPOConfig
        "sppo_bench/core/ppo.py",
        r"entropy_coef=self\.entropy_coef",
        "entropy_coef=0.0",
        SETTINGS_TESTS,
    ),
    Bug(
        "dual-clip-ignored",
        "sppo_bench/core/ppo.py",
        r"dual_clip=self\.dual_clip",
        "dual_clip=None",
        SETTINGS_TESTS,
    ),
    Bug(
        "grad-clip-constant",
        "sppo_bench/core/ppo.py",
        r"max_grad_norm=self\.max_grad_norm",
        "max_grad_norm=1.0",
        SETTINGS_TESTS,
    ),
    Bug(
        "aggregation-constant",
        "sppo_bench/core/ppo.py",
        r"aggregation=self\.aggregation",
        'aggregation="token-mean"',
        SETTINGS_TESTS,
    ),
    Bug(
        "llm-epochs-ignored",
        "sppo_bench/llm/trainer.py",
        r"minibatch_schedule\(len\(batch\), cfg\.algo\.epochs,",
        "minibatch_schedule(len(batch), 1,",
        LLM_TESTS,
    ),
    Bug(
        "llm-value-clip-ignored",
        "sppo_bench/llm/trainer.py",
        r"settings = cfg\.algo\.settings\(cfg\.algo\.value_clip, micro\)",
        "settings = cfg.algo.settings(None, micro)",
        LLM_TESTS,
    ),
    Bug(
        "session-rng-not-restored",  # a resumed run samples from a fresh torch stream
        "sppo_bench/rundir.py",
        r'torch\.set_rng_state\(_cpu_bytes\(state\["torch"\]\)\)',
        "pass",
        SESSION_TESTS,
    ),
    Bug(
        "session-identity-unchecked",  # another run's checkpoint resumed as this run's
        "sppo_bench/rundir.py",
        r"if ckpt\.identity is not None and ckpt\.identity != self\.identity:",
        "if False:",
        SESSION_TESTS,
    ),
    Bug(
        "session-history-unchecked",  # a metrics file with a gap resumed as if whole
        "sppo_bench/rundir.py",
        r"if steps != list\(range\(self\.first, last \+ 1\)\) or last < ckpt\.step:",
        "if False:",
        SESSION_TESTS,
    ),
    Bug(
        "llm-estimator-params-dropped",
        "sppo_bench/llm/trainer.py",
        r"\*\*self\.spec\.configured_params\(cfg\.algo\.estimator_params\),",
        "",
        LLM_TESTS,
    ),
    Bug(
        "control-collection-draws-misaligned",  # every step sampled with the first step's draws
        "sppo_bench/control/rollouts.py",
        r"uniforms\[:, t\]",
        "uniforms[:, 0]",
        (*STACK_TESTS, "tests/test_control_pipeline.py"),
    ),
    Bug(
        "collection-actor-stale",  # the parameters read once per trainer, not per collection
        "sppo_bench/control/rollouts.py",
        r"calls, actor = itertools\.count\(\), self\.policy\.actor\(\)",
        'calls, actor = itertools.count(), self.__dict__.setdefault("_a", self.policy.actor())',
        STACK_TESTS,
    ),
    Bug(
        "discrete-range-check-off-by-one",
        "sppo_bench/control/tasks.py",
        r"self\.start <= x < self\.start \+ self\.n",
        "self.start <= x <= self.start + self.n",
        ("tests/test_control_tasks.py",),
    ),
    Bug(
        "study-pools-experts",  # PPO-GAE of one expert compared with SPPO of every expert
        "sppo_bench/analysis/study.py",
        r"for column in STAGES:",
        "for column in STAGES[:0]:",
        ("tests/test_study.py",),
    ),
    Bug(
        "study-pools-warm-up",  # a warm-up arm compared with SPPO with and without warm-up
        "sppo_bench/analysis/study.py",
        r"for column in SETTINGS:",
        "for column in SETTINGS[:2]:",
        ("tests/test_study.py",),
    ),
    Bug(
        "sb3-unseeded-shuffle",  # the SB3 class's mini-batches drawn from torch's global stream
        "sppo_bench/sb3/algorithm.py",
        r"th\.randperm\(n_rows, generator=self\._shuffle\)",
        "th.randperm(n_rows)",
        ("tests/test_sb3.py",),
    ),
    Bug(
        "sb3-ent-coef-sign",
        "sppo_bench/sb3/algorithm.py",
        r"\+ self\.ent_coef \* out\.entropy_loss",
        "- self.ent_coef * out.entropy_loss",
        ("tests/test_sb3.py",),
    ),
)


def copy_project(dest: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for name in COPIED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        else:
            shutil.copy2(src, dest / name)


def apply(bug: Bug, root: Path) -> None:
    """Patch the copy under ``root``; exit loudly unless the pattern matches exactly once."""
    path = root / bug.path
    text = path.read_text()
    new, count = re.subn(bug.pattern, bug.replacement, text)
    if count != 1:
        sys.exit(
            f"inject_bugs: the patch for {bug.name!r} matches {count} times in {bug.path} "
            f"(pattern {bug.pattern!r}); update it to the current code"
        )
    path.write_text(new)


def run_tests(root: Path, tests: tuple[str, ...]) -> tuple[int, list[str], float]:
    """(exit code, failed test ids, seconds) of pytest on ``tests`` in the copy at ``root``."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-rf", "-p", "no:cacheprovider", *tests]
    start = time.time()
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    failed = re.findall(r"^FAILED (\S+)", proc.stdout, flags=re.M)
    return proc.returncode, failed, time.time() - start


def summarize(failed: list[str]) -> str:
    """``test_a[x], test_a[y], test_b`` -> ``test_a (2), test_b (1)``, in order of appearance."""
    counts: dict[str, int] = {}
    for test_id in failed:
        name = test_id.split("::", 1)[-1].split("[", 1)[0]
        counts[name] = counts.get(name, 0) + 1
    return ", ".join(f"{name} ({n})" for name, n in counts.items())


def check(bug: Bug | None, full: bool, tests: tuple[str, ...] = ()) -> tuple[int, list[str], float]:
    """Run ``bug``'s tests (or ``tests``; all with ``full``) on a patched copy (None: unpatched)."""
    with tempfile.TemporaryDirectory(prefix="inject_bugs_") as tmp:
        root = Path(tmp)
        copy_project(root)
        if bug is not None:
            apply(bug, root)
        return run_tests(root, () if full else (bug.tests if bug else tests))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="run the whole fast suite per bug")
    parser.add_argument("--only", nargs="*", help="bug names (default: all)")
    args = parser.parse_args()
    unknown = sorted(set(args.only or ()) - {b.name for b in BUGS})
    if unknown:
        sys.exit(
            f"inject_bugs: unknown bug {unknown[0]!r}; valid: {', '.join(b.name for b in BUGS)}"
        )
    bugs = [b for b in BUGS if not args.only or b.name in args.only]
    with tempfile.TemporaryDirectory() as tmp:  # every patch must apply before anything runs
        copy_project(Path(tmp))
        for bug in bugs:
            apply(bug, Path(tmp))
    chosen = tuple(dict.fromkeys(t for b in bugs for t in b.tests))  # the selected bugs' tests
    code, failed, seconds = check(None, args.full, chosen)
    if code != 0:
        sys.exit(f"inject_bugs: the unpatched tests fail ({', '.join(failed)}); fix them first")
    print(f"unpatched: all pass ({seconds:.0f} s)")
    print("| bug | result | failed tests |\n|---|---|---|")
    missed = 0
    for bug in bugs:
        code, failed, seconds = check(bug, args.full)
        if code not in (0, 1):  # not a test failure: the patched copy does not even run
            sys.exit(f"inject_bugs: the patch for {bug.name!r} breaks pytest (exit {code})")
        caught = code == 1 and bool(failed)
        missed += not caught
        names = summarize(failed)
        verdict = f"caught ({len(failed)} failed, {seconds:.0f} s)" if caught else "NOT caught"
        print(f"| {bug.name} | {verdict} | {names if caught else ''} |", flush=True)
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
