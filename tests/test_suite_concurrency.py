"""Two identical suites at once (issue rule: concurrent suites): the second waits for the runs
and stages the first is writing, then finds them done; neither reports a failure, and every
run's metrics equal a single suite's."""

import json
import multiprocessing
import sys
from pathlib import Path

import pytest
from test_control_pipeline import TINY_CLONE, TINY_EXPERT, TINY_RL

from sppo_bench.orchestration.suite import RunSpec, run_suite

SETTINGS = (*TINY_EXPERT, "expert.total_timesteps=64", *TINY_CLONE, *TINY_RL)
SPECS = [
    RunSpec("cartpole", algo, seed, 8, SETTINGS) for algo in ("sppo", "grpo") for seed in (0, 1)
]


def _suite(runs_dir: str, stack: int, out: str) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    result = run_suite(SPECS, Path(runs_dir), workers=1, stack=stack)
    summary = {
        "failed": [f"{spec}: {why}" for spec, why in result.failed],
        "finished": sorted(str(s) for s in result.finished),
        "skipped": sorted(str(s) for s in result.skipped),
    }
    Path(out).write_text(json.dumps(summary))


def _rows(run: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("wall_time", "charts/SPS")} for r in rows]


def test_two_identical_suites_at_once_both_succeed(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    both = [
        ctx.Process(
            target=_suite, args=(str(tmp_path / "runs"), stack, str(tmp_path / f"{k}.json"))
        )
        for k, stack in enumerate((1, 2))
    ]
    for process in both:
        process.start()
    for process in both:
        process.join(timeout=600)
        assert process.exitcode == 0
    results = [json.loads((tmp_path / f"{k}.json").read_text()) for k in range(2)]
    names = sorted(str(s) for s in SPECS)
    for result in results:
        assert result["failed"] == []
        assert sorted(result["finished"] + result["skipped"]) == names
    _suite(str(tmp_path / "alone"), 1, str(tmp_path / "alone.json"))
    for spec in SPECS:  # a seed-stacked job agrees with a single run up to float rounding
        alone = _rows(spec.run_dir(tmp_path / "alone"))
        both = _rows(spec.run_dir(tmp_path / "runs"))
        assert len(both) == len(alone)
        for row, other in zip(both, alone, strict=True):
            assert row == pytest.approx(other, rel=1e-4, abs=1e-6)
