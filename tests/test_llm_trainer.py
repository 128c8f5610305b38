"""The LLM trainer end to end on the tiny random-weight model (nothing downloaded), with real
generation, the real verifier, critic and policy updates, checkpoints and resume; and the CLI."""

import json

import pytest
import torch
from tiny_llm import tiny_config

from sppo_bench.cli import main
from sppo_bench.llm.data import build_prompt
from sppo_bench.llm.recipe import LLMConfig
from sppo_bench.llm.tiny import tiny_tokenizer
from sppo_bench.llm.trainer import LLMTrainer

TIMING = (
    "tokens_per_s",
    "time_generation",
    "time_reward",
    "time_critic",
    "time_update",
    "time_weight_sync",
    "time_step",
)


def _config(algo: str, steps: int, *extra: str) -> LLMConfig:
    return tiny_config(
        algo,
        "rollout.max_new_tokens=12",
        f"train.steps={steps}",
        "train.batch_size=4",
        "algo.mini_batch_size=2",
        "train.micro_batch_size=3",
        "train.save_every=1",
        "algo.lr=1e-3",
        "algo.critic_lr=1e-3",
        *extra,
    )


def _problems():
    tok = tiny_tokenizer()
    pairs = [(a, b) for a in range(1, 4) for b in range(1, 4)]
    return [build_prompt(tok, f"{a}+{b}=?") for a, b in pairs], [str(a + b) for a, b in pairs]


def _train(cfg, run_dir, **kw):
    torch.set_num_threads(1)
    prompts, golds = _problems()
    trainer = LLMTrainer(cfg, run_dir, prompts=prompts, golds=golds, **kw)
    try:
        params = [p.detach().clone() for p in trainer.policy.parameters()]
        rows = trainer.train(progress=False)
        changed = any(
            not torch.equal(a, b) for a, b in zip(params, trainer.policy.parameters(), strict=True)
        )
        return rows, changed, trainer
    finally:
        trainer.close()


def _strip(row):
    return {k: v for k, v in row.items() if k not in TIMING}


@pytest.mark.parametrize("algo, extra", [("sppo", ()), ("grpo", ("algo.n_samples=4",))])
def test_train_checkpoint_and_resume_reproduce_an_uninterrupted_run(tmp_path, algo, extra):
    straight, changed, trainer = _train(_config(algo, 3, *extra), tmp_path / "a")
    assert [r["step"] for r in straight] == [1, 2, 3]
    assert (tmp_path / "a" / "done").exists() and (
        tmp_path / "a" / "checkpoints" / "latest.pt"
    ).exists()
    row = straight[0]
    for key in (
        "reward_mean",
        "response_length_mean",
        "losses/approx_kl",
        "losses/clipfrac",
        "losses/entropy",
        "verifier_scored",
        "verifier_timeouts",
        "verifier_parse_failures",
        *TIMING,
    ):
        assert key in row, key
    rows_per_step = 4 if algo == "sppo" else 16
    assert row["verifier_scored"] == rows_per_step
    # the mean of rows_per_step binary rewards
    assert all(0 <= r["reward_mean"] <= 1 for r in straight)
    assert all(float(r["reward_mean"] * rows_per_step).is_integer() for r in straight)
    if algo == "sppo":
        # the critic starts at V = 0.5 and learns; the advantage R - V is non-zero, so the
        # policy moves
        assert row["value/mean"] == pytest.approx(0.5)
        assert row["value/brier"] == pytest.approx(0.25)  # (0.5 - R)^2 for R in {0, 1}
        assert straight[-1]["value/brier"] != row["value/brier"] and "losses/value" in row
        assert changed
    assert row["rollout_log_prob_gap"] < 1e-4

    # an interrupted run (2 of 3 steps) resumed from its checkpoint continues exactly
    _train(_config(algo, 2, *extra), tmp_path / "b")
    resumed, _, _ = _train(_config(algo, 3, *extra), tmp_path / "b")
    assert [r["step"] for r in resumed] == [3]
    assert _strip(resumed[0]) == pytest.approx(_strip(straight[2]), rel=1e-5, abs=1e-6)
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3]


@pytest.mark.parametrize("algo", ["ppo-gae", "ppo-bce", "rloo", "remax", "reinforce"])
def test_every_estimator_runs_a_step(tmp_path, algo):
    def digits(texts, golds):  # a dense stand-in reward so that every advantage is non-trivial
        return [float(any(c.isdigit() for c in t)) for t in texts]

    extra = ("critic.warmup_steps=0",) if algo == "ppo-bce" else ()  # its paper default is 50
    rows, changed, trainer = _train(_config(algo, 1, *extra), tmp_path, reward_fn=digits)
    row = rows[0]
    assert all(v == v for v in row.values())  # no NaN
    samples = {"ppo-gae": 1, "ppo-bce": 1, "rloo": 5, "remax": 1, "reinforce": 1}
    assert trainer.cfg.algo.n_samples == samples[algo]
    assert changed  # the dense reward gives non-zero advantages: the policy moves
    if algo in ("rloo", "remax"):
        assert "kl_ref" in row and trainer.cfg.algo.kl_coef == 0.001
    if algo in ("ppo-gae", "ppo-bce"):
        assert "losses/value" in row and trainer.critic is not None


def test_cli_train_then_evaluate(tmp_path, capsys):
    data = tmp_path / "toy_gsm8k.jsonl"
    data.write_text(
        "".join(
            json.dumps({"question": f"{a}+{a}=?", "answer": f"#### {2 * a}"}) + "\n"
            for a in range(6)
        )
    )
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "model: {policy: 'tiny:xs', gradient_checkpointing: false}\n"
        f"data: {{train: '{data}', dataset: gsm8k}}\n"
        "rollout: {engine: hf, max_new_tokens: 8}\n"
        "train: {steps: 1, batch_size: 2, mini_batch_size: 2, device: cpu, reward_workers: 1}\n"
        f"eval: {{sets: ['{data}'], k: 2, limit: 3, max_new_tokens: 8}}\n"
    )
    run = tmp_path / "run"
    assert main(["llm", "train", "--recipe", str(recipe), "--run-dir", str(run)]) == 0
    assert (run / "done").exists()
    assert main(["llm", "train", "--recipe", str(recipe), "--run-dir", str(run)]) == 0
    assert "nothing to do" in capsys.readouterr().out
    out = tmp_path / "eval"
    assert (
        main(
            [
                "llm",
                "evaluate",
                "--recipe",
                str(recipe),
                "--checkpoint",
                str(run),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["gsm8k"]["k"] == 2 and summary["gsm8k"]["problems"] == 3
    assert len((out / "gsm8k.jsonl").read_text().splitlines()) == 3
    assert main(["llm", "train", "--recipe", str(recipe), "--algo", "nope"]) == 2
    assert "valid:" in capsys.readouterr().err
