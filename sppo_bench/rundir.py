"""One run folder, for both tracks: its layout and the contract every trainer keeps.

    runs/control/<task>/<stage>/ a control task's stages (``stage_dir``): expert, clone, and
                                 one folder per algorithm[@variant] holding seed<k>/ runs
    <run>/config.yaml            the resolved settings the run was started with
    <run>/metrics.jsonl          one JSON row per update (control) or step (LLM), appended
    <run>/checkpoints/latest.pt  the state a rerun resumes from (atomic; finite numbers only)
    <run>/done                   a JSON summary, written last: the run is finished
    <run>/diverged               the message of the DivergedError that stopped it (no done then)
    <run>/.lock                  held (flock) while a process writes the run

A rerun with other settings is refused (``check_config`` names the first differing key). The
lock removes folders it made if the run fails before its first metrics row; only a torn last
metrics line is repaired (``MetricsWriter``). ``RunSession``: what a trainer holds while it
writes one run (lock, metrics, divergence marker, ``Checkpoint``s naming what made them; a
resume checks both). Older run folders (an LLM run's ``checkpoint.pt``, a ``done`` holding the
step count, either track's checkpoint layout before ``Checkpoint``) are read as well.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from sppo_bench.config import write_yaml_atomic, yaml_round_trip
from sppo_bench.errors import DivergedError, UserError
from sppo_bench.io import (
    MetricsWriter,
    RunLock,
    atomic_torch_save,
    atomic_write_json,
    clear_diverged,
    mark_diverged,
    read_torch_file,
)

LEGACY_CHECKPOINT = "checkpoint.pt"  # LLM runs before the shared contract


def stage_dir(runs_dir: str | Path, task: str, stage: str) -> Path:
    """``<runs_dir>/control/<task>/<stage>``; ``task`` is a resolved (canonical) task name."""
    return Path(runs_dir) / "control" / task / stage


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
        try:
            summary = json.loads(self.done_path.read_text())
        except json.JSONDecodeError:
            summary = None
        if isinstance(summary, dict | int):
            return summary if isinstance(summary, dict) else {"step": summary}
        raise UserError(f"{str(self.done_path)!r} is not a done marker; remove it to rerun")

    def mark_done(self, summary: Mapping[str, Any]) -> None:
        atomic_write_json(self.done_path, dict(summary))

    def read_checkpoint(self) -> Checkpoint | None:
        """The latest checkpoint as a ``Checkpoint`` (either track's older layouts too), or
        None where the run has none yet."""
        for path in (self.checkpoint_path, self.path / LEGACY_CHECKPOINT):
            if path.is_file():
                return Checkpoint.from_blob(read_torch_file(path), path)
        return None


# --------------------------------------------------------------------------- what made a run
def config_hash(config: Mapping[str, Any], ignore: tuple[str, ...] = ()) -> str:
    """A short sha256 of the settings as ``config.yaml`` stores them, less the ``ignore``d
    ``"section.key"`` budget keys."""
    data = yaml_round_trip(dict(config))
    for dotted in ignore:
        section, key = dotted.split(".")
        if isinstance(data.get(section), dict):
            data[section].pop(key, None)
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RunIdentity:
    """What made a run: task (control task, or the LLM's training set), algorithm (run name),
    variant (None: the plain algorithm) and ``config_hash`` of its settings."""

    task: str
    algo: str
    variant: str | None
    config_hash: str

    def describe(self) -> str:
        name = self.algo + (f"@{self.variant}" if self.variant else "")
        return f"{self.task}/{name} (config {self.config_hash})"


# --------------------------------------------------------------------------- RNG streams
def rng_state() -> dict[str, Any]:
    """Every global random stream: Python's, NumPy's, torch's CPU and CUDA generators."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore ``rng_state()``. Torch's restore functions take CPU ``uint8`` tensors only, so
    each state is brought there first; CUDA states are restored for the devices that exist (a
    checkpoint from a machine with more GPUs keeps the first ones)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(_cpu_bytes(state["torch"]))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_cpu_bytes(s) for s in cuda][: torch.cuda.device_count()])


