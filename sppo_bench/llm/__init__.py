"""The LLM math track: datasets, verifier, rollout engines, policy and critic, trainer, eval."""
