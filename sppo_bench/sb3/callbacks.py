"""SB3 callbacks and optional extras of ``SPPO``."""

from __future__ import annotations

from stable_baselines3.common.callbacks import ProgressBarCallback


class BoundedProgressBar(ProgressBarCallback):
    """SB3's progress bar, whose count stops at ``total_timesteps`` (the last ``env.step`` of
    a collection may go past it by up to ``n_envs - 1`` steps)."""

    def _on_step(self) -> bool:
        self.pbar.update(min(self.training_env.num_envs, self.pbar.total - self.pbar.n))
        return True


def has_tensorboard() -> bool:
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        return False
    return True
