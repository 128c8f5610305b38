r"""The reward for the verl launch scripts: 1.0 when the response's last ``\boxed{}`` verifies
against the gold answer, else 0.0 (the project's verifier, :func:`sppo_bench.llm.verifier.score`:
math-verify in a worker process, about 5 s per response at most).

verl loads it with ``reward.custom_reward_function.path=llm/verl/reward.py`` and
``reward.custom_reward_function.name=compute_score``, and calls it once per response from its
reward-loop workers with the row's ``data_source``, the decoded response and
``reward_model.ground_truth`` (see ``sppo_bench/llm/verl_data.py``).
"""

from __future__ import annotations

from typing import Any

from sppo_bench.llm.verifier import score


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: dict | None = None,
    **_: Any,
) -> float:
    """1.0 or 0.0 for one response; ``data_source`` and ``extra_info`` are not used."""
    return score(solution_str, str(ground_truth))
