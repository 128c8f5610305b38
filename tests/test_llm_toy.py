"""The CPU toy task: generator, worked solutions through the real verifier, splits, warm start,
and the report's arithmetic (who reached what, when)."""

import ast
import importlib.util
import json
import operator
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from sppo_bench.analysis.stats import mean_ci_over_runs
from sppo_bench.analysis.toy_critic import calibration_over_seeds, calibration_stats
from sppo_bench.analysis.toy_report import (
    mean_curves,
    policy_updates,
    seed_markdown,
    seed_summary,
    summary_table,
    threshold_accuracy,
)
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
    sft_batch,
    sft_step,
    split_chains,
)
from sppo_bench.llm.verifier import Verifier
from sppo_bench.llm.warm_start import initial_policy_state, load_initial_weights


def evaluate_expression(text: str) -> int:
    """The integer value of an expression of integers, ``+ - *`` and parentheses (nothing
    else): an oracle independent of the generator's own answers."""

    def walk(node: ast.AST) -> int:
        if isinstance(node, ast.BinOp) and type(node.op) in _AST_OPS:
            return _AST_OPS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        raise UserError(f"not a +-* integer expression: {text!r}")

    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise UserError(f"not a +-* integer expression: {text!r}") from exc
    return walk(tree.body)


_AST_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


