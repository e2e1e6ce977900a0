"""The MLflow UI shows the pipeline's runs: nested stage runs with their params and metrics.

Runs are logged through tasks.tracking (as the pipeline logs them) into a temporary SQLite store;
`circuitflow ui` serves it on loopback; headless Chromium (Debian's `chromium`) opens the experiment's
runs, the pipeline run and one stage run, and the DOM after the JavaScript app has run must show
them.  The screenshots are kept under artifacts/ (mlflow_ui.png: the experiment; mlflow_ui_run.png:
one stage run with its metrics; mlflow_ui_pair.png: one pair's stage runs, found by their tag, with a
method setting as a column).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest
from project_copy import ROOT, free_port, stop, wait_for_http

from circuitflow.io import write_atomic
from tasks.tracking import log_step, mlflow_run, runs_url, share_runs_view, stage_tags

CHROMIUM = Path("/usr/bin/chromium")
EXPERIMENT = "circuitflow-ui-test"
STAGE_RUNS = {  # run name -> (params, metrics): values that the UI prints exactly as logged
    "discover@tracr-reverse": ({"ablation": "zero", "methods": ["eap"]}, {"eap_circuit_edges": 15.0}),
    "evaluate@tracr-reverse": ({"ablation": "zero", "faithfulness_points": 5}, {"eap_edge_auc_trapezoid": 0.8125, "eap_node_auc_pessimistic": 0.75}),
}
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is absent (/usr/bin/chromium); install it with `apt-get install -y chromium`."),
]


def log_pipeline_runs() -> tuple[str, dict[str, str], str]:
    """A finished "pipeline" run with the stage runs nested under it; returns (parent id, {name: id}, experiment id)."""
    with mlflow_run("pipeline", EXPERIMENT) as parent:
        parent_id = parent.info.run_id
    children = {}
    for name, (params, metrics) in STAGE_RUNS.items():
        with mlflow_run(name, EXPERIMENT, tags={"dvc_stage": name}, nested_under=parent_id) as run:
            log_step(params, metrics, [])
            children[name] = run.info.run_id
    return parent_id, children, parent.info.experiment_id


def render(url: str, profile: Path, screenshot: Path, height: int = 1000, width: int = 1600) -> str:
    """The page's DOM after its JavaScript has run (headless Chromium), and a screenshot of it."""
    shutil.rmtree(profile, ignore_errors=True)
    command = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", f"--window-size={width},{height}", "--hide-scrollbars", "--virtual-time-budget=20000",
        f"--screenshot={screenshot}", "--dump-dom", url,
    ]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0 and screenshot.is_file(), f"chromium failed on {url}:\n{result.stderr[-2000:]}"
    return result.stdout


class _Text(HTMLParser):
    """Collects a page's visible text: every text node outside script and style, in order."""

    def __init__(self):
        super().__init__()
        self.parts: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag, attrs):
        self._hidden += tag in ("script", "style")

    def handle_endtag(self, tag):
        self._hidden -= tag in ("script", "style")

    def handle_data(self, data):
        if not self._hidden and data.strip():
            self.parts.append(data.strip())


def visible_text(dom: str) -> str:
    """The DOM's text nodes joined by single spaces (what a reader sees, in document order)."""
    parser = _Text()
    parser.feed(dom)
    return " ".join(parser.parts)


def keep(screenshot: Path, name: str) -> None:
    write_atomic(ROOT / "artifacts" / name, lambda tmp: shutil.copyfile(screenshot, tmp))


