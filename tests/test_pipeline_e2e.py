"""The whole DAG through `dvc repro`, on tiny params, in a temporary copy of the project.

This is how a user runs it: a broken stage fails here, not for them.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [name for name in out.split("\0") if name and not name.startswith("data/")]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A copy of the project with tiny params, its own git repository and DVC, and the venv on PATH."""
    root = tmp_path_factory.mktemp("project")
    for name in tracked_files():
        if (ROOT / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, root / name)
    (root / "dvc.lock").unlink(missing_ok=True)
    params = yaml.safe_load((root / "params.yaml").read_text())
    for pair in params["pairs"].values():
        pair.update(n_examples=24, batch_size=12)
    params["evaluate"]["faithfulness_points"] = 5
    params["evaluate"]["hypothesis_tests"].update(n_random=20, n_permutations=50, n_references=20)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    env.pop("PREFECT_API_URL", None)
    for command in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"]):
        subprocess.run(command, cwd=root, check=True, env=env)
    return root, env


def run(project, *command, check=True):
    root, env = project
    result = subprocess.run(list(command), cwd=root, env=env, capture_output=True, text=True, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((root / "data").rglob("*")) if p.is_file()}


def test_dvc_repro_runs_the_whole_dag(project):
    root, _ = project
    run(project, sys.executable, "-m", "flows.local_server", "dvc", "repro")
    for path in ["models/tracr-reverse/model.safetensors", "models/tracr-proportion/ground_truth.json",
                 "datasets/tracr-reverse/dataset.parquet", "cache/tracr-proportion/corrupted.parquet",
                 "discover/tracr-reverse/scores.parquet", "discover/tracr-reverse/eap_circuit.json",
                 "evaluate/tracr-proportion/roc.parquet", "report/index.html"]:
        assert (root / "data" / path).is_file(), path
    metrics = json.loads((root / "data/evaluate/tracr-proportion/metrics.json").read_text())
    assert 0.5 < metrics["eap_edge_auc_trapezoid"] <= 1.0
    assert metrics["ground_truth_equivalence_passes"] == 1.0  # the tracr circuit preserves the model
    tests = pl.read_parquet(root / "data/evaluate/tracr-proportion/hypothesis_tests.parquet")
    assert set(tests["test"]) == {"equivalence", "independence", "minimality", "sufficiency", "partial_necessity"}
    html = (root / "data/report/index.html").read_text()
    assert "tracr-reverse" in html and "data:image/png;base64" in html
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")

    # `dvc plots show` renders offline: vega inlined, no CDN.
    if (ROOT / ".dvc/plots/offline.html").exists():
        (root / ".dvc/plots").mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / ".dvc/plots/offline.html", root / ".dvc/plots/offline.html")
        run(project, "dvc", "plots", "show", "-o", "plots_page")
        page = (root / "plots_page" / "index.html").read_text()
        assert "cdn.jsdelivr" not in page and "vega-embed" in page and "tracr-reverse_eap" in page

    # A second run reruns nothing.
    again = run(project, "dvc", "repro")
    assert "Data and pipelines are up to date" in again.stdout

    # The same params give byte-identical artefacts: rerun discover and evaluate of one pair.
    before = digests(root)
    run(project, "dvc", "repro", "--force", "--single-item", "discover@tracr-reverse", "evaluate@tracr-reverse")
    assert digests(root) == before

    # Every stage logged an MLflow run.
    assert (root / "mlflow.db").is_file()


def test_unknown_behavior_stops_dvc_repro_with_one_sentence(project):
    root, _ = project
    original = (root / "params.yaml").read_text()
    try:
        (root / "params.yaml").write_text(original.replace("behavior: tracr-proportion", "behavior: tracr-propotion"))
        result = run(project, "dvc", "repro", check=False)
        assert result.returncode != 0
        output = result.stdout + result.stderr
        assert "Pair 'tracr-proportion' names unknown behavior 'tracr-propotion'; known behaviors: tracr-reverse, tracr-proportion" in output
        assert "Traceback" not in output
    finally:
        (root / "params.yaml").write_text(original)


def test_circuitflow_run_is_the_same_dag_in_one_flow(project):
    """`circuitflow run` (one Prefect flow, no DVC) writes the same bytes, and nests its MLflow runs."""
    root, _ = project
    run(project, "dvc", "repro")
    before = digests(root)
    run(project, "circuitflow", "run")
    assert digests(root) == before

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("circuitflow")
    runs = client.search_runs([experiment.experiment_id], max_results=500)
    parents = [r for r in runs if r.info.run_name == "pipeline"]
    assert parents
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert {r.info.run_name for r in children} >= {"models@tracr-reverse", "evaluate@tracr-proportion", "report"}
    evaluate = next(r for r in children if r.info.run_name == "evaluate@tracr-proportion")
    assert "eap_edge_auc_trapezoid" in evaluate.data.metrics and evaluate.data.tags["git_commit"]
