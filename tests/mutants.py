"""Mutation testing of named modules against the tests that cover them (mutmut 3), outside CI.

    just mutants [MODULE...]                      # student/losses.py, pipeline.teachers.l4p.windows, ...
    .venv/bin/python tests/mutants.py [MODULE...] [--max-children N] [--no-diffs]

mutmut changes a module one small thing at a time (an operator, a constant, a dropped argument) and
runs the module's tests (TESTS below) against every such mutant, each only on the tests that call the
mutated function. A mutant that no test fails SURVIVED: either a test is missing, or the mutant is
equivalent (it changes nothing observable, e.g. a bound that the input never reaches), which a person
decides from its diff, printed at the end.

The work happens in data/mutants/<modules>/ (ignored by git): this project's pyproject.toml plus a
[tool.mutmut] section, and links to the packages, tests and configs. mutmut's copy of the project
(its mutants/ there) is made anew on every run: mutmut never refreshes the files it does not mutate,
so a kept copy would test today's module against yesterday's tests.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "shards", "manifests", "student")
# module -> the pytest arguments that select its tests: those that check the module's values and run
# in seconds (each mutant reruns them; the L4P teacher's and the caching job's tests take ~30 s each).
TESTS = {
    "student/losses.py": ["tests/test_losses.py"],
    "pipeline/teachers/l4p/windows.py": ["tests/test_l4p_windows.py"],
    "shards/torch_codecs.py": ["tests/test_torch_codecs.py"],
    "student/charts.py": ["tests/test_charts.py"],
}
RESULT = re.compile(r"^\s+(\S+): (.+)$")


def module_path(name: str) -> str:
    """'student/losses.py' or 'student.losses' -> 'student/losses.py', which must be mapped in TESTS."""
    path = name if name.endswith(".py") else name.replace(".", "/") + ".py"
    if path not in TESTS:
        raise SystemExit(f"no tests are mapped to {name!r}: add it to TESTS in {Path(__file__).relative_to(ROOT)} "
                         f"(mapped: {', '.join(sorted(TESTS))})")
    return path


def work_dir(modules: list[str]) -> Path:
    """A folder where mutmut finds the project through links and a config naming these modules."""
    slug = "+".join(m.removesuffix(".py").replace("/", ".") for m in modules)
    work = ROOT / "data" / "mutants" / slug
    shutil.rmtree(work / "mutants", ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    for name in (*PACKAGES, "tests", "configs"):
        link = work / name
        if not link.is_symlink():
            link.symlink_to(ROOT / name)
    selection = [arg for m in modules for arg in TESTS[m]]
    config = "\n".join([
        "", "[tool.mutmut]",
        f"source_paths = {list(PACKAGES)!r}",
        f"only_mutate = {modules!r}",
        f"also_copy = {['configs']!r}",
        f"pytest_add_cli_args_test_selection = {selection!r}",
        # A forked copy of a process that already ran torch can hang in its thread pool: fork from a
        # clean server process instead.
        'process_isolation = "forkserver"',
        "",
    ]).replace("'", '"')
    (work / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text() + config)
    return work


def mutmut(work: Path, *args: str, capture: bool = False) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    command = [str(Path(sys.executable).parent / "mutmut"), *args]
    done = subprocess.run(command, cwd=work, env=env, text=True, stdout=subprocess.PIPE if capture else None)
    if done.returncode:
        raise SystemExit(f"mutmut {' '.join(args)} failed (exit {done.returncode}) in {work}")
    return done.stdout or ""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("modules", nargs="*", default=sorted(TESTS), help=f"modules to mutate (default all): "
                   f"{', '.join(sorted(TESTS))}")
    p.add_argument("--max-children", type=int, default=2, help="mutants tested at once")
    p.add_argument("--no-diffs", action="store_true", help="list surviving mutants without their diffs")
    a = p.parse_args(argv)
    modules = sorted({module_path(m) for m in a.modules})
    work = work_dir(modules)
    mutmut(work, "run", "--max-children", str(a.max_children))

    statuses = {}
    for line in mutmut(work, "results", "--all", "true", capture=True).splitlines():
        match = RESULT.match(line)
        if match:
            statuses[match.group(1)] = match.group(2)
    survivors = sorted(name for name, status in statuses.items() if status != "killed")
    if not a.no_diffs:
        for name in survivors:
            print(mutmut(work, "show", name, capture=True))
    for module in modules:
        prefix = module.removesuffix(".py").replace("/", ".") + "."
        counts = Counter(s for name, s in statuses.items() if name.startswith(prefix))
        print(f"{module}: {sum(counts.values())} mutants, " + ", ".join(f"{n} {s}" for s, n in counts.most_common()))
    print(f"not killed ({len(survivors)}): " + (" ".join(survivors) or "none"))
    print(f"mutmut's own view: cd {work.relative_to(ROOT)} && {Path(sys.executable).parent / 'mutmut'} browse")
    return 0


if __name__ == "__main__":
    sys.exit(main())
