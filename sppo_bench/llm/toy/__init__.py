"""The CPU toy of the math track: a synthetic multi-step arithmetic task with its in-process
tokenizer and supervised warm start (``task``), and the measurements of a trained policy and
critic on held-out prompts (``probes``). The math track reaches it only where a recipe names
``toy:`` data or the ``toy-arithmetic`` warm start."""
