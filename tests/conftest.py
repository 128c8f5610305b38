"""Shared fixtures: a synthetic control suite written to the run-directory contract."""

from __future__ import annotations

import pytest
from synthetic_runs import write_run, write_suite

# tests/verl needs verl 0.9.1, which pins its own torch: `.ci/run` runs it in its own environment
# (.venv-verl). The main run does not collect it.
collect_ignore = ["verl"]


@pytest.fixture(scope="session")
def synthetic_runs_dir(tmp_path_factory):
    """2 tasks x {sppo, ppo-gae} x 5 finished seeds, plus one unfinished SPPO run (seed 9)."""
    root = write_suite(tmp_path_factory.mktemp("suite"), seeds=5)
    write_run(root, "cartpole", "sppo", 9, 1280, finished=False)
    return root
