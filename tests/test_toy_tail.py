"""The tail view of the CPU toy: first wrong line, line ends in tokens, windows around an error."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sppo_bench.analysis.toy_tail import drop, plot_tail, seed_windows, step_window, tail_report
from sppo_bench.errors import UserError
from sppo_bench.llm.models import load_tokenizer
from sppo_bench.llm.tiny import tiny_tokenizer
from sppo_bench.llm.toy.steps import (
    chain_of,
    first_wrong_step,
    line_end_offsets,
    line_end_tokens,
    token_end_offsets,
)
from sppo_bench.llm.toy.task import Chain, split_chains

ROOT = Path(__file__).resolve().parents[1]
CHAIN = Chain(7, (("+", 5), ("*", 3), ("-", 8)))  # (7+5)*3-8 = 28
REF = CHAIN.solution().split("\n")


def test_reference_is_the_worked_solution():
    assert REF == ["7+5=12", "12*3=36", "36-8=28", "\\boxed{28}"]


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("7+5=12\n12*3=36\n36-8=28\n\\boxed{28}", None),
        (" 7+5=12 \n12*3=36\n36-8=28\n\\boxed{28}", None),  # surrounding spaces do not count
        ("7+5=13\n13*3=39\n39-8=31\n\\boxed{31}", 0),  # wrong result
        ("7+6=13\n13*3=39\n39-8=31\n\\boxed{31}", 0),  # wrong operand
        ("7+5=12\n12*3=35\n35-8=27\n\\boxed{27}", 1),
        ("7+5=12\n12*3=36\n\\boxed{36}", 2),  # a missing line
        ("7+5=12\n12*3=36\n36-8=28\n\\boxed{27}", 3),  # wrong box
        ("7+5=12\n12*3=36\n36-8=28", 3),  # missing box
        ("7+5=12\n12*3=36\n36-8=28\n\\boxed{28}\n1+1=2", 4),  # an extra line
        ("", 0),
    ],
)
def test_first_wrong_step(response, expected):
    assert first_wrong_step(REF, response) == expected


def test_line_end_offsets_point_past_each_line():
    text = "7+5=12\n12*3=36\n\\boxed{36}"
    ends = line_end_offsets(text)
    assert ends == [6, 14, 25]
    assert [text[e] for e in ends[:-1]] == ["\n", "\n"] and ends[-1] == len(text)
    assert line_end_offsets("12\n") == [2, 3]  # a trailing newline leaves an empty last line


def test_chain_of_reads_toy_ids_and_rejects_others():
    assert chain_of("toy:arithmetic/test/3") == split_chains("test")[3]
    for bad in ("gsm8k/test/3", "toy:arithmetic/test/x", "toy:arithmetic/test/999"):
        with pytest.raises(UserError):
            chain_of(bad)


def test_line_ends_map_to_the_newline_token_on_the_toy_tokenizer():
    """Character tokenizer: the first state holding line i is its newline (the eos after the
    last line). A multi-character token (a vocabulary filler) shifts offsets by its length."""
    tok = load_tokenizer("tiny:m")
    for text in ("7+5=12\n12*3=36\n36-8=28\n\\boxed{28}", "7+5=1\n\n\\boxed{3}"):
        ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert tok.decode(ids, skip_special_tokens=True) == text
        ends = line_end_tokens(token_end_offsets(tok, ids), line_end_offsets(text))
        lines = text.split("\n")
        for i, t in enumerate(ends):
            assert tok.decode(ids[:t], skip_special_tokens=True).endswith(lines[i])
            assert tok.decode(ids[t : t + 1]) == ("\n" if i < len(lines) - 1 else tok.eos_token)
    big = tiny_tokenizer(len(tok) + 10)  # a model's vocabulary fillers decode to "<id>"
    ids = [big.convert_tokens_to_ids(c) for c in "1\n2"]
    ids.insert(1, len(tok) + 5)
    assert big.decode(ids) == f"1<{len(tok) + 5}>\n2"
    assert token_end_offsets(big, ids) == [1, 6, 7, 8]
    assert line_end_tokens(token_end_offsets(big, ids), [6, 8]) == [2, 4]


def test_a_token_spanning_a_line_break_is_not_seen_at_its_own_state():
    # tokens "7+", "5=1", "2\n", "3" of "7+5=12\n3": the line "7+5=12" ends at offset 6
    token_ends = [2, 5, 7, 8]
    assert line_end_tokens(token_ends, [6, 8]) == [3, 4]  # token 3: after "2\n"; 4 = T
    assert line_end_tokens(token_ends, [0, 5]) == [0, 2]


def test_step_window_pads_outside_the_response_with_nan():
    w = step_window([0.0, 1.0, 2.0], 1, 2)
    assert w[1:4].tolist() == [0.0, 1.0, 2.0] and np.isnan(w[[0, 4]]).all()


def _row(reward, values, ends, wrong):
    return {"reward": reward, "values": values, "line_end_tokens": ends, "first_wrong_step": wrong}


ENDS = [6, 14, 22, 32]  # four lines, T = 33 tokens


def test_a_drop_at_the_error_appears_at_d_zero_and_in_the_drop_number():
    k = 4
    step_drop = [0.6 if t < 14 else 0.1 for t in range(33)]  # first wrong line 1 ends at 14
    flat = [0.7] * 33
    win = seed_windows([_row(0.0, step_drop, ENDS, 1), _row(1.0, flat, ENDS, None)], k)
    assert win["incorrect"][k - 1] == pytest.approx(0.6) and win["incorrect"][k] == 0.1
    assert drop(win["incorrect"], k) == pytest.approx(-0.5)
    assert drop(win["correct"], k) == pytest.approx(0.0)
    assert (win["n_incorrect"], win["n_located"], win["n_correct"]) == (1, 1, 1)


def test_correct_windows_take_the_incorrect_step_mixture():
    """V_t = t / 100 on the correct response: its window at line j is (e_j + d) / 100, so the
    mixture with P(j = 0) = 2/3, P(j = 2) = 1/3 is ((2 * 6 + 22) / 3 + d) / 100."""
    k = 3
    ramp = [t / 100 for t in range(33)]
    rows = [
        _row(0.0, [0.5] * 33, ENDS, 0),
        _row(0.0, [0.5] * 33, ENDS, 0),
        _row(0.0, [0.5] * 33, ENDS, 2),
        _row(0.0, [0.5] * 33, ENDS, None),  # not located: counted, not windowed
        _row(0.0, [0.5] * 33, ENDS[:2], 2),  # its wrong line is missing: not located
        _row(1.0, ramp, ENDS, None),
        _row(1.0, ramp, ENDS, 1),  # right box after a wrong line: a correct response all the same
    ]
    win = seed_windows(rows, k)
    assert win["step_weights"] == pytest.approx({0: 2 / 3, 2: 1 / 3})
    expected = [((2 * 6 + 22) / 3 + d) / 100 for d in range(-k, k + 1)]
    assert win["correct"] == pytest.approx(expected)
    assert (win["n_incorrect"], win["n_located"]) == (5, 3)
    assert (win["n_correct"], win["n_correct_with_wrong_line"]) == (2, 1)


def _probe(step, drop_size):
    values = [0.6 if t < 14 else 0.6 - drop_size for t in range(33)]
    rows = [_row(0.0, values, ENDS, 1), _row(1.0, [0.8] * 33, ENDS, None)]
    return {"step": step, "critic": "step", "rows": rows}


def _sppo_probe(step, value):
    rows = [{"id": "a", "value": value, "reward": 0.0}, {"id": "b", "value": 0.9, "reward": 1.0}]
    return {"step": step, "critic": "sequence", "rows": rows}


def test_tail_report_means_and_ranges_over_seeds(tmp_path):
    gae = {s: [_probe(4, d), _probe(32, 2 * d), _probe(64, 3 * d)] for s, d in ((0, 0.1), (1, 0.3))}
    sppo = {0: [_sppo_probe(4, 0.2), _sppo_probe(32, 0.3), _sppo_probe(64, 0.4)]}
    table, summary = tail_report(gae, sppo, k=4)
    assert [p["point"] for p in summary["points"]] == ["first", "middle", "final"]
    final = summary["points"][2]["over_seeds"]
    assert final["drop_difference"]["mean"] == pytest.approx(-0.6)  # -(0.3 + 0.9) / 2
    assert final["drop_difference"]["min"] == pytest.approx(-0.9)
    assert final["last_value_correct"]["mean"] == pytest.approx(0.8)
    assert final["sppo_value_incorrect"] == {"mean": 0.4, "min": 0.4, "max": 0.4, "seeds": 1,
                                             "total": 0.4}  # fmt: skip
    assert final["n_located"]["total"] == 2
    at0 = table[(table.point == "first") & (table.outcome == "incorrect") & (table.d == 0)]
    assert at0["mean"].item() == pytest.approx(0.4) and at0["seeds"].item() == 2
    plot_tail(table, summary, tmp_path / "tail.png")
    assert (tmp_path / "tail.png").stat().st_size > 0


def _bench():
    spec = importlib.util.spec_from_file_location("llm_toy", ROOT / "bench/llm_toy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tail_points_first_middle_last():
    points = _bench().tail_points
    assert points(list(range(4, 65, 4))) == [4, 32, 64]
    assert points([8, 16, 24]) == [8, 16, 24]
    assert points([2, 4]) == [2, 4] and points([3]) == [3]


def test_report_only_writes_the_tail_view(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "out"
    curve = [
        {"step": s, "samples": 256 * s, "updates": s, "wall_s": s, "accuracy": 0.2} for s in (0, 4)
    ]
    for name, probes in (("ppo-gae-s0", [_probe(4, 0.2)]), ("sppo-s0", [_sppo_probe(4, 0.3)])):
        (runs / name).mkdir(parents=True)
        (runs / name / "curve.jsonl").write_text("".join(json.dumps(r) + "\n" for r in curve))
        (runs / name / "tail_probe_step4.json").write_text(json.dumps(probes[0]))
        (runs / name / "bench.json").write_text("{}")
    argv = ["--report-only", "--runs", str(runs), "--out", str(out)]
    assert _bench().main([*argv, "--recipe", str(ROOT / "llm/toy-arithmetic.yaml")]) == 0
    table = pd.read_csv(out / "toy_tail_localisation.csv")
    assert set(table.point) == {"first"} and len(table) == 2 * 17
    summary = json.loads((out / "toy_tail_localisation.json").read_text())
    assert summary["points"][0]["over_seeds"]["sppo_value_incorrect"]["mean"] == 0.3
    assert (out / "toy_tail_localisation.png").exists()


def test_token_step_traces_on_real_models_match_the_token_value_traces():
    """Same sampler seed: the same responses and values as ``token_value_traces``; line ends and
    first wrong lines as the pure functions give them on each decoded response."""
    import torch

    from sppo_bench.core.critics import STEP
    from sppo_bench.llm.data import load_problems
    from sppo_bench.llm.models import build_critic, load_policy
    from sppo_bench.llm.toy.probes import token_step_traces, token_value_traces

    tok = tiny_tokenizer()
    torch.manual_seed(0)
    policy = load_policy("tiny:xs", tok, seed=0)
    critic = build_critic(STEP, "tiny:xs", tok, "float32", 1)
    problems = load_problems("toy:arithmetic/test", limit=3)

    def reward(texts, golds):
        return [float(t.endswith(f"\\boxed{{{g}}}")) for t, g in zip(texts, golds, strict=True)]

    rows = token_step_traces(policy, critic, tok, problems, reward, 1.0, 12, seed=3)
    plain = token_value_traces(policy, critic, tok, problems, reward, 1.0, 12, seed=3)
    assert [r["values"] for r in rows] == [p["values"] for p in plain]
    for row, problem in zip(rows, problems, strict=True):
        assert (
            row["id"] == problem.id and len(row["line_end_tokens"]) == row["text"].count("\n") + 1
        )
        assert all(0 <= t <= len(row["values"]) for t in row["line_end_tokens"])
        reference = chain_of(problem.id).solution().split("\n")
        assert row["first_wrong_step"] == first_wrong_step(reference, row["text"])
