r"""The math verifier: last-box extraction, math-verify grading against the real gold data, and a
process pool that survives hangs, crashes and adversarial LaTeX within a wall-clock bound."""

import json
import re
import threading
import time
from pathlib import Path

import pytest

from sppo_bench.errors import UserError
from sppo_bench.llm.data import load_problems
from sppo_bench.llm.verifier import Verifier, last_boxed, score

MATH_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "math"


def _shared(name: str) -> Path:
    path = MATH_DIR / name
    if not path.is_file():
        pytest.skip(f"{path} is absent (the shared evaluation data sits beside the repository)")
    return path


@pytest.fixture(scope="module")
def verifier():
    with Verifier(num_workers=2, timeout_s=5.0) as v:
        yield v


@pytest.fixture(scope="module")
def patient_verifier():
    """For correctness checks over whole datasets: a budget no parse reaches even on a loaded
    machine (math-verify's in-worker alarm is a third of it), so a timeout cannot pass for a
    wrong grade or hide one."""
    with Verifier(num_workers=2, timeout_s=30.0) as v:
        yield v


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"so \boxed{5}.", "5"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"first \boxed{7}, finally \boxed{9}", "9"),
        (r"\boxed{x = \boxed{3}} then \boxed{4}", "4"),
        (r"the answer is $\boxed 12$ done", "12"),
        ("\\boxed 12\nnext line", "12"),
        (r"\fbox{3}", "3"),
        (r"\boxed {8}", "8"),
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),
        (r"\boxed{\left( 3, \frac{\pi}{2} \right)}", r"\left( 3, \frac{\pi}{2} \right)"),
        (r"\boxed{7} and then truncated \boxed{\frac{1}{", None),
        (r"\boxed{}", None),
        (r"\boxedanswer{3}", None),
        ("no box at all: 42", None),
        ("", None),
    ],
)
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


@pytest.mark.parametrize(
    "response, gold, expected",
    [
        (r"The answer is \boxed{8}.", "8", 1.0),
        (r"The answer is \boxed{9}.", "8", 0.0),
        (r"\boxed{70}", "70.0", 1.0),
        (r"\boxed{70.0}", "70", 1.0),
        (r"\boxed{\dfrac{14}{3}}", r"\frac{14}{3}", 1.0),
        (r"\boxed{14/3}", r"\frac{14}{3}", 1.0),
        (r"\boxed{4.6667}", r"\frac{14}{3}", 0.0),
        (r"\boxed{(3, \frac{\pi}{2})}", r"\left( 3, \frac{\pi}{2} \right)", 1.0),
        (r"\boxed{(3, \pi)}", r"\left( 3, \frac{\pi}{2} \right)", 0.0),
        (r"wrong \boxed{7}, then right \boxed{9}", "9", 1.0),
        (r"right \boxed{9}, then wrong \boxed{7}", "9", 0.0),
        ("The answer is 8.", "8", 0.0),  # no box: nothing to grade
        (r"\boxed{8", "8", 0.0),  # truncated
        (r"\boxed{8}", r"\boxed{8}", 1.0),  # a gold that carries its own box
    ],
)
def test_score(response, gold, expected):
    assert score(response, gold) == expected


def test_score_is_usable_off_the_main_thread():
    out: list[float] = []
    thread = threading.Thread(target=lambda: out.append(score(r"\boxed{\sqrt{4}}", "2")))
    thread.start()
    thread.join(timeout=30)
    assert out == [1.0]


def _rate(verifier, responses, golds):
    rewards = verifier.score_batch(responses, golds)
    return sum(rewards) / len(rewards), rewards


@pytest.mark.parametrize("name", ["math500.jsonl", "minerva_math.jsonl"])
def test_gold_solutions_verify_against_their_answers(patient_verifier, name):
    path = _shared(name)
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    problems = load_problems(str(path))
    golds = [p.answer for p in problems]
    rate, _ = _rate(patient_verifier, [r["solution"] for r in rows], golds)
    assert rate >= 0.99, f"{name}: only {rate:.1%} of gold solutions verify"


@pytest.mark.parametrize(
    "name", ["gsm8k_test.jsonl", "aime24.jsonl", "aime25.jsonl", "amc23.jsonl"]
)
def test_plain_golds_verify_and_gold_plus_one_does_not(verifier, name):
    problems = load_problems(str(_shared(name)))
    golds = [p.answer for p in problems]
    rate, _ = _rate(verifier, [f"So the answer is $\\boxed{{{g}}}$." for g in golds], golds)
    assert rate == 1.0
    plus_one = [f"\\boxed{{{int(g) + 1}}}" for g in golds]  # these golds are all integers
    wrong_rate, _ = _rate(verifier, plus_one, golds)
    assert wrong_rate == 0.0


def test_wrong_answers_score_zero_on_math500(verifier):
    answers = [p.answer for p in load_problems(str(_shared("math500.jsonl")))]
    integers = [a for a in answers if re.fullmatch(r"-?\d+", a)]
    _, rewards = _rate(verifier, [f"\\boxed{{{int(a) + 1}}}" for a in integers], integers)
    assert sum(rewards) == 0.0
    # Another problem's answer (the next one whose text differs): almost never equal in value.
    responses = []
    for i, gold in enumerate(answers):
        j = (i + 1) % len(answers)
        while re.sub(r"\s", "", answers[j]) == re.sub(r"\s", "", gold):
            j = (j + 1) % len(answers)
        responses.append(f"\\boxed{{{answers[j]}}}")
    rate, _ = _rate(verifier, responses, answers)
    assert rate <= 0.01


