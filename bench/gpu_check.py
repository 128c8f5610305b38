"""One-command GPU check of the LLM track (run it through ``bash bench/gpu_check.sh``).

    bash bench/gpu_check.sh                      # one CUDA GPU: the check below, about 7 min
    bash bench/gpu_check.sh --device cpu         # a dry run of every part at toy sizes

Parts, in order, each a subprocess with a time cap; the whole check stops at ``--budget-s``
(default 470 s), and a part the budget cuts short is reported as such with what it finished:

1. ``tests``: the tests that need CUDA (``CUDA_TESTS``; on a CPU only their names, ``-k cuda``).
2. ``toy-resume``: ``llm train`` with ``llm/toy-arithmetic.yaml`` on the device (SPPO, no warm
   start, ``TOY_STEPS`` steps, a checkpoint every 2), killed (SIGKILL) once ``TOY_KILL_AFTER``
   metrics rows exist, then rerun: the rerun must finish and the metrics rows must be steps
   1..N, each once.
3. ``hf-generation``: ``bench/hf_generation.py`` (all three variants).
4. ``profile-fp32`` and 5. ``profile-bf16-static``: ``bench/llm_step_profile.py`` without and
   with ``rollout.generation_dtype=bfloat16,rollout.static_cache=true``.

Sizes on CUDA are smaller than the published runs so that the check fits 8 minutes on one H200;
each part's settings (and the published ones) are written into the summary. Outputs, at most 7
files: ``gpu_check.log`` (every part's output), ``summary.{md,json}``, ``hf_generation.csv``,
``step_profile_fp32.csv``, ``step_profile_bf16_static.csv``, ``toy_resume_metrics.jsonl``; in
``<out-root>/gpu_check_<device>_<commit>/`` (out-root: ``results/llm`` on CUDA, ``runs/gpu_check``
on a CPU) and, when ``$OUT`` is set, also in ``$OUT/gpu_check_<device>_<commit>/``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CUDA_TESTS = ("tests/test_llm_devices.py", "tests/test_llm_vllm_engine.py")
PARTS = ("tests", "toy-resume", "hf-generation", "profile-fp32", "profile-bf16-static")
FAST = ("rollout.generation_dtype=bfloat16", "rollout.static_cache=true")
TOY_STEPS = {"cuda": 8, "cpu": 40}
TOY_KILL_AFTER = 3
# time cap per part (s) on CUDA, and the expected time on one H200 (estimated from the H100
# figures in results/llm/llm_step_profile_h100_13e357c.md and hf_generation's first-call compile
# time there, 40-57 s per shape; not yet measured on an H200)
CAP_S = {"tests": 90, "toy-resume": 90, "hf-generation": 150, "profile-fp32": 100,
         "profile-bf16-static": 200}  # fmt: skip
EXPECTED_S = {"tests": 35, "toy-resume": 45, "hf-generation": 110, "profile-fp32": 70,
              "profile-bf16-static": 150}  # fmt: skip
TRAIN = (
    "import argparse, sys\n"
    "from sppo_bench.commands import llm\n"
    "from sppo_bench.errors import UserError\n"
    "p = argparse.ArgumentParser(prog='llm-train'); llm.add_parser(p.add_subparsers())\n"
    "a = p.parse_args(sys.argv[1:])\n"
    "try:\n    sys.exit(a.func(a))\n"
    "except UserError as e:\n    sys.exit(f'llm train: error: {e}')\n"
)  # ``llm train`` without the CLI's other tracks (the control track needs gymnasium)


def settings(device: str) -> dict[str, list[str]]:
    """Each part's command-line arguments on ``device`` (CUDA: reduced sizes; CPU: toy sizes)."""
    cuda = device == "cuda"
    profile = (
        ["--sizes", "0.5b", "--sppo-critic", "0.5b", "--algos", "sppo", "grpo", "--prompts", "8",
         "--max-new-tokens", "256", "--generation-batch-size", "64"]
        if cuda else
        ["--sizes", "tiny:xs", "--sppo-critic", "tiny:xs", "--algos", "sppo", "grpo",
         "--prompts", "2", "--max-new-tokens", "8", "--generation-batch-size", "16",
         "--threads", "1"]
    )  # fmt: skip
    toy = ["train.batch_size=64", "algo.mini_batch_size=32", "train.micro_batch_size=64"]
    if not cuda:
        toy = ["model.policy=tiny:xs", "train.batch_size=4", "algo.mini_batch_size=2",
               "train.micro_batch_size=4", "rollout.max_new_tokens=8"]  # fmt: skip
    toy += [f"train.steps={TOY_STEPS[device]}", "train.save_every=2", "critic.warmup_steps=1",
            "model.init=null", "model.init_builder=null", f"train.device={device}",
            "rollout.engine=hf"]  # fmt: skip
    return {
        "tests": ["-q", "-p", "no:cacheprovider", *CUDA_TESTS] + ([] if cuda else ["-k", "cuda"]),
        "toy-resume": toy,
        "hf-generation": (
            ["--rows", "64", "--new-tokens", "256", "--repeats", "1"]
            if cuda
            else ["--model", "tiny:xs", "--rows", "4", "--new-tokens", "8", "--repeats", "1"]
        ),
        "profile-fp32": profile + ["--warmup", "1", "--steps", "1"],
        "profile-bf16-static": profile
        + ["--warmup", "1", "--steps", "1", "--set", FAST[0], "--set", FAST[1]],
    }


