"""The control track: sparse binary-reward Gymnasium tasks, expert, behaviour cloning, RL.

Importing this package (or any module in it) registers the tasks with Gymnasium under
``sppo_bench/<Name>-v0``, so that ``gym.make("sppo_bench/PrecisionCartPole-v0")`` works after
``import sppo_bench.control``; ``gym.make("sppo_bench.control:sppo_bench/PrecisionCartPole-v0")``
works without a prior import.
"""

from sppo_bench.control.tasks import register_tasks as _register_tasks

_register_tasks()
