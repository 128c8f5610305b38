"""The CPU toy task: generator, worked solutions through the real verifier, splits, warm start,
and the report's arithmetic (who reached what, when)."""

import re

import pandas as pd
import pytest
import torch

from sppo_bench.analysis.toy_report import calibration_stats, summary_table
from sppo_bench.errors import UserError
from sppo_bench.llm.data import build_prompt, load_problems
from sppo_bench.llm.models import SequenceCritic
from sppo_bench.llm.recipe import LLMConfig, ModelConfig, resolve_algorithm_defaults
from sppo_bench.llm.tiny import tiny_model, tiny_tokenizer
from sppo_bench.llm.toy.task import (
    MAX_VALUE,
    SPLITS,
    Chain,
    WarmStartConfig,
    build_warm_start,
    evaluate_expression,
    sft_batch,
    sft_step,
    split_chains,
)
from sppo_bench.llm.verifier import Verifier
from sppo_bench.llm.warm_start import initial_policy_state, load_initial_weights

LINE = re.compile(r"^(\d+)([+\-*])(\d+)=(\d+)$")


def test_chain_expression_needs_parentheses_only_before_a_product():
    chain = Chain(7, (("+", 5), ("*", 3), ("-", 8)))
    assert chain.expression() == "(7+5)*3-8"
    assert chain.solution() == "7+5=12\n12*3=36\n36-8=28\n\\boxed{28}"
    assert Chain(2, (("*", 3), ("*", 4), ("+", 1))).expression() == "2*3*4+1"
    assert Chain(9, (("-", 2), ("-", 3))).expression() == "9-2-3"  # left-associative: 4


def test_worked_solutions_are_correct_step_by_step_and_splits_are_disjoint():
    seen: dict[str, str] = {}
    for split in SPLITS:
        chains = split_chains(split)
        assert len(chains) == SPLITS[split][1]
        for c in chains:
            question = c.expression()
            assert question not in seen, f"{question} in {seen.get(question)} and {split}"
            seen[question] = split
            assert evaluate_expression(question) == c.answer
            *lines, boxed = c.solution().split("\n")
            assert 2 <= len(lines) <= 4 and boxed == f"\\boxed{{{c.answer}}}"
            value = c.start
            for line in lines:
                x, op, b, y = LINE.match(line).groups()
                assert int(x) == value and evaluate_expression(f"{x}{op}{b}") == int(y)
                assert 0 <= int(y) <= MAX_VALUE and 1 <= int(b) <= 9
                value = int(y)
    assert split_chains("test") == split_chains("test")  # deterministic (and cached)


def test_problems_load_through_data_and_reject_bad_input():
    test = load_problems("toy:arithmetic/test", limit=5)
    assert [p.id for p in test] == [f"toy:arithmetic/test/{i}" for i in range(5)]
    assert all(str(evaluate_expression(p.question)) == p.answer for p in test)
    train = load_problems("toy:arithmetic", split="train")
    assert len(train) == SPLITS["train"][1]
    with pytest.raises(UserError, match="valid: test, valid, train, sft"):
        load_problems("toy:arithmetic/nope")
    with pytest.raises(UserError, match="unknown toy task"):
        load_problems("toy:geometry")
    for bad in ("2**3", "__import__('os')", "2/1", "1.5+1", "(1+"):
        with pytest.raises(UserError, match="integer expression"):
            evaluate_expression(bad)


def test_worked_solutions_verify_through_the_real_verifier():
    chains = [c for split in ("test", "train") for c in split_chains(split)[:12]]
    responses = [c.solution() for c in chains]
    golds = [str(c.answer) for c in chains]
    wrong = [c.solution().replace(f"{{{c.answer}}}", f"{{{c.answer + 1}}}") for c in chains[:4]]
    with Verifier(num_workers=1) as verifier:
        assert verifier.score_batch(responses, golds) == [1.0] * len(chains)
        assert verifier.score_batch(wrong, golds[:4]) == [0.0] * 4


