"""``sppo-bench llm train --recipe llm/tiny-cpu.yaml --set rollout.engine=vllm`` end to end on
vLLM's CPU backend, for every registered estimator, and a run killed mid-way that resumes.

The recipe's policy becomes ``tiny:m`` (vLLM's CPU attention refuses ``tiny:s``'s head_dim 16);
2 prompts per step, prompts up to 256 tokens, 16 new tokens, to keep the stage short.
Critic warm-up is 0, so every step updates the policy and syncs it into vLLM; the step's
``rollout_log_prob_gap`` (mean |vLLM's log-prob - the trainer's recomputation|) therefore checks,
at step 2, that vLLM sampled from the weights of step 1's update.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, TOLERANCE

from sppo_bench.cli import main
from sppo_bench.core import algorithm_names

VLLM_TINY = [
    "--recipe",
    "llm/tiny-cpu.yaml",
    "--set",
    "rollout.engine=vllm",
    "--set",
    "model.policy=tiny:m",
    "--set",
    "critic.warmup_steps=0",
    *("--set", "data.max_prompt_tokens=256", "--set", "rollout.max_new_tokens=16"),
    *("--set", "train.batch_size=2", "--set", "algo.mini_batch_size=2"),
]
TIMINGS = ("time_", "tokens_per_s")


def _rows(run_dir) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # the recipe's data paths are relative to the repository root


@pytest.mark.parametrize("algo", algorithm_names())
def test_every_estimator_trains_on_vllm(algo, tmp_path):
    run_dir = tmp_path / algo
    args = ["llm", "train", *VLLM_TINY, "--algo", algo, "--run-dir", str(run_dir)]
    assert main([*args, "--set", "train.steps=2"]) == 0
    rows = _rows(run_dir)
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        assert row["time_weight_sync"] > 0  # every step updated the policy and synced it
        assert row["rollout_log_prob_gap"] < TOLERANCE  # vLLM sampled from the trainer's policy
        assert 0.0 <= row["truncated_fraction"] <= 1.0
    assert (run_dir / "done").exists()


def test_a_killed_run_resumes_like_an_uninterrupted_one(tmp_path):
    """Kill (SIGKILL) a 6-step run once step 3's row is written (checkpoint at step 2), rerun it,
    and compare with an uninterrupted run. Everything but the timings matches: the resumed run
    restores the checkpoint's torch RNG state, from which the engine draws each generation's
    vLLM seed, and each sync resets vLLM's prefix cache, so step 3 is sampled again with the same
    seed from the same weights. The timings (``time_*``, ``tokens_per_s``) differ: they are wall
    clock. The float metrics are compared to 1e-5 (the killed run's process may use another
    number of threads, so the last bits of a reduction may differ)."""
    common = ["llm", "train", *VLLM_TINY, "--set", "train.steps=6", "--set", "train.save_every=2"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert main([*common, "--run-dir", str(whole)]) == 0

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "sppo_bench.cli", *common, "--run-dir", str(cut)]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while len(_rows(cut)) < 3 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert 3 <= len(_rows(cut)) < 6 and not (cut / "done").exists()

    assert main([*common, "--run-dir", str(cut)]) == 0
    resumed, reference = _rows(cut), _rows(whole)
    assert [r["step"] for r in resumed] == list(range(1, 7))
    for got, want in zip(resumed, reference, strict=True):
        assert got.keys() == want.keys()
        for key, value in want.items():
            if key.startswith(TIMINGS):
                continue
            if value is None:  # undefined in both (e.g. explained variance of equal rewards)
                assert got[key] is None, (got["step"], key)
            else:
                assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-6), (got["step"], key)