LINE = re.compile(r"^(\d+)([+\-*])(\d+)=(\d+)$")
ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("llm_toy", ROOT / "bench/llm_toy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


def _curve(points, updates_per_point=None):
    rows = [
        {"step": i, "samples": s, "wall_s": w, "accuracy": a} for i, (s, w, a) in enumerate(points)
    ]
    if updates_per_point is not None:
        for r in rows:
            r["updates"] = r["step"] * updates_per_point
    return rows


def test_summary_finds_first_reaching_points():
    curves = {
        ("grpo", 0): _curve([(0, 0, 0.2), (256, 10, 0.3), (512, 20, 0.5), (768, 30, 0.4)]),
        ("sppo", 0): _curve([(0, 0, 0.2), (256, 3, 0.5), (512, 6, 0.6), (768, 9, 0.55)]),
        ("ppo-gae", 0): _curve([(0, 0, 0.2), (256, 4, 0.25)]),
        ("grpo-eq-updates", 0): _curve([(0, 0, 0.2), (256, 5, 0.4), (512, 9, 0.5)], 2),
    }
    table = summary_table(curves).set_index("method")
    assert list(table.index) == ["sppo", "grpo", "grpo-eq-updates", "ppo-gae"]
    assert table.loc["grpo-eq-updates", "samples_to_grpo_best"] == 512  # every arm, not only SPPO
    assert table.loc["grpo-eq-updates", "updates_to_best"] == 4
    assert table.loc["grpo-eq-updates", "updates_total"] == 4
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


def test_policy_updates_count_mini_batches_after_the_critic_warm_up():
    # the full toy: SPPO 64 steps of 256 rows in 128-row mini-batches after 8 critic-only steps;
    # GRPO 8 steps of 2048 rows in 1024-row mini-batches; equal-updates GRPO 64 steps of 256 in 128
    assert policy_updates(64, 256, 128, 1, 8) == 112
    assert policy_updates(8, 2048, 1024, 1, 0) == 16
    assert policy_updates(64, 256, 128, 1, 0) == 128
    assert policy_updates(3, 300, 128, 2, 0) == 18  # the last mini-batch is shorter, still a step
    assert policy_updates(5, 256, 128, 1, 8) == 0  # still in the critic-only warm-up


def test_equal_updates_arm_matches_sppo_rows_per_step_and_per_update():
    bench = _bench()
    recipe = str(ROOT / "llm/toy-arithmetic.yaml")
    for extra, prompts, eq_mini in (([], 256, 16), (["--quick"], 32, 4)):
        args = bench.parse_args(["--recipe", recipe, *extra])
        base = bench.load_config(bench.LLMConfig, args.recipe, args.overrides)
        sppo, none = bench.arm_config(base, args, "sppo", 0)
        eq, overrides = bench.arm_config(base, args, "grpo-eq-updates", 3)
        grpo, _ = bench.arm_config(base, args, "grpo", 0)
        assert none == [] and sppo.train.batch_size == grpo.train.batch_size == prompts
        assert eq.algo.name == "grpo" and eq.algo.n_samples == 8 and eq.train.seed == 3
        assert overrides == [f"train.batch_size={prompts // 8}", f"algo.mini_batch_size={eq_mini}"]
        rows = lambda c: c.train.batch_size * c.algo.n_samples  # noqa: E731
        mini = lambda c: c.algo.mini_batch_size * c.algo.n_samples  # noqa: E731
        assert rows(eq) == rows(sppo) and mini(eq) == mini(sppo)
        assert rows(grpo) == 8 * rows(sppo)
    assert bench.arm_name(base, "gae") == "ppo-gae"
    assert bench.arm_name(base, "grpo-eq-updates") == "grpo-eq-updates"
    args = bench.parse_args(["--recipe", recipe, "--set", "train.batch_size=12"])
    args.overrides += ["algo.mini_batch_size=12"]
    base = bench.load_config(bench.LLMConfig, args.recipe, args.overrides)
    with pytest.raises(UserError, match="multiples of GRPO's N"):
        bench.arm_config(base, args, "grpo-eq-updates", 0)


def _seed_curves():
    """GRPO bests 0.30 / 0.40 / 0.50 (threshold 0.40); SPPO reaches 0.40 in seeds 0 and 1 only."""
    grid = (0, 256, 512, 768)
    accs = {
        ("grpo", 0): (0.2, 0.25, 0.30, 0.28),
        ("grpo", 1): (0.2, 0.40, 0.35, 0.30),
        ("grpo", 2): (0.2, 0.30, 0.50, 0.45),
        ("sppo", 0): (0.2, 0.40, 0.45, 0.44),
        ("sppo", 1): (0.2, 0.30, 0.41, 0.50),
        ("sppo", 2): (0.2, 0.30, 0.35, 0.39),
    }
    walls = {"grpo": 10.0, "sppo": 4.0}
    return {
        (arm, seed): _curve(
            [
                (x, walls[arm] * (i + seed), a)
                for i, (x, a) in enumerate(zip(grid, acc, strict=True))
            ],
            updates_per_point=2 if arm == "grpo" else 16,
        )
        for (arm, seed), acc in accs.items()
    }


def test_seed_summary_means_cis_and_threshold_over_reaching_runs():
    curves = _seed_curves()
    assert threshold_accuracy(curves) == pytest.approx(0.40)
    table = seed_summary(curves).set_index("method")
    assert list(table.index) == ["sppo", "grpo"]
    g, sp = table.loc["grpo"], table.loc["sppo"]
    assert g["runs"] == 3 and g["seeds"] == "0 1 2"
    assert g["best_acc"] == pytest.approx(40.0) and g["threshold_acc"] == pytest.approx(40.0)
    mean, lo, hi = mean_ci_over_runs(np.array([[30.0], [40.0], [50.0]]))  # the project's CI code
    assert (g["best_acc_lo"], g["best_acc_hi"]) == pytest.approx((lo[0], hi[0]))
    assert 30.0 <= g["best_acc_lo"] < 40.0 < g["best_acc_hi"] <= 50.0
    assert sp["final_acc"] == pytest.approx(100 * (0.44 + 0.50 + 0.39) / 3)
    assert g["updates_total"] == 6 and sp["updates_total"] == 48 and sp["samples_total"] == 768
    # GRPO itself: seed 1 at 256 responses, seed 2 at 512; seed 0 never reaches 40%
    assert g["reached"] == 2 and g["samples_to_threshold"] == pytest.approx(384)
    # SPPO: seed 0 at 256 (wall 4, 16 updates), seed 1 at 512 (wall (2 + 1) * 4, 32 updates)
    assert sp["reached"] == 2 and sp["samples_to_threshold"] == pytest.approx(384)
    assert sp["updates_to_threshold"] == pytest.approx(24)
    assert sp["wall_s_to_threshold"] == pytest.approx(8.0)
    assert sp["samples_to_threshold_lo"] == 256 and sp["samples_to_threshold_hi"] == 512
    high = seed_summary(curves, threshold=0.49).set_index("method")
    assert high.loc["sppo", "reached"] == 1 and high.loc["sppo", "samples_to_threshold"] == 768
    assert pd.isna(seed_summary(curves, threshold=0.9).loc[0, "samples_to_threshold"])
    one = seed_summary({k: v for k, v in curves.items() if k[1] == 0}).set_index("method")
    assert one.loc["sppo", "best_acc_lo"] == one.loc["sppo", "best_acc_hi"] == 45.0
    md = seed_markdown(seed_summary(curves))
    assert "responses to 40.0%" in md and "| 2/3 |" in md
    assert "| GRPO (N=8) | 0 1 2 | 40.0 [" in md


def test_mean_curves_align_seeds_on_shared_points_with_a_band():
    curves = _seed_curves()
    curves[("sppo", 2)] = curves[("sppo", 2)][:3]  # a shorter run: only the shared points count
    mean = mean_curves(curves)
    sp = mean[mean.method == "sppo"]
    assert list(sp.samples) == [0, 256, 512] and (sp.runs == 3).all()
    assert sp.accuracy.iloc[1] == pytest.approx(100 * (0.40 + 0.30 + 0.30) / 3)
    assert list(sp.updates) == [0, 16, 32]
    assert (sp.accuracy_lo <= sp.accuracy + 1e-9).all() and (
        sp.accuracy <= sp.accuracy_hi + 1e-9
    ).all()
    assert sp.accuracy_hi.iloc[1] > sp.accuracy_lo.iloc[1]  # seeds differ there
    assert sp.accuracy_lo.iloc[0] == sp.accuracy_hi.iloc[0] == pytest.approx(20.0)  # warm start
    g = mean[mean.method == "grpo"]
    assert list(g.wall_s) == pytest.approx([10.0, 20.0, 30.0, 40.0])  # mean of seed offsets
    stats = {
        s: {"pearson": p, "spearman": p, "brier_vs_success": 0.1}
        for s, p in enumerate((0.6, 0.7, 0.8))
    }
    over = calibration_over_seeds(stats)
    assert over["seeds"] == [0, 1, 2] and over["pearson"]["mean"] == pytest.approx(0.7)
    assert over["pearson"]["lo"] < 0.7 < over["pearson"]["hi"]


def test_report_only_writes_per_run_and_per_arm_tables(tmp_path, capsys):
    bench = _bench()
    runs = tmp_path / "runs"
    for (arm, seed), rows in _seed_curves().items():
        folder = runs / f"{arm}-s{seed}"
        folder.mkdir(parents=True)
        (folder / "curve.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (folder / "bench.json").write_text("{}")
    (runs / "sppo-s7").mkdir()  # unfinished: no bench.json, not reported
    out = tmp_path / "out"
    argv = ["--report-only", "--runs", str(runs), "--out", str(out), "--recipe"]
    assert bench.main([*argv, str(ROOT / "llm/toy-arithmetic.yaml")]) == 0
    names = {p.name for p in out.iterdir()}
    assert {
        "toy_summary.csv",
        "toy_summary.md",
        "toy_summary_seeds.csv",
        "toy_summary_seeds.md",
    } <= names
    assert {"toy_curves.csv", "toy_curves_mean.csv", "toy_accuracy.png"} <= names
    per_run = pd.read_csv(out / "toy_summary.csv")
    assert len(per_run) == 6 and set(per_run.seed) == {0, 1, 2}
    seeds = pd.read_csv(out / "toy_summary_seeds.csv").set_index("method")
    assert seeds.loc["sppo", "reached"] == 2
    assert "GRPO (N=8)" in capsys.readouterr().out
