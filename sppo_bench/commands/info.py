"""``sppo-bench estimators``: list the registered advantage estimators and what they need."""

from __future__ import annotations

import argparse

from sppo_bench.core import ESTIMATORS


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "estimators", help="list the advantage estimators of the shared core"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print(f"{'name':<10} {'aliases':<14} {'critic':<9} {'groups':<7} {'greedy':<7} N")
    for spec in ESTIMATORS.values():
        aliases = ",".join(a for a in (spec.name, *spec.aliases) if a != spec.run_name) or "-"
        print(
            f"{spec.run_name:<10} {aliases:<14} {spec.critic:<9} {str(spec.needs_groups):<7} "
            f"{str(spec.needs_greedy_baseline):<7} {spec.group_size}"
        )
    return 0
