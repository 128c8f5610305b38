"""sppo-bench: sequence-level PPO (SPPO) and its baselines on sparse-reward control and LLM math.

Importing the package registers the control suite's Gymnasium environments (``sppo_bench/...``).
"""

__version__ = "0.1.0"

from sppo_bench.control.tasks import register_tasks as _register_tasks  # noqa: E402

_register_tasks()
