"""The stage registry: keys, one-sentence key errors, and stages that write their folder whole
(a failing stage leaves the previous outputs as they were)."""

import dataclasses
import hashlib
from pathlib import Path

import pytest
import yaml

from circuitflow.io import staged
from circuitflow.settings import SettingsError, load_settings
from circuitflow.stages import FIGURES, STAGE_NAMES, STAGES, get_stage
from circuitflow.stages.artefacts import read_provenance, write_parquet

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def settings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    Path("params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_settings("params.yaml")


def test_the_registry_runs_in_dag_order_and_knows_its_keys(settings):
    assert STAGE_NAMES[:5] == ("models", "generate", "cache", "discover", "evaluate") and STAGE_NAMES[-1] == "report"
    assert set(FIGURES) >= {"roc", "faithfulness", "hypothesis", "adversarial", "mib", "siit", "positional"}
    seen = set()
    for stage in STAGES:
        assert set(stage.upstream) <= seen, f"{stage.name} runs before its upstream"
        seen.add(stage.name)
    assert get_stage("models").keys(settings) == list(settings.models)
    assert get_stage("evaluate").keys(settings) == list(settings.pairs) and get_stage("report").keys(settings) == [None]


@pytest.mark.parametrize("stage, key, message", [
    ("discover", None, "The discover stage needs a pair name: one of tracr-reverse"),
    ("discover", "nope", "Unknown pair 'nope'"),
    ("models", "ioi", "Unknown model 'ioi'"),
    ("report", "ioi", "The report stage takes no key; drop 'ioi'."),
    ("figure", None, "Unknown stage 'figure'; stages: models, generate"),
])
def test_wrong_keys_are_one_sentence(settings, stage, key, message):
    with pytest.raises(SettingsError, match=message.replace("(", r"\(")):
        get_stage(stage).check_key(settings, key)


def test_staged_replaces_the_folder_only_when_complete(tmp_path):
    target = tmp_path / "out"
    with staged(target) as out:
        (out / "a.txt").write_text("first")
    assert (target / "a.txt").read_text() == "first"
    with pytest.raises(KeyboardInterrupt), staged(target) as out:
        (out / "a.txt").write_text("half")
        raise KeyboardInterrupt  # Ctrl-C in the middle of a stage
    assert (target / "a.txt").read_text() == "first" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with staged(target) as out:
        (out / "b.txt").write_text("second")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]  # nothing stale survives


def digest(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_failing_stage_leaves_the_previous_outputs(settings):
    generate = get_stage("generate")
    result = generate.run(settings, "tracr-reverse")
    assert [p.name for p in result.artifacts] == ["dataset.parquet"]
    before = digest(Path("data/datasets/tracr-reverse"))
    pairs = dict(settings.pairs, **{"tracr-reverse": dataclasses.replace(settings.pair("tracr-reverse"), n_examples=10**6)})
    broken = dataclasses.replace(settings, pairs=pairs)  # more examples than tracr-reverse has inputs
    with pytest.raises(ValueError):
        generate.run(broken, "tracr-reverse")
    assert digest(Path("data/datasets/tracr-reverse")) == before
    assert sorted(p.name for p in Path("data/datasets").iterdir()) == ["tracr-reverse"]


def test_parquet_provenance_round_trips(tmp_path):
    import polars as pl

    write_parquet(tmp_path / "x.parquet", pl.DataFrame({"a": [1, 2]}), {"graph": {"n_layers": 2}, "settings": {"steps": 5}})
    assert read_provenance(tmp_path / "x.parquet") == {"graph": {"n_layers": 2}, "settings": {"steps": 5}}
    assert pl.read_parquet(tmp_path / "x.parquet")["a"].to_list() == [1, 2]


def test_the_device_setting_is_validated_and_resolved():
    import torch

    from circuitflow.numerics import resolve_device
    from circuitflow.settings import parse_settings

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert parse_settings(raw).compute.device == "auto"
    with pytest.raises(SettingsError, match="`compute.device` must be one of auto, cpu, cuda, got str 'gpu'"):
        parse_settings({**raw, "compute": {"device": "gpu"}})
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="compute.device is cuda but torch sees no GPU"):
            resolve_device("cuda")


def test_mlflow_runs_end_killed_on_ctrl_c_and_orphans_are_closed(tmp_path, monkeypatch):
    """Ctrl-C marks the stage's MLflow run KILLED; a run left RUNNING by a process that is gone
    (kill -9) is closed as FAILED by the next run."""
    import mlflow

    from tasks.tracking import mlflow_run

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(KeyboardInterrupt), mlflow_run("interrupted", "test"):
        raise KeyboardInterrupt
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("test").experiment_id
    orphan = client.create_run(experiment, tags={"host": __import__("socket").gethostname(), "pid": "999999999"}, run_name="orphan")
    with mlflow_run("next", "test"):
        pass
    status = {run.info.run_name: run.info.status for run in client.search_runs([experiment])}
    assert status == {"interrupted": "KILLED", "orphan": "FAILED", "next": "FINISHED"}
    assert orphan.info.status == "RUNNING"