PUBLISHED = {
    "hf-generation": "published: --rows 64 256 --new-tokens 512 --repeats 2",
    "profile-fp32": "published: --sizes 0.5b 1.5b, 3 algorithms, --prompts 32, 512 new tokens",
    "profile-bf16-static": "published: as profile-fp32",
    "toy-resume": "published toy: 256 prompts/step, 64 steps, from the SFT warm start",
}


class Check:
    """Runs the parts, keeps the log and the summary, and copies the outputs where they go."""

    def __init__(self, args: argparse.Namespace, device_name: str, commit: str) -> None:
        self.args, self.device, self.device_name = args, args.device, device_name
        slug = re.sub(r"[^a-z0-9]+", "-", device_name.lower().replace("nvidia", "")).strip("-")
        self.name = f"gpu_check_{slug or args.device}_{commit}"
        self.out = Path(args.out_root) / self.name
        self.mirror = Path(os.environ["OUT"]) / self.name if os.environ.get("OUT") else None
        shutil.rmtree(self.out, ignore_errors=True)
        self.out.mkdir(parents=True)
        self.scratch = Path(tempfile.mkdtemp(prefix="gpu_check_"))
        self.start = time.monotonic()
        self.deadline = self.start + args.budget_s
        self.settings = settings(args.device)
        self.summary: dict = {
            "device": args.device, "device_name": device_name, "commit": commit,
            "python": platform.python_version(), "load_average": os.getloadavg(),
            "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
            "budget_s": args.budget_s, "parts": [],
        }  # fmt: skip

    def log(self, text: str) -> None:
        with open(self.out / "gpu_check.log", "a") as f:
            f.write(text if text.endswith("\n") else text + "\n")

    def run(self, argv: list[str], cap: float, tag: str) -> tuple[int | None, str]:
        """Run ``argv`` in the repository root, at most ``cap`` s and never past the deadline;
        (exit status or None when cut short, its output). The output goes to the log."""
        limit = max(1.0, min(cap, self.deadline - time.monotonic()))
        self.log(f"\n===== {tag}: {' '.join(argv[:1] + [a[:80] for a in argv[1:]])}")
        with open(self.scratch / "part.out", "w+") as sink:
            proc = subprocess.Popen(argv, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT,
                                    start_new_session=True)  # fmt: skip
            try:
                rc: int | None = proc.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                rc = None
            sink.seek(0)
            text = sink.read()[-400_000:]
        self.log(text + f"----- {tag}: exit {rc if rc is not None else f'cut at {limit:.0f} s'}")
        return rc, text

    def python(self, *argv: str) -> list[str]:
        return [sys.executable, *argv]

    def part(self, name: str) -> None:
        t0 = time.monotonic()
        cap = CAP_S[name] * (3 if self.device == "cpu" else 1)
        entry = {"part": name, "settings": " ".join(self.settings[name]),
                 "published": PUBLISHED.get(name, ""), "cap_s": cap,
                 "expected_h200_s": EXPECTED_S[name]}  # fmt: skip
        if time.monotonic() >= self.deadline - 5:
            entry.update(status="skipped (budget spent)", wall_s=0.0)
        else:
            getattr(self, "part_" + name.replace("-", "_"))(entry, cap)
            entry["wall_s"] = round(time.monotonic() - t0, 1)
        self.summary["parts"].append(entry)
        print(f"[gpu_check] {name}: {entry['status']} in {entry['wall_s']} s", flush=True)
        self.write_summary()

    def part_tests(self, entry: dict, cap: float) -> None:
        rc, text = self.run(self.python("-m", "pytest", *self.settings["tests"]), cap, "tests")
        lines = [x for x in text.splitlines() if re.search(r"\d+ (passed|failed|skipped)", x)]
        entry["result"] = lines[-1].strip("= ") if lines else ""
        entry["status"] = "ok" if rc == 0 else ("cut short" if rc is None else "FAILED")

    def part_toy_resume(self, entry: dict, cap: float) -> None:
        run_dir = self.scratch / "toy"
        argv = self.python("-c", TRAIN, "llm", "train", "--recipe", "llm/toy-arithmetic.yaml",
                           "--algo", "sppo", "--run-dir", str(run_dir))  # fmt: skip
        for s in self.settings["toy-resume"]:
            argv += ["--set", s]
        metrics = run_dir / "metrics.jsonl"
        self.log(f"\n===== toy-resume (killed once {TOY_KILL_AFTER} rows exist)")
        t_end = min(time.monotonic() + cap, self.deadline)
        with open(self.scratch / "toy1.out", "w+") as sink:
            proc = subprocess.Popen(argv, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT,
                                    start_new_session=True)  # fmt: skip
            while (
                proc.poll() is None and time.monotonic() < t_end and rows(metrics) < TOY_KILL_AFTER
            ):
                time.sleep(0.05)
            killed_at = len(step_rows(metrics))
            finished = proc.poll() is not None
            if not finished:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            sink.seek(0)
            self.log(sink.read()[-200_000:] + f"----- first run: killed={not finished}")
        entry["rows_at_kill"] = killed_at
        if finished or killed_at < TOY_KILL_AFTER:
            why = "the run ended before the kill" if finished else "no rows before the cap"
            entry.update(status=f"FAILED ({why})")
            return
        entry["checkpoint_step_at_kill"] = checkpoint_step(run_dir / "checkpoints" / "latest.pt")
        rc, text = self.run(argv, t_end - time.monotonic(), "toy-resume: rerun")
        steps = [r["step"] for r in step_rows(metrics)]
        want = list(range(1, TOY_STEPS[self.device] + 1))
        entry["steps_after_resume"] = steps
        contiguous = steps == want
        done = (run_dir / "done").exists()
        if metrics.exists():
            shutil.copyfile(metrics, self.out / "toy_resume_metrics.jsonl")
        ok = rc == 0 and contiguous and done
        entry["result"] = (
            f"killed after {killed_at} rows (checkpoint at step {entry['checkpoint_step_at_kill']})"
            f"; rerun exit {rc}; rows {'are' if contiguous else 'are NOT'} steps 1..{want[-1]}"
            f" once each; finished marker {'present' if done else 'missing'}"
        )
        entry["status"] = "ok" if ok else ("cut short" if rc is None else "FAILED")

    def part_hf_generation(self, entry: dict, cap: float) -> None:
        out = self.scratch / "hf"
        argv = self.python("bench/hf_generation.py", "--device", self.device, "--out", str(out),
                           *self.settings["hf-generation"])  # fmt: skip
        rc, _ = self.run(argv, cap, "hf-generation")
        table = out / f"hf_generation_{self.device}.csv"
        if table.exists():
            shutil.copyfile(table, self.out / "hf_generation.csv")
            entry["table"] = (out / f"hf_generation_{self.device}.md").read_text()
            with open(table) as f:
                speeds = [
                    f"{r['variant']} {float(r['tokens_per_s']):,.0f}" for r in csv.DictReader(f)
                ]
            entry["result"] = "tokens/s: " + ", ".join(speeds)
        entry["status"] = "ok" if rc == 0 and table.exists() else (
            "cut short" if rc is None else "FAILED")  # fmt: skip

    def profile(self, name: str, entry: dict, cap: float) -> None:
        out = self.scratch / name
        argv = self.python("bench/llm_step_profile.py", "--device", self.device, "--out", str(out),
                           *self.settings[name])  # fmt: skip
        rc, _ = self.run(argv, cap, name)
        done = step_rows(out / "llm_step_profile.partial.jsonl", key="policy")
        if done:  # the finished rows, whether or not the whole grid finished
            dest = self.out / f"step_profile_{name.removeprefix('profile-').replace('-', '_')}.csv"
            write_csv(dest, done)
        md = out / "llm_step_profile.md"
        entry["table"] = md.read_text() if md.exists() else ""
        entry["rows"] = len(done)
        steps = [f"{r['algo']} {r['time_step']:.2f}" for r in done if r.get("status") == "ok"]
        entry["result"] = (
            "step s: "
            + ", ".join(steps)
            + "".join(f"; {r['algo']} {r['status']}" for r in done if r.get("status") != "ok")
        )
        entry["status"] = "ok" if rc == 0 else ("cut short" if rc is None else "FAILED")

    def part_profile_fp32(self, entry: dict, cap: float) -> None:
        self.profile("profile-fp32", entry, cap)

    def part_profile_bf16_static(self, entry: dict, cap: float) -> None:
        self.profile("profile-bf16-static", entry, cap)

    def write_summary(self) -> None:
        s = self.summary
        s["wall_s"] = round(time.monotonic() - self.start, 1)
        (self.out / "summary.json").write_text(json.dumps(s, indent=1) + "\n")
        md = [f"# GPU check: {s['device_name']}, commit {s['commit']}", "",
              f"Started {s['started_utc']} UTC; {s['wall_s']} s in all (budget {s['budget_s']} s); "
              f"load average at start {', '.join(f'{x:.2f}' for x in s['load_average'])}.", "",
              "| part | status | wall s | cap s | expected on H200 s | result |",
              "|---|---|---|---|---|---|"]  # fmt: skip
        for p in s["parts"]:
            md.append(f"| {p['part']} | {p['status']} | {p['wall_s']} | {p['cap_s']} | "
                      f"{p['expected_h200_s']} | {p.get('result', '')} |")  # fmt: skip
        for p in s["parts"]:
            md += ["", f"## {p['part']}", "", f"Settings: `{p['settings']}`"]
            md += [f"(smaller than the {p['published']})"] if p["published"] else []
            md += ["", p["table"]] if p.get("table") else []
        (self.out / "summary.md").write_text("\n".join(md) + "\n")
        if self.mirror is not None:
            shutil.copytree(self.out, self.mirror, dirs_exist_ok=True)


