"""The GPU-server guards around the verl plugin, against the real verl 0.9.1 (``.venv-verl``):
the launch scripts refuse a broken install before Ray starts, the critic token limit is the one
verl's trainer reads, and the SPPO step logs the critic's V at the read position."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip(
    "verl.trainer.ppo.core_algos",
    reason="verl 0.9.1 is not installed here; `.ci/run` builds .venv-verl and runs these there",
)

import torch  # noqa: E402
from test_verl_plugin import (  # noqa: E402
    padded,
    rollout_batch,
    run_compute_advantage,
    tiny_local_model,
    verl_config,
)
from verl.trainer.ppo.v1.trainer_base import PPOTrainer  # noqa: E402
from verl.utils.config import omega_conf_to_dataclass  # noqa: E402

from sppo_bench.verl_plugin import SPPOTrainerSync, value_metrics  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "llm" / "verl" / "sppo_r1_distill_1.5b.sh"
# a site hook that makes the plugin fail to import, as a broken install would (verl logs that at
# DEBUG level only and goes on with upstream's trainer)
BREAK_PLUGIN = """
import importlib.abc, sys
class _Broken(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "sppo_bench.verl_plugin":
            raise ImportError("simulated broken install")
sys.meta_path.insert(0, _Broken())
"""


def _env(tmp_path: Path, broken: bool = False, **extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONWARNINGS": "ignore", **extra}
    if broken:
        (tmp_path / "sitecustomize.py").write_text(BREAK_PLUGIN)
        env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    return env


def _check(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sppo_bench.verl_check"],
        capture_output=True, text=True, env=env, timeout=300, cwd=REPO,
    )  # fmt: skip


def test_check_passes_where_the_plugin_is_registered(tmp_path):
    done = _check(_env(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1].startswith("verl_check: ok (verl 0.9.1")


@pytest.mark.parametrize(
    ("broken", "extra", "message"),
    [
        (True, {}, "verl could not load sppo_bench.verl_plugin (ImportError: simulated broken"),
        (False, {"VERL_USE_EXTERNAL_PLUGINS": "none"}, "VERL_USE_EXTERNAL_PLUGINS=none keeps"),
        (False, {"VERL_USE_EXTERNAL_PLUGINS": "other"}, "unset it or add sppo to it"),
    ],
)
def test_check_refuses_in_one_line(tmp_path, broken, extra, message):
    done = _check(_env(tmp_path, broken, **extra))
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1 and message in done.stderr


def test_upstream_trainer_alone_is_what_the_check_sees_without_the_plugin(tmp_path):
    """With the plugin broken, verl itself still imports and its own sync trainer stays
    registered: a launch would have started. The check is what stops it."""
    code = (
        "import verl\n"
        "from verl.trainer.ppo.v1 import get_trainer_cls\n"
        "from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY as R\n"
        "print(get_trainer_cls('sync').__name__, 'sppo' in R)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True,
        env=_env(tmp_path, broken=True), timeout=300, cwd=REPO,
    )  # fmt: skip
    assert done.stdout.strip().splitlines()[-1] == "PPOTrainerSync False"


def test_launch_script_refuses_before_composing_anything(tmp_path):
    model = str(tiny_local_model(tmp_path / "model"))
    env = _env(tmp_path, broken=True, POLICY=model, CRITIC=model)
    done = subprocess.run(
        ["bash", str(SCRIPT), "--cfg", "job"], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 1
    assert done.stdout == ""  # Hydra never ran: no config printed, no Ray
    assert done.stderr.strip().splitlines() == [
        "verl_check: verl could not load sppo_bench.verl_plugin "
        "(ImportError: simulated broken install)"
    ]


def test_critic_token_limit_is_the_one_verls_trainer_reads(tmp_path):
    """verl 0.9.1's v1 trainer sizes the critic engine's micro-batches from
    ``critic.ppo_infer_max_token_len_per_gpu``; the field is not in verl's YAML, so the
    scripts add it with ``++``, and it reaches the critic's config dataclass."""
    source = inspect.getsource(PPOTrainer)
    for field in ("infer_max_token_len_per_gpu", "max_token_len_per_gpu"):
        assert f"critic_cfg.engine.{field} = critic_cfg.ppo_infer_max_token_len_per_gpu" in source
    assert "critic_cfg.ppo_max_token_len_per_gpu" not in source
    model = tiny_local_model(tmp_path / "model")
    paths = (f"actor_rollout_ref.model.path={model}", f"critic.model.path={model}")
    paths += ("critic.use_dynamic_bsz=True",)  # as the scripts run it
    config = verl_config(*paths, "++critic.ppo_infer_max_token_len_per_gpu=36864")
    assert omega_conf_to_dataclass(config.critic).ppo_infer_max_token_len_per_gpu == 36864
    default = omega_conf_to_dataclass(verl_config(*paths).critic)
    assert default.ppo_infer_max_token_len_per_gpu == 32768
    text = (REPO / "llm" / "verl" / "sppo_verl.sh").read_text()
    assert "++critic.ppo_infer_max_token_len_per_gpu=$CRITIC_TOKENS" in text
    assert "critic.ppo_max_token_len_per_gpu=" not in text  # ignored by the v1 trainer


@pytest.mark.parametrize("seed", range(3))
def test_sppo_step_logs_v_at_the_read_position_and_its_brier_score(seed, monkeypatch):
    store, truth = rollout_batch(seed)
    keys = truth["keys"]
    config = verl_config("algorithm.adv_estimator=sppo", "critic.enable=True")
    metrics: dict[str, float] = {"timing_s/gen": 1.0}
    run_compute_advantage(SPPOTrainerSync, config, store, keys, monkeypatch, metrics)
    v = torch.sigmoid(truth["prompt_logit"])
    r = truth["reward"]
    assert metrics["timing_s/gen"] == 1.0  # the step's other metrics are kept
    assert metrics["value/mean"] == pytest.approx(float(v.mean()), abs=1e-6)
    assert metrics["value/brier"] == pytest.approx(float(((v - r) ** 2).mean()), abs=1e-6)
    # the same numbers as value_metrics on the padded batch's read position
    assert value_metrics(truth["prompt_logit"], r) == pytest.approx(
        {"value/mean": metrics["value/mean"], "value/brier": metrics["value/brier"]}
    )
    assert padded(store.get(keys, "advantages")).shape[0] == len(keys)


def test_value_metrics_are_analytic():
    logits = torch.tensor([0.0, 0.0, float("inf"), -float("inf")])
    outcomes = torch.tensor([1.0, 0.0, 1.0, 1.0])
    # V = 0.5, 0.5, 1, 0: mean 0.5; squared errors 0.25, 0.25, 0, 1: Brier 0.375
    assert value_metrics(logits, outcomes) == {"value/mean": 0.5, "value/brier": 0.375}


def test_other_estimators_log_no_value_metrics(monkeypatch):
    store, truth = rollout_batch(1)
    config = verl_config("algorithm.adv_estimator=grpo")
    metrics: dict[str, float] = {}
    run_compute_advantage(SPPOTrainerSync, config, store, truth["keys"], monkeypatch, metrics)
    assert not any(k.startswith("value/") for k in metrics)