def _cpu_bytes(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(device="cpu", dtype=torch.uint8)


# --------------------------------------------------------------------------- one layout
CHECKPOINT_FORMAT = 2


@dataclass
class Checkpoint:
    """The one checkpoint layout of both tracks, stored flat in ``checkpoints/latest.pt``:

    ``format`` (2), ``identity`` (``RunIdentity`` as a dict: what made it), ``step`` (updates or
    steps done), ``state`` (the run's counters as its metrics rows name them, with the step:
    control ``update``, ``episodes``, ``env_steps``, ``wall_time``; LLM ``step``), one
    ``state_dict`` per network (``policy``, ``critic`` or None) and per optimiser
    (``policy_opt``, ``critic_opt``), and ``rng`` (``rng_state()`` at the save). ``identity`` is
    None in checkpoints written before identities were stored.
    """

    step: int
    networks: dict[str, Any]
    optimizers: dict[str, Any]
    rng: dict[str, Any] | None = None
    counters: dict[str, Any] = field(default_factory=dict)
    identity: RunIdentity | None = None

    def to_blob(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "identity": None if self.identity is None else dict(self.identity.__dict__),
            "step": self.step,
            "state": dict(self.counters),
            **self.networks,
            **{f"{name}_opt": state for name, state in self.optimizers.items()},
            "rng": self.rng,
        }

    @classmethod
    def from_blob(cls, blob: Any, path: Path) -> Checkpoint:
        """Today's layout, the control layout of before (no ``format``, no ``step``, no
        ``rng``) or the LLM one (the policy's optimiser as ``actor_opt``, no ``state``); anything
        else is a one-line error naming ``path``."""
        if not isinstance(blob, Mapping):
            raise UserError(f"checkpoint {str(path)!r} is not a mapping: not a run checkpoint")
        try:
            ident = blob.get("identity")
            if "state" in blob and "step" not in blob:  # control, before
                step = int(blob["state"]["update"])
            else:
                step = int(blob["step"])
            counters = dict(blob["state"]) if "state" in blob else {"step": step}
            policy_opt = blob["policy_opt"] if "policy_opt" in blob else blob["actor_opt"]
            return cls(
                step,
                {"policy": blob["policy"], "critic": blob.get("critic")},
                {"policy": policy_opt, "critic": blob.get("critic_opt")},
                blob.get("rng"),
                counters,
                RunIdentity(**ident) if ident else None,
            )
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(
                f"checkpoint {str(path)!r} has no {err}: not a run checkpoint of this project"
            ) from None

    def load_network(self, name: str, module: torch.nn.Module, path: Path) -> None:
        """``module.load_state_dict(networks[name])``; a missing entry or a shape that does not
        fit (another task's checkpoint) is a one-line error naming ``path``."""
        state = self.networks.get(name)
        if state is None:
            raise UserError(f"checkpoint {str(path)!r} has no {name} network")
        try:
            module.load_state_dict(state)
        except RuntimeError:
            raise UserError(
                f"checkpoint {str(path)!r}: its {name} network does not fit this run's "
                "(another task or model); use another run folder or remove that one"
            ) from None


# --------------------------------------------------------------------------- the session
class RunSession:
    """What a trainer holds while it writes one run: the lock (``with session:``), the metrics
    file, the divergence marker, and ``Checkpoint``s stamped with ``identity``.

    ``step_key``: the metrics rows' counter (``update`` from 0, or ``step`` from 1 = ``first``).
    ``resume()`` refuses, with one line, a checkpoint that another run made (its identity
    differs) and a metrics file whose rows do not run ``first..m`` without gap or repeat with
    ``m`` at least the checkpoint's step; rows after the checkpoint (a stop between two saves)
    are dropped.
    """

    def __init__(
        self,
        path: str | Path,
        identity: RunIdentity,
        step_key: str,
        first: int,
        tensorboard: str | Path | None = None,
        wait: bool = False,
    ) -> None:
        self.dir = RunDir(path)
        self.wait = wait  # for a lock another process holds (else a one-line error)
        self.identity, self.step_key, self.first = identity, step_key, first
        self.tensorboard = tensorboard
        self._metrics: MetricsWriter | None = None
        self._lock: RunLock | None = None

    @property
    def metrics(self) -> MetricsWriter:
        """The metrics file's writer, made at the first use (after the lock: a folder that the
        lock made is removed again if the run fails before its first row)."""
        if self._metrics is None:
            self._metrics = self.dir.metrics(self.tensorboard)
        return self._metrics

    @property
    def path(self) -> Path:
        return self.dir.path

    def __enter__(self) -> RunSession:
        self._lock = RunLock(self.path, self.wait)
        self._lock.__enter__()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if isinstance(exc, DivergedError):
            mark_diverged(self.path, exc)
        if self._metrics is not None:
            self._metrics.close()
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.__exit__(exc_type, exc, tb)

    def resume(self) -> Checkpoint | None:
        """The checkpoint to continue from (metrics cut back to it), or None for a fresh start
        (metrics emptied)."""
        ckpt = self.dir.read_checkpoint()
        if ckpt is None:
            self.metrics.truncate_after(self.step_key, self.first - 1)
            return None
        where = self.dir.checkpoint_path
        if ckpt.identity is not None and ckpt.identity != self.identity:
            raise UserError(
                f"checkpoint {str(where)!r} was made by {ckpt.identity.describe()}, not by "
                f"this run's {self.identity.describe()}; use another run folder or remove it"
            )
        steps = [row.get(self.step_key) for row in self.metrics.rows()]
        last = self.first - 1 + len(steps)
        if steps != list(range(self.first, last + 1)) or last < ckpt.step:
            raise UserError(
                f"{str(self.metrics.path)!r} does not hold rows {self.step_key} {self.first}.."
                f"{ckpt.step} in order once each (the checkpoint is at {ckpt.step}); the "
                "history would not be whole: restore that file or remove the run folder"
            )
        self.metrics.truncate_after(self.step_key, ckpt.step)
        return ckpt

    def save(self, ckpt: Checkpoint) -> None:
        """Write ``ckpt`` (stamped with this run's identity) atomically; ``DivergedError`` where
        a tensor is not finite (the older checkpoint stays)."""
        ckpt.identity = self.identity
        self.dir.save_checkpoint(ckpt.to_blob())

    def append(self, row: Mapping[str, Any]) -> None:
        self.metrics.append(row)

    def diverged(self, err: DivergedError) -> None:
        """Leave the ``diverged`` marker (the run stops; no ``done``)."""
        mark_diverged(self.path, err)

    def finish(self, summary: Mapping[str, Any]) -> None:
        """``done`` (written last) and no stale ``diverged`` marker."""
        self.dir.mark_done(summary)
        clear_diverged(self.path)