def rows(path: Path) -> int:
    """Complete lines in a JSONL file (0 when it does not exist)."""
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def step_rows(path: Path, key: str = "step") -> list[dict]:
    """The JSON rows of ``path`` that hold ``key`` (a torn last line is skipped)."""
    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if key in row:
                out.append(row)
    return out


def checkpoint_step(path: Path) -> int | None:
    if not path.exists():
        return None
    import torch

    return int(torch.load(path, map_location="cpu", weights_only=False)["step"])


def write_csv(path: Path, table: list[dict]) -> None:
    buf = io.StringIO()
    fields = list(dict.fromkeys(k for r in table for k in r))
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    path.write_text(buf.getvalue())


def commit_id() -> str:
    """``$GPU_CHECK_COMMIT``, else git's short hash (``+dirty`` with local changes), else
    ``src-`` and a hash of the tracked sources (a copy of the tree without ``.git``)."""
    if os.environ.get("GPU_CHECK_COMMIT"):
        return re.sub(r"[^A-Za-z0-9.+-]", "", os.environ["GPU_CHECK_COMMIT"])
    git = ["git", "-C", str(ROOT)]
    try:
        head = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(git + ["status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()  # fmt: skip
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        digest = hashlib.sha1()
        for path in sorted(ROOT.glob("sppo_bench/**/*.py")) + sorted(ROOT.glob("bench/*.py")):
            digest.update(path.read_bytes())
        return "src-" + digest.hexdigest()[:7]


def probe(device: str) -> str:
    """The device's name from a child process (this one never touches CUDA); a one-line exit
    where the device or the LLM track's imports are missing."""
    code = (
        "import sys, torch, transformers, math_verify, sppo_bench.llm.trainer\n"
        "if sys.argv[1] == 'cuda' and not torch.cuda.is_available():\n"
        "    sys.exit(f'no CUDA device (torch {torch.__version__}); --device cpu for a dry run')\n"
        "name = torch.cuda.get_device_name() if sys.argv[1] == 'cuda' else 'cpu'\n"
        "print(name + '|' + torch.__version__ + '|' + transformers.__version__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, device], cwd=ROOT, capture_output=True,
                          text=True)  # fmt: skip
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        sys.exit(f"gpu_check: error: {tail}")
    return done.stdout.strip().splitlines()[-1]


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cuda", "cpu"],
                   default=os.environ.get("GPU_CHECK_DEVICE", "cuda"))  # fmt: skip
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--budget-s", type=float, default=None, help="default 470 (CUDA), 1200 (CPU)")
    p.add_argument("--out-root", default=None, help="default results/llm (CUDA), runs/gpu_check")
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    args.budget_s = args.budget_s or (470.0 if cuda else 1200.0)
    if args.budget_s <= 0:
        p.error(f"--budget-s must be > 0, got {args.budget_s}")
    args.out_root = args.out_root or str(ROOT / ("results/llm" if cuda else "runs/gpu_check"))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    name, torch_version, tf_version = probe(args.device).split("|")
    check = Check(args, name, commit_id())
    check.summary.update(torch=torch_version, transformers=tf_version)
    print(f"[gpu_check] {name}: {', '.join(args.parts)} -> {check.out}", flush=True)
    try:
        for part in PARTS:
            if part in args.parts:
                check.part(part)
    finally:
        check.write_summary()
        shutil.rmtree(check.scratch, ignore_errors=True)
    print((check.out / "summary.md").read_text(), flush=True)
    return 0 if all(p["status"] == "ok" for p in check.summary["parts"]) else 1


if __name__ == "__main__":
    sys.exit(main())
