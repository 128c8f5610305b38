"""Atomic writes and small run-directory helpers shared by both tracks.

Files are written through a temp file and ``os.replace``; they get the mode a plain ``open``
would give (0666 less the umask, or the replaced file's mode), not ``mkstemp``'s 0600, so that
group members on a shared file system can read them. Checkpoints and metric rows refuse
non-finite numbers (``DivergedError``): a diverged run never overwrites its last good state.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from sppo_bench.errors import DivergedError, UserError


def _plain_mode(path: Path) -> int:
    """The mode ``open(path, "w")`` would leave: the existing file's, else 0666 & ~umask."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return 0o666 & ~_umask()


def _replace_atomically(path: str | os.PathLike[str], write: Callable[[str], None]) -> None:
    """``write(tmp)`` a temp file in ``path``'s folder, give it a plain file's mode, then
    ``os.replace`` it onto ``path``; on any failure the temp file is removed and ``path`` is as
    it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, _plain_mode(path))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder and ``os.replace``."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())

    _replace_atomically(path, write)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Atomic text write (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Atomic JSON write, indented."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def non_finite_tensor(obj: Any, where: str = "") -> str | None:
    """The path (``"policy.layer.weight"``) of the first floating tensor in a nested
    dict / list / tuple holding a NaN or an infinity, or None."""
    if isinstance(obj, torch.Tensor):
        finite = not obj.is_floating_point() or bool(torch.isfinite(obj).all())
        return None if finite else where or "<tensor>"
    if isinstance(obj, Mapping):
        items = obj.items()
    elif isinstance(obj, list | tuple):
        items = enumerate(obj)
    else:
        return None
    for key, value in items:
        found = non_finite_tensor(value, f"{where}.{key}" if where else str(key))
        if found is not None:
            return found
    return None


def atomic_torch_save(path: str | os.PathLike[str], obj: Any) -> None:
    """``torch.save`` through a temp file and rename, so a reader never sees half a checkpoint.

    Raises ``DivergedError`` (and writes nothing) if a floating tensor in ``obj`` is not finite.
    """
    path = Path(path)
    bad = non_finite_tensor(obj)
    if bad is not None:
        raise DivergedError(
            f"non-finite values in {bad}: the run diverged; {path.name} was not overwritten "
            "(it holds the last finite state)"
        )
    _replace_atomically(path, lambda tmp: torch.save(obj, tmp))


def read_torch_file(
    path: str | os.PathLike[str], what: str = "checkpoint", keys: tuple[str, ...] = ()
) -> Any:
    """``torch.load`` onto the CPU (full unpickling: the project's own files); a missing, empty,
    truncated or foreign file, or one without the mapping ``keys``, is a one-line ``UserError``
    naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {str(path)!r} does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        kind = "empty" if path.stat().st_size == 0 else f"unreadable ({type(exc).__name__})"
        raise UserError(
            f"{what} {str(path)!r} is {kind}: not a file this project wrote, or cut short; "
            "remove it (a rerun rebuilds it) or point at another file"
        ) from None
    missing = [k for k in keys if not isinstance(data, Mapping) or k not in data]
    if missing:
        raise UserError(f"{what} {str(path)!r} has no {missing[0]!r}: not a {what} of this kind")
    return data


class MetricsWriter:
    """Append one JSON object per line to ``path`` and flush after each row (JSONL).

    On resume, ``truncate_after(step_key, step)`` drops rows newer than the checkpoint so that a
    resumed run never duplicates or skips a row. Only a torn LAST line (a process killed while
    writing it) is skipped; an unreadable line anywhere else is a ``UserError`` naming the file
    and line, so that no later rows are silently dropped. A row with a non-finite number is
    refused with ``DivergedError`` (strict JSON has no NaN); ``strict=False`` (benchmark tables,
    not runs) writes and reads NaN as Python's ``json`` does.

    ``tensorboard``: a folder where every appended row's numbers are also written as TensorBoard
    scalars under the same names, at the row's ``update`` (control) or ``step`` (LLM); after a
    resume, events past the checkpoint are purged, as the rows are.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        strict: bool = True,
        tensorboard: str | os.PathLike[str] | None = None,
    ) -> None:
        self.path = Path(path)
        self.strict = strict
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tensorboard = Path(tensorboard) if tensorboard is not None else None
        self._board: Any = None
        self._purge_step: int | None = None

    def rows(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        try:
            lines = self.path.read_bytes().decode("utf-8").splitlines()
        except UnicodeDecodeError as err:
            msg = f"{self.path}: not UTF-8 text (byte {err.start}); not a metrics file"
            raise UserError(msg) from None
        while lines and not lines[-1].strip():
            lines.pop()
        out = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line, parse_constant=_refuse_constant if self.strict else None)
            except (json.JSONDecodeError, ValueError):
                if number == len(lines):
                    break  # a torn last line from a killed process
                raise UserError(
                    f"{self.path}:{number}: not a JSON row (only a torn last line is repaired); "
                    "fix or remove that line"
                ) from None
            if not isinstance(row, dict):
                raise UserError(f"{self.path}:{number}: a row must be a JSON object")
            out.append(row)
        return out

    def truncate_after(self, key: str, value: float) -> None:
        self._purge_step = int(value) + 1
        kept = [r for r in self.rows() if r.get(key, -1) <= value]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def append(self, row: Mapping[str, Any]) -> None:
        bad = [k for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)]
        if bad and self.strict:
            where = {k: row[k] for k in ("step", "update") if k in row}
            raise DivergedError(
                f"non-finite {', '.join(f'{k}={row[k]}' for k in bad)} at {where or 'a row'} "
                f"of {self.path}: the run diverged; earlier rows and the last finite "
                "checkpoint are kept"
            )
        with self.path.open("a") as handle:
            handle.write(json.dumps(dict(row), allow_nan=not self.strict) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        if self.tensorboard is not None:
            self._to_tensorboard(row)

    def _to_tensorboard(self, row: Mapping[str, Any]) -> None:
        step = next((int(row[k]) for k in ("update", "step") if k in row), None)
        if self._board is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UserError(
                    "--tensorboard needs TensorBoard: pip install tensorboard"
                ) from None
            self._board = SummaryWriter(str(self.tensorboard), purge_step=self._purge_step)
        for key, value in row.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                self._board.add_scalar(key, value, global_step=step)
        self._board.flush()

    def close(self) -> None:
        """Close the TensorBoard writer, if any (the JSONL file is closed after every row)."""
        if self._board is not None:
            self._board.close()
            self._board = None


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


DIVERGED = "diverged"


@contextmanager
def divergence_marker(run_dir: Path) -> Iterator[None]:
    """Training inside: a ``DivergedError`` leaves ``<run_dir>/diverged`` holding its message
    (reports list such runs) and propagates; a run that gets through removes a stale marker."""
    try:
        yield
    except DivergedError as err:
        mark_diverged(run_dir, err)
        raise
    clear_diverged(run_dir)


def mark_diverged(run_dir: Path, err: DivergedError) -> None:
    """``<run_dir>/diverged`` holding the error's message (reports list such runs)."""
    atomic_write_text(Path(run_dir) / DIVERGED, f"{err}\n")


def clear_diverged(run_dir: Path) -> None:
    """Remove a stale ``diverged`` marker: the run got through."""
    (Path(run_dir) / DIVERGED).unlink(missing_ok=True)


class RunLock:
    """An OS file lock on ``<run_dir>/.lock`` held while a run folder is written.

    ``flock`` locks die with their process, so a lock left by a killed process is recognised as
    stale and taken over. A folder locked by a live process is a ``UserError`` naming its PID.
    Usable as a context manager. Folders it creates are removed again if the body fails before
    writing any metrics (a refused or crashed start leaves nothing behind). ``wait=True``: a
    folder locked by a live process is waited for instead (a second suite of the same runs).
    """

    def __init__(self, run_dir: str | os.PathLike[str], wait: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.wait = wait
        self._fd: int | None = None
        self._created: Path | None = None  # the outermost folder this lock made

    def __enter__(self) -> RunLock:
        missing = self.run_dir
        while not missing.parent.exists() and missing.parent != missing:
            missing = missing.parent
        self._created = None if self.run_dir.exists() else missing
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / ".lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if self.wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise UserError(
                f"{str(self.run_dir)!r} is being written by another process (PID {holder}); "
                "wait for it to finish or stop it"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        started = (self.run_dir / "metrics.jsonl").exists()
        if exc_type is not None and self._created is not None and not started:
            shutil.rmtree(self._created, ignore_errors=True)


@contextmanager
def waiting_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an OS file lock on ``path`` (made if missing), waiting while another process holds
    it: work that two processes may start at once (a task's expert and clone stages) runs once.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def replace_dir(dest: str | os.PathLike[str], build: Callable[[Path], Any]) -> Any:
    """Fill a fresh temp folder beside ``dest`` with ``build(folder)``, then put it in
    ``dest``'s place (two renames; the old folder is deleted after), so that ``dest`` never mixes
    old and new files and a failed ``build`` leaves ``dest`` as it was. Returns build's result."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fresh = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.new-"))
    try:
        result = build(fresh)
        os.chmod(fresh, 0o777 & ~_umask())  # mkdtemp's 0700 would hide it from the group
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        if dest.exists():
            os.replace(dest, old)
        os.replace(fresh, dest)
    except BaseException:
        shutil.rmtree(fresh, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return result


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask
