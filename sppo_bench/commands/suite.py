"""``sppo-bench suite run|report``, ``sppo-bench plot curves|tail-effect|calibration`` and
``sppo-bench demo``: the control suite across seeds, its statistics and its figures."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from sppo_bench.analysis.runs import DEFAULT_FINAL_EVALS, DEFAULT_METRIC, EVAL_METRICS
from sppo_bench.commands.argtypes import int_at_least, unit_float
from sppo_bench.errors import UserError

DEMO_TASKS = ("cartpole", "mountaincar")
DEMO_ALGOS = ("sppo", "ppo-gae")
DEMO_SEEDS = 3
DEFAULT_STACK = 10  # seeds per job of `suite run` and the demo (seed-stacked training)
FIGURE_NAMES = {"curves": "learning_curves.png", "calibration": "calibration.png"}


def _add_run_args(parser: argparse.ArgumentParser, runs_dir: Path | None = Path("runs")) -> None:
    where = "run folder root" + ("" if runs_dir else " (default: <out>/runs)")
    parser.add_argument("--runs-dir", type=Path, default=runs_dir, help=where)
    parser.add_argument(
        "--executor", default="local", choices=("local", "ray"), help="local (process pool) or ray"
    )
    parser.add_argument("--ray-address", default=None, help="Ray cluster address (default: local)")
    parser.add_argument(
        "--workers",
        type=int_at_least(1),
        default=None,
        help="parallel runs (default: one per core)",
    )


def _add_report_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metric",
        default=DEFAULT_METRIC,
        choices=sorted(EVAL_METRICS),
        help="evaluation success used: stochastic or deterministic policy",
    )
    parser.add_argument(
        "--final-evals",
        type=int_at_least(1),
        default=DEFAULT_FINAL_EVALS,
        help="evaluation points averaged into a run's final success",
    )
    parser.add_argument(
        "--threshold", type=unit_float, default=0.8, help="success rate for sample efficiency"
    )


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    suite = subparsers.add_parser("suite", help="run the control suite over seeds; report")
    suite_sub = suite.add_subparsers(dest="suite_command", metavar="{run,report}", required=True)
    run = suite_sub.add_parser("run", help="run tasks x algorithms x seeds of a profile")
    run.add_argument("--profile", default="quick", help="quick, standard, paper or a .yaml path")
    run.add_argument(
        "--tasks", nargs="+", default=None, help="subset of the profile's tasks (default: all)"
    )
    run.add_argument(
        "--algos",
        nargs="+",
        default=None,
        help="override the profile's algorithms (default: the profile's)",
    )
    run.add_argument(
        "--seeds", type=int_at_least(1), default=None, help="seeds 0..N-1 (default: profile's)"
    )
    run.add_argument(
        "--variant",
        dest="variants",
        action="append",
        default=None,
        metavar="NAME",
        help="run only this declared variant (repeatable); with --set: define variant NAME "
        "(default: every declared variant)",
    )
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a task-spec override of the --variant being defined (repeatable)",
    )
    run.add_argument(
        "--stages-from",
        type=Path,
        default=None,
        metavar="DIR",
        help="take each expert/clone folder the runs folder lacks from DIR/control/<task>/ "
        "(e.g. a published cell's: results/control/study/stages/...), checked against the "
        "profile's settings; never trains them",
    )
    run.add_argument("--dry-run", action="store_true", help="list the runs and their state only")
    run.add_argument(
        "--stack",
        type=int_at_least(1),
        default=DEFAULT_STACK,
        help=f"seeds of one task and algorithm trained together in one process (default "
        f"{DEFAULT_STACK}; same results as one process per seed, faster)",
    )
    run.add_argument(
        "--no-stack",
        dest="stack",
        action="store_const",
        const=1,
        help="one process per seed (the same as --stack 1)",
    )
    _add_run_args(run)
    run.set_defaults(func=cmd_suite_run)
    report = suite_sub.add_parser("report", help="statistics tables of finished runs")
    report.add_argument("--runs-dir", type=Path, default=Path("runs"), help="run folder root")
    report.add_argument(
        "--out", type=Path, default=None, help="output folder (default: <runs-dir>/report)"
    )
    report.add_argument("--tasks", nargs="+", default=None, help="tasks (default: all found)")
    report.add_argument("--algos", nargs="+", default=None, help="algorithms (default: all found)")
    report.add_argument(
        "--include-unfinished", action="store_true", help="also use runs without a done marker"
    )
    _add_report_args(report)
    report.set_defaults(func=cmd_suite_report)

    plot = subparsers.add_parser("plot", help="figures from existing control runs")
    plot.add_argument(
        "figure",
        choices=("curves", "tail-effect", "calibration", "phase"),
        help="which figure: curves, tail-effect, calibration or phase",
    )
    plot.add_argument("--runs-dir", type=Path, default=Path("runs"), help="run folder root")
    plot.add_argument(
        "--out", type=Path, default=None, help="output folder (default: <runs-dir>/report/figures)"
    )
    plot.add_argument("--tasks", nargs="+", default=None, help="tasks (default: all found)")
    plot.add_argument("--algos", nargs="+", default=None, help="algorithms (default: all found)")
    plot.add_argument(
        "--metric",
        default=DEFAULT_METRIC,
        choices=sorted(EVAL_METRICS),
        help="evaluation success plotted: stochastic or deterministic policy",
    )
    plot.add_argument("--threshold", type=unit_float, default=None, help="draw this success level")
    plot.add_argument(
        "--include-unfinished", action="store_true", help="also use runs without a done marker"
    )
    plot.set_defaults(func=cmd_plot)

    demo = subparsers.add_parser(
        "demo", help="a few-minute real run: quick profile, 2 tasks, SPPO vs PPO-GAE, 3 seeds"
    )
    demo.add_argument(
        "--out", type=Path, default=Path("demo_output"), help="folder of the runs and the report"
    )
    demo.add_argument("--tasks", nargs="+", default=list(DEMO_TASKS), help="control tasks")
    demo.add_argument("--seeds", type=int_at_least(1), default=DEMO_SEEDS, help="seeds per arm")
    _add_run_args(demo, runs_dir=None)
    demo.set_defaults(func=cmd_demo)


def _print_result(result) -> None:
    print(
        f"suite: {len(result.finished)} run(s) finished, {len(result.skipped)} already done, "
        f"{len(result.failed)} failed, {result.wall_time_s:.0f} s"
    )
    for spec, reason in result.failed:
        print(f"  FAILED {spec}: {reason}")


def cmd_suite_run(args: argparse.Namespace) -> int:
    from sppo_bench.orchestration.plan import check_runs_match, plan_runs, run_state
    from sppo_bench.orchestration.profile import load_profile
    from sppo_bench.orchestration.stages import plan_stage_imports
    from sppo_bench.orchestration.suite import run_suite

    profile = load_profile(args.profile)
    specs = plan_runs(profile, args.tasks, args.algos, args.seeds, args.variants, args.overrides)
    check_runs_match(specs, args.runs_dir)
    imports = {}
    if args.stages_from is not None:  # checked before anything starts
        pending = [s for s in specs if run_state(s, args.runs_dir) != "done"]
        imports = plan_stage_imports(pending, args.runs_dir, args.stages_from)
    if args.dry_run:
        for item in imports.values():
            print(item.describe(args.stages_from))
        for spec in specs:
            state = run_state(spec, args.runs_dir)
            sets = " ".join((*spec.overrides, *(spec.variant.overrides if spec.variant else ())))
            print(f"{state:<7} {spec}  episodes={spec.episodes}  {sets}")
        return 0
    states = [run_state(spec, args.runs_dir) for spec in specs]
    print(
        f"suite {profile.name}: {len(specs)} runs: {states.count('done')} done (skipped), "
        f"{states.count('resume')} to resume, {states.count('new')} new; runs in {args.runs_dir}/"
    )
    result = run_suite(
        specs,
        args.runs_dir,
        args.executor,
        args.workers,
        args.ray_address,
        stack=args.stack,
        stages_from=args.stages_from,
    )
    _print_result(result)
    return 1 if result.failed else 0


def _report(args: argparse.Namespace, runs_dir: Path, out: Path):
    from sppo_bench.analysis.report import build_report, write_report

    report = build_report(
        runs_dir,
        tasks=args.tasks,
        algos=getattr(args, "algos", None),
        metric=args.metric,
        final_evals=args.final_evals,
        threshold=args.threshold,
        include_unfinished=getattr(args, "include_unfinished", False),
    )
    paths = write_report(report, runs_dir, out)
    print(report.markdown)
    _print_left_out(runs_dir, args.tasks, getattr(args, "algos", None), report)
    return paths


def _print_left_out(runs_dir: Path, tasks, algos, report) -> None:
    """Name the runs under ``runs_dir`` that the report did not use: unfinished or diverged."""
    from sppo_bench.analysis.runs import discover_runs

    columns = (report.runs[k] for k in ("task", "label", "seed"))
    used = set(zip(*columns, strict=True))
    left = [
        r for r in discover_runs(runs_dir, tasks, algos) if (r.task, r.label, r.seed) not in used
    ]
    excluded = dict(getattr(report, "excluded", []))
    for run in left:
        state = f"diverged: {run.diverged}" if run.diverged else "unfinished (no done marker)"
        state = excluded.get(f"{run.task}/{run.label}/seed{run.seed}", state)
        print(f"not in the report: {run.task}/{run.label}/seed{run.seed}: {state}")


def cmd_suite_report(args: argparse.Namespace) -> int:
    paths = _report(args, args.runs_dir, args.out or Path(args.runs_dir) / "report")
    print(f"wrote {paths['summary_csv']}, {paths['summary_md']}, {paths['runs_csv']}")
    print(f"per-run metrics CSVs under {paths['per_run_csv']}/")
    return 0


def draw_figure(
    figure: str,
    runs_dir: Path,
    out_dir: Path,
    tasks: list[str] | None = None,
    algos: list[str] | None = None,
    metric: str = DEFAULT_METRIC,
    threshold: float | None = None,
    include_unfinished: bool = False,
) -> list[Path]:
    """Draw one kind of figure from the runs under ``runs_dir`` into ``out_dir``."""
    from sppo_bench.analysis import figures
    from sppo_bench.analysis.runs import discover_runs

    if figure == "phase":
        return draw_phase(runs_dir, Path(out_dir), tasks, threshold)
    runs = discover_runs(runs_dir, tasks, algos, finished_only=not include_unfinished)
    out_dir = Path(out_dir)
    if figure == "curves":
        return [
            figures.plot_learning_curves(runs, out_dir / FIGURE_NAMES["curves"], metric, threshold)
        ]
    if figure == "calibration":
        return [figures.plot_calibration(runs, out_dir / FIGURE_NAMES["calibration"])]
    if figure == "tail-effect":
        return _tail_effect_figures(runs, runs_dir, out_dir)
    raise UserError(f"unknown figure {figure!r}; valid: curves, tail-effect, calibration, phase")


def draw_phase(
    runs_dir: Path, out_dir: Path, tasks: list[str] | None, threshold: float | None
) -> list[Path]:
    """Per task: the study's runs table, its PPO-GAE-minus-SPPO cells and their phase diagram
    (``sppo_bench.analysis.study``), and where a cell ran from several experts or clones, their
    spread (``spread_<task>.csv``); finished runs only."""
    from sppo_bench.analysis.runs import discover_runs
    from sppo_bench.analysis.study import phase_table, plot_phase, stage_spread, study_runs
    from sppo_bench.io import atomic_write_text

    level = 0.8 if threshold is None else threshold
    names = tasks or sorted({r.task for r in discover_runs(runs_dir, finished_only=True)})
    drawn = []
    for task in names:
        runs = study_runs(runs_dir, task, threshold=level)
        table = phase_table(runs)
        if table.empty:
            raise UserError(f"{task}: no PPO-GAE runs with SPPO runs of the same clone strength")
        atomic_write_text(out_dir / f"study_runs_{task}.csv", runs.to_csv(index=False))
        atomic_write_text(out_dir / f"phase_{task}.csv", table.to_csv(index=False))
        spread = stage_spread(runs, table)
        if not spread.empty:
            atomic_write_text(out_dir / f"spread_{task}.csv", spread.to_csv(index=False))
        title = (
            f"{task}: against SPPO at the same clone (threshold {level:g}; n = runs / SPPO runs)"
        )
        drawn.append(plot_phase(table, out_dir / f"phase_{task}.png", title))
    return drawn


def _tail_effect_figures(runs: list, runs_dir: Path, out_dir: Path) -> list[Path]:
    """Per task, one tail-effect figure per algorithm with a per-step critic (runs chosen by the
    registry's critic kind: PPO-GAE in ``tail_effect_<task>.png``, PPO-BCE in
    ``tail_effect_<task>_ppo-bce.png``), each beside the sequence critic's (SPPO) runs."""
    from sppo_bench.analysis import figures
    from sppo_bench.core.registry import critic_kind

    drawn = []
    for task in sorted({r.task for r in runs}, key=figures.task_order):
        task_runs = [r for r in runs if r.task == task and r.value_files()]
        sequence = [r for r in task_runs if critic_kind(r.algo) == "sequence"]
        steps = sorted({r.algo for r in task_runs if critic_kind(r.algo) in ("step", "step-bce")})
        for algo in steps or ([None] if sequence else []):
            chosen = sequence + [r for r in task_runs if r.algo == algo]
            name = f"tail_effect_{task}" + ("" if algo in (None, "ppo-gae") else f"_{algo}")
            drawn.append(figures.plot_tail_effect(chosen, task, out_dir / f"{name}.png"))
    if not drawn:
        raise UserError(f"no runs with a critic and values files under {str(runs_dir)!r}")
    return drawn


