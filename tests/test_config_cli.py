"""Typed configs from YAML with overrides, and the CLI's one-line errors."""

from dataclasses import dataclass, field
from typing import Literal

import pytest

from sppo_bench.cli import main
from sppo_bench.config import load_config
from sppo_bench.errors import UserError


@dataclass
class Optim:
    lr: float = 3e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class Run:
    algo: Literal["sppo", "grpo"] = "sppo"
    seed: int = 0
    note: str | None = None
    optim: Optim = field(default_factory=Optim)


def test_defaults_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 3\noptim:\n  lr: 1\n")
    cfg = load_config(Run, path, ["optim.lr=1e-5", "algo=grpo", "note=hi"])
    assert cfg.seed == 3 and cfg.algo == "grpo" and cfg.note == "hi"
    assert cfg.optim.lr == 1e-5 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.betas == [0.9, 0.999]


@pytest.mark.parametrize(
    "yaml_text, overrides, message",
    [
        ("sed: 1\n", [], r"unknown config key 'sed'.*valid: algo, seed, note, optim"),
        ("", ["optim.lrr=1"], r"'lrr' is not in optim.*valid: lr, betas"),
        ("", ["seed=abc"], r"'seed' must be an integer"),
        ("", ["algo=ppo"], r"'algo' is 'ppo'; valid: sppo, grpo"),
        ("", ["seed"], r"not of the form key=value"),
        ("optim: 3\n", [], r"section 'optim' must be a mapping"),
        ("seed: [1\n", [], r"not valid YAML at line"),
    ],
)
def test_bad_configs_give_one_line_errors(tmp_path, yaml_text, overrides, message):
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    with pytest.raises(UserError, match=message) as info:
        load_config(Run, path, overrides)
    assert "\n" not in str(info.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_config(Run, tmp_path / "nope.yaml")


def test_cli_lists_estimators(capsys):
    assert main(["estimators"]) == 0
    out = capsys.readouterr().out
    names = [line.split()[0] for line in out.splitlines()[1:]]
    assert names == ["sppo", "ppo-gae", "ppo-bce", "grpo", "rloo", "remax", "reinforce"]
    assert "gae,ppo" in out.splitlines()[2]  # the aliases of ppo-gae


def test_cli_unknown_command_exits_nonzero(capsys):
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2


def test_renamed_llm_keys_keep_working(tmp_path):
    from sppo_bench.llm.recipe import LLMConfig

    path = tmp_path / "r.yaml"
    path.write_text("algo: {name: grpo, grpo_normalize_std: false, gamma: 0.9}\n")
    cfg = load_config(LLMConfig, path, ["algo.lam=0.5", "algo.estimator_params.gae.gamma=0.8"])
    assert cfg.algo.estimator_params == {
        "grpo": {"normalize_std": False},
        "gae": {"gamma": 0.8, "lam": 0.5},  # the new key wins over the old one
    }


def test_one_ppo_config_with_the_same_names_in_both_tracks(tmp_path):
    from dataclasses import fields

    from sppo_bench.control.spec import RLConfig, load_spec, upgrade_stored_rl
    from sppo_bench.core.ppo import PPOConfig
    from sppo_bench.llm.recipe import AlgoConfig, LLMConfig

    shared = {f.name for f in fields(PPOConfig)}
    assert shared <= {f.name for f in fields(RLConfig)} and shared <= {
        f.name for f in fields(AlgoConfig)
    }
    path = tmp_path / "r.yaml"
    path.write_text("actor: {lr: 2.0e-6, grad_clip: 0.5}\ntrain: {mini_batch_size: 8}\n")
    cfg = load_config(LLMConfig, path, ["train.ppo_epochs=2", "critic.lr=3e-6"])
    assert (cfg.algo.lr, cfg.algo.max_grad_norm, cfg.algo.mini_batch_size) == (2e-6, 0.5, 8)
    assert (cfg.algo.epochs, cfg.algo.critic_lr) == (2, 3e-6)
    assert load_spec("cartpole", ["rl.ent_coef=0.01"]).rl.entropy_coef == 0.01
    with pytest.raises(UserError, match="'rl.minibatches' .* is now 'rl.mini_batch_size'") as info:
        load_spec("cartpole", ["rl.minibatches=2"])
    assert "\n" not in str(info.value)
    stored = {"trajectories_per_update": 64, "minibatches": 4, "ent_coef": 0.0}
    assert upgrade_stored_rl(stored) == {
        "trajectories_per_update": 64,
        "mini_batch_size": 16,  # the same pieces as 4 mini-batches of 64 episodes
        "entropy_coef": 0.0,
        "compute_dtype": "float32",  # runs from before the key computed in fp32
    }
