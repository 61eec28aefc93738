"""CLI start-up benchmark: `python agent.py --help` against the console script (figures only).

    uv run python benchmarks/bench_cli.py [--runs 15] [--quick]

Each command is a fresh process, started as a user starts it, timed from spawn to exit; the
commands take turns run after run, so the machine's noise falls on all of them alike:

- baseline: the console script's ``--help`` (the same app, entered without agent.py);
- ``python agent.py --help``;
- ``python agent.py dev`` with an invalid setting (ROOM_STANDBY=bogus): the time to its one
  error line;
- for scale: the interpreter alone, and ``import livekit.agents`` (which neither ``--help`` nor
  a bad setting loads; left out by ``--quick``).

It also counts the modules ``--help`` imports and says whether livekit.agents is among them.
``--quick``: 3 runs each (a few seconds).

Target: ``python agent.py --help`` within 1.2x of the console script's ``--help``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
AGENT_PY = PROJECT / "agent.py"
SCRIPT = Path(sys.executable).with_name("{{ cookiecutter.project_slug }}")
TARGET = 1.2
BASELINE = "console script --help (baseline)"


def commands(quick: bool) -> dict[str, tuple[list[str], dict[str, str]]]:
    """Label -> (argv, extra environment)."""
    table = {
        "python -c pass": ([sys.executable, "-c", "pass"], {}),
        BASELINE: ([str(SCRIPT), "--help"], {}),
        "python agent.py --help": ([sys.executable, str(AGENT_PY), "--help"], {}),
        "python agent.py dev, a bad setting": (
            [sys.executable, str(AGENT_PY), "dev"],
            {"ROOM_STANDBY": "bogus"},
        ),
    }
    if not quick:
        table["import livekit.agents"] = ([sys.executable, "-c", "import livekit.agents"], {})
    return table


def timed(argv: list[str], env: dict[str, str]) -> float:
    began = time.perf_counter()
    subprocess.run(
        argv,
        cwd=PROJECT,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )
    return time.perf_counter() - began


def help_imports() -> tuple[int, bool]:
    """How many modules `python agent.py --help` imports, and whether livekit.agents is one."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", str(AGENT_PY), "--help"],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        check=True,
    )
    names = [
        line.rsplit("|", 1)[1].strip()
        for line in proc.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    ][1:]  # the first line is the header
    return len(names), "livekit.agents" in names


def main(runs: int, quick: bool) -> None:
    if not SCRIPT.exists():
        sys.exit(f"no console script at {SCRIPT}: run `uv sync` first")
    table = commands(quick)
    times: dict[str, list[float]] = {label: [] for label in table}
    for argv, env in table.values():  # warm-up: the file system cache, the .pyc files
        timed(argv, env)
    for run in range(runs):
        order = list(table) if run % 2 == 0 else list(reversed(table))
        for label in order:
            times[label].append(timed(*table[label]))
    medians = {label: statistics.median(values) for label, values in times.items()}
    base = medians[BASELINE]
    print(f"CLI start-up: median of {runs} fresh processes per command, taking turns")
    print(f"{'command':<40} {'median s':>9} {'vs baseline':>12}")
    for label, median in medians.items():
        print(f"{label:<40} {median:>9.3f} {median / base:>11.2f}x")
    count, livekit = help_imports()
    print(f"--help imports {count} modules, livekit.agents {'among them' if livekit else 'not'}")
    ratio = medians["python agent.py --help"] / base
    verdict = "met" if ratio <= TARGET else "NOT met"
    print(f"target: agent.py --help within {TARGET}x of the console script's: {verdict}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="timed runs per command")
    parser.add_argument("--quick", action="store_true", help="3 runs each, no livekit import")
    options = parser.parse_args()
    main(3 if options.quick else options.runs, options.quick)
