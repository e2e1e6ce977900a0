"""Write dvc.yaml from the stage registry (circuitflow.stages.STAGES).

    python tools/dvc_yaml.py            rewrite dvc.yaml
    python tools/dvc_yaml.py --check    exit 1 if dvc.yaml differs from what the registry gives

Each stage's code dependencies are every file of the library its module imports, directly or
through other library modules (read from the source with ``ast``, function-level imports
included), so a change anywhere that shapes a stage's artefacts reruns it.  A package whose Python
files are all imported is named as its folder (which also covers its data files, e.g. the canonical
circuits).  tests/test_dvc_yaml.py checks the committed dvc.yaml against this.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from circuitflow.stages import STAGES, Stage  # noqa: E402

LIBRARY = ROOT / "circuitflow"

HEADER = """\
# Written by tools/dvc_yaml.py from the stage registry (circuitflow/stages/__init__.py); edit the
# registry and rerun the tool instead of this file (tests/test_dvc_yaml.py checks they agree).
# The DAG: models -> generate -> cache -> discover -> evaluate -> figures -> report.  Each stage runs
# `circuitflow stage NAME [KEY]`; per-model and per-pair stages read only their own entry of
# params.yaml, so editing one pair reruns that pair's stages alone.
"""

PLOTS = """
# `dvc plots show` / `dvc plots diff` (offline page: .dvc/plots/offline.html, built by make setup).
# Each folder holds one CSV per pair with every method's curve (circuitflow/report/dvc_curves.py):
# one plot per pair, headed by the pair's name, methods overlaid (colour), revisions dashed; ROC
# curves are written as their pessimistic staircases.
plots:
  - data/figures/roc/curves:
      x: fpr
      y: tpr
      template: circuitflow/report/dvc_templates/overlay.json
      title: Edge ROC against the ground truth (staircase; higher and further left is better)
      x_label: false positive rate
      y_label: true positive rate
  - data/figures/faithfulness/curves:
      x: k
      y: f
      template: circuitflow/report/dvc_templates/overlay.json
      title: Fraction of the metric recovered, (m(C) - m(empty)) / (m(full) - m(empty))
      x_label: fraction of edges kept (top by |score|)
      y_label: fraction recovered (1 = the model)
  - data/figures/faithfulness/loss:
      x: n_edges
      y: faithfulness
      template: circuitflow/report/dvc_templates/overlay.json
      title: Faithfulness loss against edges kept (lower is better)
      x_label: edges kept
      y_label: faithfulness loss
  - data/figures/hypothesis/curves:
      x: fraction
      y: fraction_beaten
      template: circuitflow/report/dvc_templates/overlay.json
      title: Fraction of random circuits the circuit beats, by random-circuit size (Shi et al.)
      x_label: random circuit size (fraction of edges)
      y_label: fraction beaten
  - data/figures/mib/curves:
      x: k
      y: f
      template: circuitflow/report/dvc_templates/overlay.json
      title: MIB f_k per method and ranking (signed - CPR; absolute - CMD)
      x_label: fraction of edges kept, k
      y_label: f_k
  - data/figures/adversarial/curves:
      x: k
      y: alpha
      template: circuitflow/report/dvc_templates/overlay.json
      title: Hill plot of the circuit's per-pair KL (tail index alpha against k)
      x_label: k (order statistics used)
      y_label: alpha
"""


def module_file(module: str) -> Path | None:
    """The source file of a ``circuitflow`` module (a package's __init__.py), or None."""
    path = ROOT.joinpath(*module.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def _imported(path: Path) -> set[str]:
    """The circuitflow modules one file imports (``from pkg import name`` counts ``pkg.name`` when
    that is a module), with every parent package (importing a module runs their __init__)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names if module_file(f"{node.module}.{alias.name}")}
    modules = set()
    for name in found:
        if name == "circuitflow" or name.startswith("circuitflow."):
            parts = name.split(".")
            modules |= {".".join(parts[: i + 1]) for i in range(len(parts)) if module_file(".".join(parts[: i + 1]))}
    return modules


def closure(module: str) -> set[Path]:
    """Every library file ``module`` needs, itself included."""
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name in seen or module_file(name) is None:
            continue
        seen.add(name)
        todo += sorted(_imported(module_file(name)))
    return {module_file(name) for name in seen}


def compress(files: set[Path], folder: Path = LIBRARY) -> list[str]:
    """``files`` as the fewest paths: a package folder whose Python files are all in ``files``
    stands for them."""
    python = sorted(folder.rglob("*.py"))
    if python and all(path in files for path in python):
        return [folder.relative_to(ROOT).as_posix()]
    paths = []
    for child in sorted(folder.iterdir()):
        if child.is_dir() and (child / "__init__.py").exists():
            paths += compress(files, child)
        elif child in files or (child.is_dir() and child.with_suffix(".py") in files):  # a module's data folder
            paths.append(child.relative_to(ROOT).as_posix())
    return paths


def code_deps(stage: Stage) -> list[str]:
    return compress(closure(stage.module))


def _template(text: str) -> str:
    return text.replace("{key}", "${key}").replace("{model}", "${item.model}")


def stage_yaml(stage: Stage) -> str:
    indent = "      " if stage.key else "    "
    command = f"circuitflow stage {stage.name}" + (" ${key}" if stage.key else "")
    lines = [f"  {stage.name}:"]
    if stage.key:
        lines += [f"    foreach: ${{{stage.key}s}}", "    do:"]
    lines.append(f"{indent}cmd: {command}")
    lines.append(f"{indent}deps:")
    lines += [f"{indent}  - {path}" for path in [*code_deps(stage), *map(_template, stage.data)]]
    if stage.params:
        lines.append(f"{indent}params:")
        lines += [f"{indent}  - {_template(p)}" for p in stage.params]
    lines.append(f"{indent}outs:")
    lines += [f"{indent}  - {_template(path)}" for path in stage.outs]
    if stage.metrics:
        lines.append(f"{indent}metrics:")
        lines += [f"{indent}  - {_template(stage.directory)}/{name}" for name in stage.metrics]
    return "\n".join(lines)


def dvc_yaml() -> str:
    return HEADER + "stages:\n" + "\n\n".join(stage_yaml(stage) for stage in STAGES) + "\n" + PLOTS


def main(argv: list[str]) -> int:
    text, path = dvc_yaml(), ROOT / "dvc.yaml"
    if "--check" in argv:
        if path.read_text() != text:
            print("dvc.yaml differs from the stage registry; run `python tools/dvc_yaml.py`.", file=sys.stderr)
            return 1
        return 0
    path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
