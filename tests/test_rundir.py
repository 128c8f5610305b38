"""The run contract both tracks share (``sppo_bench.rundir.RunDir``): the layout, the refusal of
a rerun with other settings (the LLM trainer's budget may grow), and run folders written before
the contract (an LLM run's ``checkpoint.pt`` and a ``done`` holding the step count)."""

import json

import pytest
import torch
from test_llm_trainer import _config, _train

from sppo_bench.cli import main
from sppo_bench.errors import UserError
from sppo_bench.rundir import RunDir


def test_layout_done_and_checkpoint_round_trip(tmp_path):
    run = RunDir(tmp_path / "r")
    assert run.load_checkpoint() is None and not run.done
    run.save_checkpoint({"step": 3, "w": torch.ones(2)})
    assert run.checkpoint_path == tmp_path / "r" / "checkpoints" / "latest.pt"
    assert run.load_checkpoint(keys=("step",))["step"] == 3
    with pytest.raises(UserError, match="has no 'policy'"):
        run.load_checkpoint(keys=("policy",))
    run.mark_done({"step": 3})
    assert run.done and run.done_summary() == {"step": 3}


def test_an_llm_run_refuses_other_settings_but_not_a_longer_budget(tmp_path):
    _train(_config("sppo", 1), tmp_path)
    rows, _, _ = _train(_config("sppo", 2), tmp_path)  # the budget grows: resumed
    assert [r["step"] for r in rows] == [2]
    with pytest.raises(UserError, match=r"other settings \(stored vs requested algo.lr: 0.001 !="):
        _train(_config("sppo", 3, "algo.lr=0.002"), tmp_path)
    assert json.loads((tmp_path / "done").read_text()) == {"step": 2}


def test_a_run_folder_from_before_the_contract_is_read(tmp_path, capsys):
    _train(_config("sppo", 1), tmp_path)
    run = RunDir(tmp_path)
    run.checkpoint_path.rename(tmp_path / "checkpoint.pt")  # the old layout
    run.done_path.write_text("1\n")
    assert run.done_summary() == {"step": 1}
    assert run.load_checkpoint(keys=("policy", "step"))["step"] == 1
    rows, _, _ = _train(_config("sppo", 2), tmp_path)  # resumes from the old checkpoint
    assert [r["step"] for r in rows] == [2]


def test_llm_train_cli_names_the_run_dir_remedy(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {policy: 'tiny:xs', gradient_checkpointing: false}\n")
    _train(_config("sppo", 1), tmp_path / "run")
    args = ["llm", "train", "--recipe", str(recipe), "--run-dir", str(tmp_path / "run")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "holds a run with other settings" in err and "another --run-dir" in err
