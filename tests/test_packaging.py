"""A non-editable install (a built wheel) carries the task specs and suite profiles."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECK = """
import sppo_bench, sys
from sppo_bench.control.spec import ENVS_DIR, load_spec
from sppo_bench.orchestration.profile import load_profile
assert sppo_bench.__file__.startswith(sys.argv[1]), sppo_bench.__file__
assert str(ENVS_DIR).startswith(sys.argv[1]), ENVS_DIR
print(load_spec("hopper").horizon, load_profile("quick").name)
"""


def test_wheel_installs_specs_and_profiles(tmp_path):
    import shutil

    source, wheels, target = tmp_path / "src", tmp_path / "wheels", tmp_path / "site"
    for part in ("sppo_bench", "envs", "pyproject.toml", "README.md"):  # a build writes build/
        if (ROOT / part).is_dir():
            shutil.copytree(ROOT / part, source / part, symlinks=True)
        else:
            shutil.copy(ROOT / part, source / part)
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run([*build, str(source), "-w", str(wheels)], check=True, capture_output=True)
    wheel = next(wheels.glob("sppo_bench-*.whl"))
    install = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target"]
    subprocess.run([*install, str(target), str(wheel)], check=True, capture_output=True)
    done = subprocess.run(
        [sys.executable, "-c", CHECK, str(target)],
        cwd=tmp_path,  # not the checkout
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-600:]
    assert done.stdout.split() == ["1000", "quick"]
