"""bench/gpu_check.sh on a CPU: the toy run is really killed and resumed, the budget cuts parts
short, and the CUDA test list covers every test file that needs CUDA."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(tmp_path: Path, *argv: str) -> tuple[subprocess.CompletedProcess, Path]:
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    env["OUT"] = str(tmp_path / "device-out")
    env["GPU_CHECK_COMMIT"] = "abc1234"
    done = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), "--device", "cpu",
         "--out-root", str(tmp_path / "results"), *argv],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    return done, tmp_path / "results" / "gpu_check_cpu_abc1234"


def test_cuda_test_list_holds_every_test_file_that_skips_without_cuda():
    needs = {
        f"tests/{p.name}"
        for p in (ROOT / "tests").glob("test_*.py")
        if re.search(r"not torch\.cuda\.is_available\(\)", p.read_text())
    }
    assert needs and needs <= set(_module().CUDA_TESTS)


def test_toy_run_is_killed_and_resumed_with_contiguous_metrics(tmp_path):
    done, out = _run(tmp_path, "--parts", "toy-resume")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    (part,) = summary["parts"]
    assert part["status"] == "ok"
    # killed mid-run: rows were written and the run was not done; whether a checkpoint had
    # just been written at the kill depends on timing, so the checkpoint may equal the rows
    assert part["rows_at_kill"] >= 3 and part["checkpoint_step_at_kill"] <= part["rows_at_kill"]
    assert part["rows_at_kill"] < 40
    steps = [json.loads(x)["step"] for x in (out / "toy_resume_metrics.jsonl").open()]
    assert steps == list(range(1, 41))
    # every file is also in $OUT, one folder deep, and there are at most 8 of them
    mirrored = sorted(p.name for p in (tmp_path / "device-out" / out.name).iterdir())
    assert mirrored == sorted(p.name for p in out.iterdir()) and len(mirrored) <= 8
    assert "killed after" in (out / "summary.md").read_text()


def test_a_part_past_its_cap_is_killed_and_a_spent_budget_skips_the_rest(tmp_path, monkeypatch):
    module = _module()
    monkeypatch.delenv("OUT", raising=False)
    args = module.parse(["--device", "cpu", "--out-root", str(tmp_path), "--budget-s", "60"])
    check = module.Check(args, "cpu", "1234abc")
    t0 = time.monotonic()
    rc, _ = check.run([sys.executable, "-c", "import time; time.sleep(60)"], 1.0, "sleeper")
    assert rc is None and time.monotonic() - t0 < 30
    assert "cut at 1 s" in (check.out / "gpu_check.log").read_text()
    check.deadline = time.monotonic()  # the budget is spent: the next part does not start
    check.part("hf-generation")
    (entry,) = json.loads((check.out / "summary.json").read_text())["parts"]
    assert entry["status"] == "skipped (budget spent)"


def test_unknown_part_is_a_one_line_error(tmp_path):
    done, out = _run(tmp_path, "--parts", "everything")
    assert done.returncode == 2 and "invalid choice: 'everything'" in done.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    ("name", "slug"), [("NVIDIA H200", "h200"), ("NVIDIA H100 80GB HBM3", "h100-80gb-hbm3")]
)
def test_output_folder_is_named_by_device_and_commit(name, slug, tmp_path, monkeypatch):
    module = _module()
    monkeypatch.delenv("OUT", raising=False)
    args = module.parse(["--device", "cpu", "--out-root", str(tmp_path)])
    check = module.Check(args, name, "1234abc")
    assert check.out == tmp_path / f"gpu_check_{slug}_1234abc" and check.out.is_dir()