def test_the_ui_shows_nested_runs_and_their_metrics(tmp_path, monkeypatch):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    parent_id, children, experiment_id = log_pipeline_runs()

    port = free_port()
    # Job execution serves MLflow's GenAI jobs (none here) and starts seven more processes.
    monkeypatch.setenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    env = dict(os.environ)
    with open(tmp_path / "ui.log", "w") as log:
        # Its own session: `circuitflow ui` runs `mlflow ui` and its web workers as children, and
        # stop() ends the whole group.
        server = subprocess.Popen(["circuitflow", "ui", "--port", str(port)], cwd=tmp_path, env=env,
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base}/health", server, timeout=240)

        # The REST call the runs page makes: every run, nested by the parent tag.
        request = urllib.request.Request(
            f"{base}/ajax-api/2.0/mlflow/runs/search", method="POST", headers={"Content-Type": "application/json"},
            data=json.dumps({"experiment_ids": [experiment_id], "max_results": 100}).encode(),
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            runs = json.load(response)["runs"]
        parents = {r["info"]["run_name"]: next((t["value"] for t in r["data"].get("tags", []) if t["key"] == "mlflow.parentRunId"), None) for r in runs}
        assert parents == {"pipeline": None, **{name: parent_id for name in STAGE_RUNS}}

        # The experiment's runs table: the pipeline run, its stage runs folded under it.
        text = visible_text(render(f"{base}/#/experiments/{experiment_id}/runs", tmp_path / "profile", tmp_path / "experiment.png"))
        assert EXPERIMENT in text and "Run Name" in text and " pipeline " in text, text[:3000]
        assert f"{1 + len(STAGE_RUNS)} matching runs" in text
        keep(tmp_path / "experiment.png", "mlflow_ui.png")

        # The pipeline run lists its stage runs.
        text = visible_text(render(f"{base}/#/experiments/{experiment_id}/runs/{parent_id}", tmp_path / "profile", tmp_path / "parent.png"))
        assert "Child runs" in text and all(name in text for name in STAGE_RUNS), text[:3000]

        # A stage run shows its params, metrics (as logged), tags and its parent.
        name = "evaluate@tracr-reverse"
        text = visible_text(render(f"{base}/#/experiments/{experiment_id}/runs/{children[name]}", tmp_path / "profile", tmp_path / "run.png", height=1500))
        params, metrics = STAGE_RUNS[name]
        assert name in text and "Parent run pipeline" in text and f"dvc_stage : {name}" in text, text[:3000]
        for key, value in {**params, **metrics}.items():
            assert f"{key} {value}" in text, (key, value, text[:3000])
        keep(tmp_path / "run.png", "mlflow_ui_run.png")
    finally:
        stop(server)


def log_pair_runs(params_path: Path, experiment: str, out: Path) -> tuple[str, str]:
    """As the pipeline logs them (tasks/steps.py): a pipeline run, and per pair its generate and
    discover runs nested under it, tagged by stage_tags, with the params the stages return and two
    artefacts; returns (experiment id, discover@ioi's run id)."""
    from circuitflow.settings import as_data, load_settings
    from circuitflow.stages import get_stage

    settings = load_settings(params_path)
    (out / "curves").mkdir(parents=True)
    artefacts = [out / "roc_ioi.png", out / "curves" / "ioi.csv"]
    for path in artefacts:
        path.write_text("x")
    with mlflow_run("pipeline", experiment) as parent:
        pass
    runs = {}
    for name, pair in settings.pairs.items():
        stage_params = {"generate": {"behavior": pair.behavior, "n_examples": pair.n_examples, "seed": pair.seed},
                        "discover": {"methods": list(settings.methods), "pair": as_data(pair),
                                     "discover": {m: as_data(settings.discover.method(m)) for m in settings.methods}}}
        for stage_name, params in stage_params.items():
            stage = get_stage(stage_name)
            with mlflow_run(stage.label(name), experiment, tags=stage_tags(settings, stage, name), nested_under=parent.info.run_id) as run:
                log_step(params, {}, artefacts if stage_name == "discover" else [])
                runs[stage.label(name)] = run.info.run_id
    return parent.info.experiment_id, runs["discover@ioi"]


def test_a_pairs_runs_found_by_their_tag_show_the_method_settings(tmp_path, monkeypatch):
    import mlflow
    import yaml
    from project_copy import only_pairs

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    params = only_pairs(yaml.safe_load((ROOT / "params.yaml").read_text()), ["tracr-reverse", "ioi"])
    params["mlflow"]["experiment"] = experiment = f"{EXPERIMENT}-pairs"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    experiment_id, discover_ioi = log_pair_runs(tmp_path / "params.yaml", experiment, tmp_path / "out")

    # tags from the stage's key, every setting as a dotted param, artefacts under their folders
    run = mlflow.MlflowClient().get_run(discover_ioi)
    assert {k: run.data.tags[k] for k in ("pair", "model", "behavior", "dvc_stage")} == {
        "pair": "ioi", "model": "ioi-organism", "behavior": "ioi", "dvc_stage": "discover@ioi"}
    thresholds = run.data.params["discover.acdc.thresholds"]
    assert thresholds == str(params["discover"]["acdc"]["thresholds"]) and "pair.ablation" in run.data.params
    listed = {a.path for a in mlflow.MlflowClient().list_artifacts(discover_ioi)} | {a.path for a in mlflow.MlflowClient().list_artifacts(discover_ioi, "curves")}
    assert {"roc_ioi.png", "curves/ioi.csv"} <= listed

    port = free_port()
    with open(tmp_path / "ui.log", "w") as log:
        server = subprocess.Popen(["circuitflow", "ui", "--port", str(port)], cwd=tmp_path, env=dict(os.environ),
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base}/health", server, timeout=240)
        printed = (tmp_path / "ui.log").read_text()
        assert f"{base}/#/experiments/{experiment_id}/runs\n" in printed, printed  # the runs page, not the GenAI overview
        # The search a researcher types (tags.pair = "ioi"), with the method setting as a column, grouped by pair.
        view = share_runs_view(experiment_id, "ioi-acdc", search='tags.pair = "ioi"', params=("discover.acdc.thresholds",))
        text = visible_text(render(runs_url(base, experiment_id, view=view), tmp_path / "profile", tmp_path / "pair.png"))
        assert "discover.acdc.thresholds" in text and thresholds in text, text[:3000]
        assert "Group: ioi" in text and "discover@ioi" in text and "generate@ioi" in text, text[:3000]
        assert "tracr-reverse" not in text, text[:3000]
        keep(tmp_path / "pair.png", "mlflow_ui_pair.png")
    finally:
        stop(server)