ADVERSARIAL = {
    "a thousand nested braces": r"\boxed{" + "{" * 1000 + "1" + "}" * 1000 + "}",
    "a 10^6-digit number": r"\boxed{" + "9" * 10**6 + "}",
    "nested fractions": r"\boxed{" + r"\frac{1}{" * 1000 + "2" + "}" * 1000 + "}",
    "nested square roots": r"\boxed{" + r"\sqrt{" * 1000 + "2" + "}" * 1000 + "}",
    "an exponent tower": r"\boxed{" + "^".join(["9"] * 300) + "}",
    "a braced exponent tower": r"\boxed{" + "9^{" * 60 + "9" + "}" * 60 + "}",
}


def test_adversarial_responses_return_in_bounded_time():
    timeout_s = 2.0
    responses = list(ADVERSARIAL.values()) + [r"\boxed{3}"]
    golds = ["1"] * len(ADVERSARIAL) + ["3"]
    with Verifier(num_workers=2, timeout_s=timeout_s) as v:
        start = time.monotonic()
        rewards = v.score_batch(responses, golds)
        elapsed = time.monotonic() - start
        # Two workers, each item at most timeout_s: ceil(7 / 2) rounds plus process restarts.
        assert elapsed < 4 * timeout_s + 4.0, f"took {elapsed:.1f} s"
        assert rewards == [0.0] * len(ADVERSARIAL) + [1.0]
        stats = v.stats
        assert stats["timeouts"] + stats["parse_failures"] == len(ADVERSARIAL), stats
        assert stats["scored"] == len(responses) and stats["correct"] == 1
        # An adversarial gold is bounded the same way.
        start = time.monotonic()
        assert v.score_batch([r"\boxed{1}"], [ADVERSARIAL["nested square roots"]]) == [0.0]
        assert time.monotonic() - start < timeout_s + 3.0


def test_hung_and_crashed_workers_are_replaced():
    faults = {"<hang>": "hang", "<crash>": "crash"}
    with Verifier(num_workers=2, timeout_s=1.0, _faults=faults) as v:
        responses = [r"\boxed{1}", "<hang>", "<crash>", r"\boxed{2}", "<hang>", r"\boxed{3}"]
        start = time.monotonic()
        rewards = v.score_batch(responses, ["1", "1", "1", "2", "1", "3"])
        elapsed = time.monotonic() - start
        assert rewards == [1.0, 0.0, 0.0, 1.0, 0.0, 1.0]
        assert elapsed < 2 * 1.0 + 3.0, f"took {elapsed:.1f} s"
        stats = v.stats
        assert stats["timeouts"] == 2 and stats["worker_crashes"] == 1 and stats["correct"] == 3
        assert v.score_batch([r"\boxed{5}"] * 4, ["5"] * 4) == [1.0] * 4
        processes = [w.process for w in v._workers]
        assert len(processes) == 2 and all(p.is_alive() for p in processes)
    assert not any(p.is_alive() for p in processes)


def test_no_box_and_unparsable_are_counted():
    with Verifier(num_workers=1) as v:
        assert v.score_batch(
            ["no box here", r"\boxed{3}", r"\boxed{3}"], ["3", "", r"\text{}"]
        ) == [
            0.0,
            0.0,
            0.0,
        ]
        assert v.stats["no_box"] == 1 and v.stats["parse_failures"] == 2
        assert v.score_batch([], []) == []


def test_bad_arguments():
    with pytest.raises(UserError, match="num_workers"):
        Verifier(num_workers=0)
    with pytest.raises(UserError, match="timeout_s"):
        Verifier(timeout_s=0)
    with Verifier(num_workers=1) as v, pytest.raises(ValueError, match="2 responses but 1"):
        v.score_batch(["a", "b"], ["a"])
    v.close()
    with pytest.raises(RuntimeError, match="closed"):
        v.score_batch(["a"], ["a"])


def test_a_call_interrupted_mid_batch_leaves_no_stale_work():
    with Verifier(num_workers=1, timeout_s=30.0, _faults={"<hang>": "hang"}) as v:
        timer = threading.Timer(0.5, lambda: v._workers[0].process.kill())
        timer.start()  # the hung item ends as a crash, as a Ctrl-C'd one would be abandoned
        assert v.score_batch(["<hang>"], ["1"]) == [0.0]
        v._workers[0].item = 0  # as if a KeyboardInterrupt had left an item in flight
        assert v.score_batch([r"\boxed{2}"], ["2"]) == [1.0]
        assert v.stats["worker_crashes"] == 1


def test_score_works_at_module_level_of_a_plain_script(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "plain.py"  # no `if __name__ == "__main__":` guard
    script.write_text(
        "from sppo_bench.llm.verifier import score\n"
        "print('ran', flush=True)\n"
        'print(score(r"\\boxed{1/2}", "0.5"))\n'
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-500:]
    assert done.stdout.split() == ["ran", "1.0"]  # the script ran once, not again in a worker