def test_sft_masks_the_prompt_and_a_few_steps_lower_the_loss():
    torch.manual_seed(0)
    tok = tiny_tokenizer()
    chains = split_chains("sft")[:8]
    prompts = [build_prompt(tok, c.expression()) for c in chains]
    batch = sft_batch(tok, prompts, [c.solution() for c in chains])
    first_prompt = len(tok(prompts[0], add_special_tokens=False)["input_ids"])
    assert (batch["labels"][0, :first_prompt] == -100).all()
    n_response = len(tok(chains[0].solution(), add_special_tokens=False)["input_ids"]) + 1
    assert int((batch["labels"][0] != -100).sum()) == n_response  # response + eos
    model = tiny_model("xs", tok)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = [sft_step(model, optimizer, batch) for _ in range(8)]
    assert losses[-1] < losses[0] - 0.5


def test_warm_start_file_is_built_once_and_loads_into_policy_and_critic(tmp_path):
    torch.set_num_threads(1)
    path = tmp_path / "warm.pt"
    cfg = WarmStartConfig(max_steps=2, batch_size=4, check_every=1, max_new_tokens=4)
    info = build_warm_start("tiny:xs", path, cfg, progress=False)
    assert info["steps"] == 2 and 0.0 <= info["valid_accuracy"] <= 1.0
    state = initial_policy_state("tiny:xs", str(path), None)  # exists: no builder needed
    recipe = resolve_algorithm_defaults(
        LLMConfig(model=ModelConfig(policy="tiny:xs", init=str(path)))
    )
    tok = tiny_tokenizer()
    policy = tiny_model("xs", tok, seed=5)
    critic = SequenceCritic(tiny_model("xs", tok, seed=6).model)
    load_initial_weights(recipe, policy, critic)
    for name, p in policy.named_parameters():
        assert torch.equal(p, state[name])
    for name, p in critic.backbone.named_parameters():
        assert torch.equal(p, state[f"model.{name}"])
    assert float(critic.head.weight.detach().abs().sum()) == 0.0
    with pytest.raises(UserError, match="init_builder is null"):
        initial_policy_state("tiny:xs", str(tmp_path / "missing.pt"), None)
    with pytest.raises(UserError, match="valid: toy-arithmetic"):
        initial_policy_state("tiny:xs", str(tmp_path / "missing.pt"), "nope")


def _curve(points):
    return [
        {"step": i, "samples": s, "wall_s": w, "accuracy": a} for i, (s, w, a) in enumerate(points)
    ]


def test_summary_finds_first_reaching_points():
    curves = {
        ("grpo", 0): _curve([(0, 0, 0.2), (256, 10, 0.3), (512, 20, 0.5), (768, 30, 0.4)]),
        ("sppo", 0): _curve([(0, 0, 0.2), (256, 3, 0.5), (512, 6, 0.6), (768, 9, 0.55)]),
        ("ppo-gae", 0): _curve([(0, 0, 0.2), (256, 4, 0.25)]),
    }
    table = summary_table(curves).set_index("method")
    assert table.loc["grpo", "best_acc"] == pytest.approx(50.0)
    assert table.loc["grpo", "samples_to_best"] == 512
    assert table.loc["sppo", "samples_to_grpo_best"] == 256
    assert table.loc["sppo", "wall_s_to_grpo_best"] == 3
    assert table.loc["sppo", "final_acc"] == pytest.approx(55.0)
    assert pd.isna(table.loc["ppo-gae", "samples_to_grpo_best"])
    rows = [{"value": v, "success": s, "k": 4} for v, s in [(0.1, 0.0), (0.5, 0.5), (0.9, 1.0)]]
    st = calibration_stats(rows)
    assert st["spearman"] == pytest.approx(1.0) and st["pearson"] > 0.99


def test_actor_lr_warms_up_linearly_then_stays():
    from types import SimpleNamespace

    from sppo_bench.llm.recipe import AlgoConfig, OptimConfig
    from sppo_bench.llm.trainer import LLMTrainer

    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    algo = AlgoConfig(lr=0.4)
    stub = SimpleNamespace(cfg=SimpleNamespace(actor=OptimConfig(warmup_steps=4), algo=algo))
    stub.actor_opt = opt
    seen = []
    for k in range(6):
        LLMTrainer._set_actor_lr(stub, k)
        seen.append(opt.param_groups[0]["lr"])
    assert seen == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.4, 0.4])
    stub.cfg.actor = OptimConfig(warmup_steps=0)
    LLMTrainer._set_actor_lr(stub, 0)
    assert opt.param_groups[0]["lr"] == 0.4
