"""Sub-commands of the ``sppo-bench`` CLI, one module each."""
