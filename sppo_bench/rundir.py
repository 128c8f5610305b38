"""One run folder, for both tracks: its layout and the contract every trainer keeps.

    <run>/config.yaml            the resolved settings the run was started with
    <run>/metrics.jsonl          one JSON row per update (control) or step (LLM), appended
    <run>/checkpoints/latest.pt  the state a rerun resumes from (atomic; finite numbers only)
    <run>/done                   a JSON summary, written last: the run is finished
    <run>/diverged               the message of the DivergedError that stopped it (no done then)
    <run>/.lock                  held (flock) while a process writes the run

- A rerun with other settings is refused: ``check_config`` names the first differing key.
- ``writing()`` holds the lock and records a divergence; folders it made are removed again if the
  run fails before its first metrics row.
- Metric rows: only a torn last line is repaired (``MetricsWriter``).
Run folders written before this contract (an LLM run's ``checkpoint.pt`` and ``done`` holding
the step count) are read as well.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from sppo_bench.config import write_yaml_atomic, yaml_round_trip
from sppo_bench.errors import UserError
from sppo_bench.io import (
    MetricsWriter,
    RunLock,
    atomic_torch_save,
    atomic_write_json,
    divergence_marker,
    read_torch_file,
)

LEGACY_CHECKPOINT = "checkpoint.pt"  # LLM runs before the shared contract


def config_difference(stored: Any, requested: Any, prefix: str = "") -> str | None:
    """The first key (dotted) where two config mappings differ, as ``key: a != b``, or None."""
    if isinstance(stored, dict) and isinstance(requested, dict):
        for key in list(requested) + [k for k in stored if k not in requested]:
            where = f"{prefix}.{key}" if prefix else str(key)
            if key not in stored or key not in requested:
                return f"{where}: {stored.get(key, '<absent>')} != {requested.get(key, '<absent>')}"
            found = config_difference(stored[key], requested[key], where)
            if found:
                return found
        return None
    return None if stored == requested else f"{prefix}: {stored} != {requested}"


class RunDir:
    """The run folder at ``path`` (see the module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoints" / "latest.pt"

    @property
    def done_path(self) -> Path:
        return self.path / "done"

    # --- settings ---------------------------------------------------------------------------
    def stored_config(self, upgrade: Callable[[dict], dict] | None = None) -> dict[str, Any] | None:
        """The stored ``config.yaml`` (through ``upgrade``, which maps older keys to today's), or
        None where there is none; an unreadable one is a one-line error."""
        if not self.config_path.is_file():
            return None
        try:
            config = yaml.safe_load(self.config_path.read_bytes().decode("utf-8"))
            if not isinstance(config, dict):
                raise ValueError("not a mapping")
            return upgrade(config) if upgrade else config
        except (yaml.YAMLError, UnicodeDecodeError, ValueError, AttributeError):
            path = str(self.config_path)
            raise UserError(f"{path!r} is not a readable config; remove that folder") from None

    def check_config(
        self,
        config: Mapping[str, Any],
        upgrade: Callable[[dict], dict] | None = None,
        ignore: tuple[str, ...] = (),
        remedy: str = "use another run folder or remove that one",
    ) -> None:
        """Refuse a folder whose stored settings differ from ``config``; ``ignore`` names
        ``"section.key"`` settings that may change between calls (a budget); ``remedy`` ends the
        one-line error."""
        stored = self.stored_config(upgrade)
        if stored is None:
            return
        requested = yaml_round_trip(dict(config))
        for dotted in ignore:
            section, key = dotted.split(".")
            for side in (stored, requested):
                if isinstance(side.get(section), dict):
                    side[section].pop(key, None)
        diff = config_difference(stored, requested)
        if diff:
            raise UserError(
                f"{str(self.path)!r} holds a run with other settings (stored vs requested "
                f"{diff}); {remedy}"
            )

    def write_config(self, config: Mapping[str, Any]) -> None:
        write_yaml_atomic(self.config_path, config)

    # --- progress ---------------------------------------------------------------------------
    def metrics(self, tensorboard: str | Path | None = None) -> MetricsWriter:
        return MetricsWriter(self.metrics_path, tensorboard=tensorboard)

    def save_checkpoint(self, state: Mapping[str, Any]) -> None:
        atomic_torch_save(self.checkpoint_path, dict(state))

    def load_checkpoint(self, keys: tuple[str, ...] = ()) -> dict[str, Any] | None:
        """The latest checkpoint (read onto the CPU), or None where the run has none yet."""
        for path in (self.checkpoint_path, self.path / LEGACY_CHECKPOINT):
            if path.is_file():
                return read_torch_file(path, keys=keys)
        return None

    @property
    def done(self) -> bool:
        return self.done_path.is_file()

    def done_summary(self) -> dict[str, Any]:
        """The ``done`` marker's summary (an old LLM run's step count as ``{"step": N}``)."""
        text = self.done_path.read_text()
        try:
            summary = json.loads(text)
        except json.JSONDecodeError:
            summary = None
        if isinstance(summary, dict):
            return summary
        if isinstance(summary, int):
            return {"step": summary}
        raise UserError(f"{str(self.done_path)!r} is not a done marker; remove it to rerun")

    def mark_done(self, summary: Mapping[str, Any]) -> None:
        atomic_write_json(self.done_path, dict(summary))

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the run's lock; a ``DivergedError`` inside leaves the ``diverged`` marker."""
        with RunLock(self.path), divergence_marker(self.path):
            yield
