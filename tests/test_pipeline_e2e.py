"""The whole DAG through `dvc repro`, on tiny params, in a temporary copy of the project.

This is how a user runs it: a broken stage fails here, not for them.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from project_copy import digests, make_project_copy, only_pairs, project_env

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
# One tracr pair (a ground truth) and one organism (adversarial evaluation); the other pairs take
# the same code paths, and every stage is a process of its own, so each pair costs about a minute.
PAIRS = ["tracr-reverse", "ioi"]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A copy of the project with tiny params, its own git repository and DVC, and the venv on PATH."""
    root = make_project_copy(tmp_path_factory.mktemp("project"), edit_params=lambda params: only_pairs(params, PAIRS))
    return root, project_env(root)


def run(project, *command, check=True):
    root, env = project
    result = subprocess.run(list(command), cwd=root, env=env, capture_output=True, text=True, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def test_the_whole_dag_runs_in_one_process_and_dvc_agrees(project):
    """`make run`'s `circuitflow repro`: every stage in one process, recorded in DVC, so that
    `dvc status` is clean and `dvc repro` reruns nothing; a stage forced through `dvc repro` (a
    process of its own) writes the same bytes."""
    root, _ = project
    output = run(project, "circuitflow", "repro").stdout
    last = output.strip().splitlines()[-4:]  # the report, the AUC headline, Table 1's counts, MLflow
    assert any(line.startswith("Report: ") for line in last) and last[-1].startswith("MLflow runs:")
    assert any(line.startswith("Edge AUC against the ground truth") for line in last)
    for path in ["models/tracr-reverse/model.safetensors", "models/tracr-reverse/ground_truth.json",
                 "datasets/tracr-reverse/dataset.parquet", "cache/tracr-reverse/corrupted.parquet",
                 "discover/tracr-reverse/scores.parquet", "discover/tracr-reverse/eap_circuit.json",
                 "evaluate/tracr-reverse/roc.parquet", "report/index.html",
                 "models/ioi-organism/model.safetensors", "discover/ioi/acdc_circuit.json",
                 "evaluate/ioi/adversarial/pair_kl.parquet", "evaluate/tracr-reverse/adversarial/skipped.json",
                 "figures/hypothesis/table.csv", "figures/adversarial/percentiles.csv", "figures/adversarial/ioi_groups_ioi.png"]:
        assert (root / "data" / path).is_file(), path
    metrics = json.loads((root / "data/evaluate/tracr-reverse/evaluation.json").read_text())
    assert metrics["acdc_edge_auc_pessimistic"] == 1.0  # as in the ACDC paper, even on 24 examples
    headline = json.loads((root / "data/evaluate/tracr-reverse/metrics.json").read_text())  # the DVC metric
    assert headline["acdc"]["edge_auc"] == 1.0 and set(headline["acdc"]) == {"edge_auc", "cmd"}
    tests = pl.read_parquet(root / "data/evaluate/tracr-reverse/hypothesis_tests.parquet")
    truth = tests.filter(pl.col("circuit") == "ground_truth")
    status = dict(zip(truth["test"].to_list(), truth["status"].to_list()))
    assert status["equivalence"] == "not applicable"  # tracr's score compares the model with itself: s(M) = 0
    assert metrics["ground_truth_equivalence_passes"] == 0.0  # passes only where the test applies
    assert set(tests["test"]) == {"equivalence", "independence", "minimality", "sufficiency", "partial_necessity"}
    assert set(tests["circuit"]) == {"ground_truth", "acdc"}  # evaluate.hypothesis_tests.circuits
    kl = pl.read_parquet(root / "data/evaluate/ioi/adversarial/pair_kl.parquet")
    assert kl.height == 8 * 8 * 4 and (kl.filter(pl.col("circuit") == "full model")["kl"] == 0).all()
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

    # `dvc metrics show` lines up in a few columns: the same keys for every pair.
    shown = json.loads(run(project, "dvc", "metrics", "show", "--json").stdout)

    def leaves(node, prefix=""):
        if isinstance(node, dict):
            return {leaf for key, value in node.items() for leaf in leaves(value, f"{prefix}{key}.")}
        return {prefix.rstrip(".")}

    files = next(iter(shown.values()))["data"]  # keyed by the revision ("" for the workspace in DVC 3.67)
    columns = set().union(*(leaves(entry["data"]) for entry in files.values() if "data" in entry))
    assert files and len(columns) <= 15, sorted(columns)

    # DVC recorded the run: nothing is stale, nothing reruns, a second `circuitflow repro` is warm.
    assert "up to date" in run(project, "dvc", "status").stdout
    assert "Data and pipelines are up to date" in run(project, "dvc", "repro").stdout
    assert "Data and pipelines are up to date" in run(project, "circuitflow", "repro").stdout

    # The same params give byte-identical artefacts, in a process per stage as in one process.
    before = digests(root)
    run(project, sys.executable, "-m", "flows.local_server", "dvc", "repro", "--force", "--single-item",
        "discover@tracr-reverse", "evaluate@tracr-reverse", "figure-adversarial")  # a figure stage reruns alone from its pins
    assert digests(root) == before

    # Every stage logged an MLflow run, nested under one pipeline run with its settings as params.
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("circuitflow")
    runs = client.search_runs([experiment.experiment_id], max_results=500)
    parents = [r for r in runs if r.info.run_name == "pipeline"]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert {r.info.run_name for r in children} >= {"models@tracr-reverse", "evaluate@ioi", "report"}
    evaluate = next(r for r in children if r.info.run_name == "evaluate@tracr-reverse")
    assert "eap_edge_auc_trapezoid" in evaluate.data.metrics and evaluate.data.tags["git_commit"]
    discover = next(r for r in children if r.info.run_name == "discover@ioi")
    assert discover.data.params["discover.acdc.thresholds"] == "[0.001, 0.01, 0.1]"  # a method setting, as run
    training = next(r for r in children if r.info.run_name == "models@ioi-organism")
    assert [m.step for m in client.get_metric_history(training.info.run_id, "train_loss")] == list(range(6))  # the curve, step by step


def test_unknown_behavior_stops_dvc_repro_with_one_sentence(project):
    root, _ = project
    original = (root / "params.yaml").read_text()
    try:
        (root / "params.yaml").write_text(original.replace("behavior: tracr-reverse", "behavior: tracr-revers"))
        result = run(project, "dvc", "repro", check=False)
        assert result.returncode != 0
        output = result.stdout + result.stderr
        assert "`pairs.tracr-reverse.behavior` is 'tracr-revers', not a behavior: did you mean `tracr-reverse`?" in output
        assert "Traceback" not in output
    finally:
        (root / "params.yaml").write_text(original)
