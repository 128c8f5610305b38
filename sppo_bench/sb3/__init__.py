"""SPPO for Stable-Baselines3 users: ``from sppo_bench.sb3 import SPPO``.

- ``SPPO``: the algorithm on SB3's on-policy base (``sppo_bench.sb3.algorithm``);
- ``make_algorithm``: SPPO or its in-library comparison, SB3's own ``PPO`` with GAE at
  gamma = lambda = 1 (``sppo_bench.sb3.compare``);
- ``clone_state_dict``: a cloned policy of this project as an SB3 policy state dict.
"""

from sppo_bench.sb3.algorithm import SPPO, Episode, EpisodeBatch, EpisodeBuffer, episode_outcome
from sppo_bench.sb3.compare import ALGORITHMS, clone_state_dict, make_algorithm

__all__ = [
    "ALGORITHMS",
    "SPPO",
    "Episode",
    "EpisodeBatch",
    "EpisodeBuffer",
    "clone_state_dict",
    "episode_outcome",
    "make_algorithm",
]
