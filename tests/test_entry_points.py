"""The commands as a user types them, from a folder that is not the project: the installed entry
points ([project.scripts]), the script paths the README, `ray job submit` and `deepspeed` use, and
the `python -m` form."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

BIN = Path(sys.executable).parent


def help_text(command: list[str], cwd: Path) -> str:
    done = subprocess.run(command + ["--help"], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.parametrize("command, expected", [
    (["p4d-cache"], "--teacher-checkpoint"),
    (["p4d-train"], "--set KEY=VALUE"),
    (["p4d-eval"], "--bench"),
    (["p4d-inspect"], "--pictures"),
])
def test_installed_entry_points(command, expected, tmp_path):
    assert expected in help_text([str(BIN / command[0]), *command[1:]], tmp_path)


@pytest.mark.parametrize("script", ["pipeline/cache_teacher.py", "student/train.py"])
def test_a_script_runs_the_checkout_it_sits_in(script, tmp_path):
    """`ray job submit --working-dir .` runs the driver in a copy of the project: the copy's own
    packages must run, not the installed checkout's."""
    copy = tmp_path / "copy"
    for package in ("configs", "manifests", "pipeline", "shards", "student"):
        shutil.copytree(ROOT / package, copy / package, ignore=shutil.ignore_patterns("__pycache__"))
    config = copy / "configs" / "dataclass_io.py"
    config.write_text(config.read_text().replace("override a config value", "override (the copy's) a config value"))
    assert "the copy's" in help_text([sys.executable, str(copy / script)], tmp_path)


def test_module_form(tmp_path):
    assert "--pictures" in help_text([sys.executable, "-m", "student.inspect_cache"], tmp_path)
