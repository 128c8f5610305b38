"""Shared fixtures: a synthetic control suite written to the run-directory contract; the tiny
LLM tokenizer and a tiny random-weight policy."""

from __future__ import annotations

import pytest
from synthetic_runs import write_run, write_suite

# tests/verl needs verl 0.9.1 and tests/vllm vLLM's CPU build: `.ci/run` runs each in an
# environment of its own (.venv-verl, .venv-vllm). The main run does not collect them.
collect_ignore = ["verl", "vllm"]


@pytest.fixture(scope="session")
def synthetic_runs_dir(tmp_path_factory):
    """2 tasks x {sppo, ppo-gae} x 5 finished seeds, plus one unfinished SPPO run (seed 9)."""
    root = write_suite(tmp_path_factory.mktemp("suite"), seeds=5)
    write_run(root, "cartpole", "sppo", 9, 1280, finished=False)
    return root


@pytest.fixture(scope="module")
def tok():
    """The in-process tiny character tokenizer."""
    from sppo_bench.llm.tiny import tiny_tokenizer

    return tiny_tokenizer()


@pytest.fixture()
def model(tok):
    """A fresh tiny random-weight Qwen2 policy (``tiny:xs``, seed 0), one CPU thread."""
    import torch

    from sppo_bench.llm.tiny import tiny_model

    torch.set_num_threads(1)
    return tiny_model("xs", tok, seed=0)
