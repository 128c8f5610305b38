"""sppo-bench: sequence-level PPO (SPPO) and its baselines on sparse-reward control and LLM math.

Importing the package imports nothing heavy: the algorithm core is :mod:`sppo_bench.core`, the
control track (which registers its Gymnasium environments ``sppo_bench/...``) is
:mod:`sppo_bench.control`, the LLM track :mod:`sppo_bench.llm`, and the verl plugin
:mod:`sppo_bench.verl_plugin`.
"""

__version__ = "0.1.0"
