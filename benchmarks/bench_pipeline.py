"""The default run's wall time: cold and warm `circuitflow repro` (what `make run` does after set-up),
and the per-stage process overhead that `dvc repro` pays.

    python benchmarks/bench_pipeline.py [--params params.yaml] [--pairs ioi,tracr-reverse]

Works in a temporary copy of the project (tests/project_copy.py, the given params as they are,
not shrunk), so the checkout's data/ is untouched.  Prints:
  cold      `circuitflow repro` from nothing (every stage), seconds
  warm      `circuitflow repro` again (nothing stale), seconds
  stage     one `dvc repro --force` of a cheap stage (generate, about a second of work) in a process
            of its own: nearly all of it is the start-up a stage-per-process `dvc repro` pays per stage
Run it on an idle machine: the figures in the README come from here.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from project_copy import make_project_copy, only_pairs, project_env  # noqa: E402


def timed(command: list[str], root: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml", help="the params file to time (default: params.yaml)")
    parser.add_argument("--pairs", default=None, help="only these pairs (comma-separated), e.g. for a quick look")
    args = parser.parse_args()
    params = yaml.safe_load((ROOT / args.params).read_text())

    def keep(edited: dict) -> None:
        edited.clear()
        edited.update(params if args.pairs is None else only_pairs(params, args.pairs.split(",")))

    with tempfile.TemporaryDirectory() as tmp:
        root = make_project_copy(Path(tmp) / "project", edit_params=keep)
        env = project_env(root)
        cold = timed(["circuitflow", "repro"], root, env)
        warm = timed(["circuitflow", "repro"], root, env)
        pair = next(iter(yaml.safe_load((root / "params.yaml").read_text())["pairs"]))
        stage = timed([sys.executable, "-m", "flows.local_server", "dvc", "repro", "--force", "--single-item", f"generate@{pair}"], root, env)
        print(f"cold {cold:.1f} s, warm {warm:.1f} s, one stage in its own process (generate@{pair}, dvc repro) {stage:.1f} s")


if __name__ == "__main__":
    main()
