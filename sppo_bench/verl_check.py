"""Refuse a verl launch unless the SPPO plugin is registered: `python -m sppo_bench.verl_check`.

``import verl`` imports every module of the ``verl.plugins`` entry-point group and logs one that
fails to import at DEBUG level only. A broken install would then load the models, run a full
validation pass on upstream's sync trainer and only fail at the first advantage step
(``Unknown advantage estimator``). The launch scripts (``llm/verl/sppo_verl.sh``) run this first,
before Ray starts. After ``import verl`` it checks, in this Python:

- the ``sppo`` entry point of ``verl.plugins`` is installed and names ``sppo_bench.verl_plugin``
  (Ray does not ship the package: every node needs ``pip install -e .``), and
  ``VERL_USE_EXTERNAL_PLUGINS`` does not keep verl from loading it;
- the plugin module imported (if it did not, its own error is shown);
- verl's ``sync`` trainer is :class:`sppo_bench.verl_plugin.SPPOTrainerSync` and ``sppo`` is a
  registered advantage estimator.

Exit 0 with one line on stdout, or 1 with one line on stderr naming what is wrong. This module
does not import the plugin before verl has had its chance to load it.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import warnings

PLUGIN = "sppo_bench.verl_plugin"
ENTRY_POINT = "sppo"
INSTALL = "install the project into this Python on every node (pip install -e .)"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def problem() -> str | None:
    """What keeps SPPO from running on verl in this Python, or None when it is registered."""
    try:
        import verl
    except Exception as exc:  # noqa: BLE001 -- any import failure is reported in one line
        return f"cannot import verl ({_first_line(exc)}); pip install -e '.[verl]'"
    from importlib.metadata import entry_points

    found = {ep.name: ep.value for ep in entry_points(group="verl.plugins")}
    if found.get(ENTRY_POINT) != PLUGIN:
        return f"the verl.plugins entry point {ENTRY_POINT!r} is not installed; {INSTALL}"
    policy = os.getenv("VERL_USE_EXTERNAL_PLUGINS", "auto").strip().lower()
    allowed = {name.strip() for name in policy.split(",")}
    if policy != "auto" and ENTRY_POINT not in allowed:
        return (
            f"VERL_USE_EXTERNAL_PLUGINS={policy} keeps verl from loading the {ENTRY_POINT!r} "
            "plugin; unset it or add sppo to it"
        )
    plugin = sys.modules.get(PLUGIN)
    if plugin is None:  # verl swallowed the error: import it again to show it
        try:
            importlib.import_module(PLUGIN)
        except Exception as exc:  # noqa: BLE001
            return f"verl could not load {PLUGIN} ({_first_line(exc)})"
        return f"verl {verl.__version__} did not load {PLUGIN}"
    from verl.trainer.ppo.core_algos import get_adv_estimator_fn
    from verl.trainer.ppo.v1 import get_trainer_cls

    trainer = get_trainer_cls("sync")
    if trainer is not plugin.SPPOTrainerSync:
        return (
            f"verl's 'sync' trainer is {trainer.__module__}.{trainer.__qualname__}, "
            f"not {PLUGIN}.SPPOTrainerSync"
        )
    try:
        get_adv_estimator_fn(ENTRY_POINT)
    except ValueError:
        return f"{ENTRY_POINT!r} is not a registered verl advantage estimator"
    return None


def main() -> int:
    logging.disable(logging.WARNING)  # verl's import-time notices; the verdict is one line
    warnings.simplefilter("ignore")
    found = problem()
    if found is not None:
        print(f"verl_check: {found}", file=sys.stderr)
        return 1
    import verl

    print(f"verl_check: ok (verl {verl.__version__}: sppo estimator and sync trainer registered)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