def cmd_plot(args: argparse.Namespace) -> int:
    paths = draw_figure(
        args.figure,
        args.runs_dir,
        args.out or Path(args.runs_dir) / "report" / "figures",
        args.tasks,
        args.algos,
        args.metric,
        args.threshold,
        args.include_unfinished,
    )
    for path in paths:
        print(f"wrote {path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Quick profile on two tasks, SPPO vs PPO-GAE; then the report and all figures."""
    from sppo_bench.orchestration.plan import plan_runs
    from sppo_bench.orchestration.profile import load_profile
    from sppo_bench.orchestration.suite import run_suite

    start = time.monotonic()
    out = Path(args.out)
    runs_dir = args.runs_dir or out / "runs"
    specs = plan_runs(load_profile("quick"), args.tasks, list(DEMO_ALGOS), args.seeds)
    workers = args.workers or max(1, os.cpu_count() or 1)
    print(
        f"demo: {len(specs)} runs ({', '.join(args.tasks)} x SPPO, PPO-GAE x {args.seeds} seeds) "
        f"on {workers} worker(s); runs in {runs_dir}/"
    )
    result = run_suite(
        specs, runs_dir, args.executor, workers, args.ray_address, stack=DEFAULT_STACK
    )
    _print_result(result)
    if not result.finished and not result.skipped:
        raise UserError("demo: no run finished; see the failures above")
    report_args = argparse.Namespace(
        tasks=args.tasks,
        algos=list(DEMO_ALGOS),
        metric=DEFAULT_METRIC,
        final_evals=DEFAULT_FINAL_EVALS,
        threshold=0.8,
    )
    paths = _report(report_args, runs_dir, out / "report")
    figures = []
    for figure in ("curves", "tail-effect", "calibration"):
        try:
            figures += draw_figure(
                figure,
                runs_dir,
                out / "report" / "figures",
                args.tasks,
                list(DEMO_ALGOS),
                threshold=0.8,
            )
        except UserError as exc:
            print(f"  no {figure} figure: {exc}")
    print(f"demo finished in {time.monotonic() - start:.0f} s")
    print(f"  summary table: {paths['summary_md']}  (CSV: {paths['summary_csv']})")
    for path in figures:
        print(f"  figure: {path}")
    return 1 if result.failed else 0
