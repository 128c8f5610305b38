"""The shipped LLM recipes: every one loads and resolves for every estimator, and the CPU smoke
recipe trains and evaluates in a folder that holds only the project's ``llm/`` directory (a fresh
clone without the shared evaluation data beside it)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sppo_bench.config import load_config
from sppo_bench.core import valid_estimator_names
from sppo_bench.errors import UserError
from sppo_bench.llm.recipe import LLMConfig, resolve_algorithm_defaults

LLM = Path(__file__).resolve().parents[1] / "llm"
RECIPES = sorted(LLM.glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_resolves_for_every_estimator(recipe):
    for algo in ("sppo", "ppo-gae", "ppo-bce", "grpo", "rloo", "remax", "reinforce"):
        assert algo in valid_estimator_names()
        cfg = resolve_algorithm_defaults(load_config(LLMConfig, recipe, [f"algo.name={algo}"]))
        assert cfg.algo.n_samples >= 1


def test_tiny_cpu_recipe_runs_in_a_fresh_folder(tmp_path):
    shutil.copytree(LLM, tmp_path / "llm")
    run = [sys.executable, "-m", "sppo_bench.cli", "llm"]
    recipe = ["--recipe", "llm/tiny-cpu.yaml"]
    steps = ["--set", "train.steps=1", "--set", "train.save_every=1"]
    done = subprocess.run(
        [*run, "train", *recipe, *steps], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-800:]
    rows = (tmp_path / "runs/tiny-cpu/sppo/metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == [1]
    done = subprocess.run(
        [*run, "evaluate", *recipe, "--checkpoint", "runs/tiny-cpu/sppo"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-800:]
    assert list((tmp_path / "runs/tiny-cpu-eval").rglob("*.json*"))


@pytest.mark.parametrize("algo", ["sppo", "ppo-bce"])
def test_bce_critics_refuse_an_in_reward_kl(algo):
    """A BCE critic's target is the outcome R in {0, 1}; an in-reward KL would move it."""
    recipe = LLM / "tiny-cpu.yaml"
    with pytest.raises(UserError, match="trains its critic with BCE"):
        resolve_algorithm_defaults(
            load_config(LLMConfig, recipe, [f"algo.name={algo}", "algo.kl_coef=0.01"])
        )
    cfg = resolve_algorithm_defaults(load_config(LLMConfig, recipe, ["algo.name=ppo-gae"]))
    assert cfg.algo.kl_coef == 0.0
    bce = resolve_algorithm_defaults(load_config(LLMConfig, None, ["algo.name=ppo-bce"]))
    assert (bce.algo.critic_lr, bce.critic.warmup_steps) == (1e-5, 50)  # as the PPO baseline


@pytest.mark.parametrize("recipe", sorted(LLM.glob("r1-distill-*.yaml")), ids=lambda p: p.stem)
def test_gpu_recipes_default_to_public_hub_sets(recipe):
    """Nothing a user runs reads the development layout's shared data: the training set and the
    five evaluation sets are public Hub ids with a field mapping for the recipe's dataset."""
    from sppo_bench.llm.data import EVAL_SETS, HUB_SETS

    assert "shared/" not in recipe.read_text()
    cfg = load_config(LLMConfig, recipe, [])
    assert HUB_SETS[cfg.data.train].dataset == cfg.data.dataset
    assert HUB_SETS[cfg.data.train].split == cfg.data.split
    assert list(cfg.eval.sets) == list(EVAL_SETS)


def test_verl_scripts_read_no_shared_data():
    for script in (LLM / "verl").glob("*.sh"):
        assert "shared/" not in script.read_text(), script.name
