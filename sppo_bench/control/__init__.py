"""The control track: sparse binary-reward Gymnasium tasks, expert, behaviour cloning, RL."""
