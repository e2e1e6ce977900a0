"""dvc.yaml agrees with the stage registry: the same stages, commands, params, outs and metrics,
and every library module a stage imports is one of its code dependencies (so editing it reruns
the stage)."""

import json
import subprocess
import sys
from pathlib import Path

import yaml

from circuitflow.stages import STAGES

ROOT = Path(__file__).resolve().parents[1]


def dvc_stages() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def body(entry: dict) -> dict:
    return entry["do"] if "foreach" in entry else entry


def test_dvc_yaml_is_what_the_registry_writes():
    result = subprocess.run([sys.executable, "tools/dvc_yaml.py", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_every_registered_stage_is_a_dvc_stage_with_its_outputs():
    stages = dvc_stages()
    assert list(stages) == [stage.name for stage in STAGES]
    for stage in STAGES:
        entry = stages[stage.name]
        assert ("foreach" in entry) == (stage.key is not None)
        if stage.key:
            assert entry["foreach"] == f"${{{stage.key}s}}"
        key = " ${key}" if stage.key else ""
        assert body(entry)["cmd"] == f"circuitflow stage {stage.name}{key}"
        template = lambda text: text.replace("{key}", "${key}").replace("{model}", "${item.model}")  # noqa: E731
        assert body(entry)["outs"] == [template(out) for out in stage.outs]
        assert body(entry).get("params", []) == [template(p) for p in stage.params]
        assert body(entry).get("metrics", []) == [template(f"{stage.directory}/{m}") for m in stage.metrics]
        for data in stage.data:
            assert template(data) in body(entry)["deps"]


def imported_library_files(module: str) -> set[str]:
    """The circuitflow files a fresh interpreter has loaded after importing ``module``."""
    code = ("import importlib, json, sys; importlib.import_module(sys.argv[1]); "
            "print(json.dumps(sorted(m.__file__ for n, m in sys.modules.items() "
            "if (n == 'circuitflow' or n.startswith('circuitflow.')) and getattr(m, '__file__', None))))")
    out = subprocess.run([sys.executable, "-c", code, module], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return {Path(path).resolve().relative_to(ROOT).as_posix() for path in json.loads(out)}


def test_every_module_a_stage_imports_is_a_code_dependency():
    from concurrent.futures import ThreadPoolExecutor

    stages = dvc_stages()
    with ThreadPoolExecutor(max_workers=4) as pool:  # one interpreter per stage, a few at a time
        imported = dict(zip(STAGES, pool.map(lambda stage: imported_library_files(stage.module), STAGES)))
    for stage, files in imported.items():
        deps = [dep for dep in body(stages[stage.name])["deps"] if dep.startswith("circuitflow")]
        missing = [path for path in sorted(files) if not any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps)]
        assert not missing, f"dvc.yaml's {stage.name} stage lacks code deps it imports: {missing}"
