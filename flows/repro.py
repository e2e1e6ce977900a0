"""`circuitflow repro`: what `dvc repro` does, in one warm process.

`dvc repro` starts a new process per stage, and each pays for importing torch, TransformerLens,
Prefect and MLflow (about 15 s a stage, a third of the default run).  This asks DVC which stages
are stale (``dvc status``), runs those and everything downstream of them in one Prefect flow
(independent pairs concurrently on the task runner), then records the results in DVC
(``dvc commit``: dvc.lock and the cache), so that `dvc status` is clean afterwards and a later
`dvc repro` reruns nothing.  The stages are the registry's functions either way, so the bytes are
those a stage-by-stage `dvc repro` writes (tests/test_pipeline_e2e.py).  With nothing stale it
answers without importing torch or Prefect.
"""

from __future__ import annotations

from circuitflow.settings import Settings, load_settings
from circuitflow.stages import STAGES, get_stage

Run = tuple[str, "str | None"]


def stale_labels() -> set[str]:
    """DVC's stale stages, as ``models@ioi-organism`` / ``report`` labels."""
    from dvc.repo import Repo

    with Repo(".") as repo:
        return set(repo.status())


def runs_to_do(settings: Settings, stale: set[str]) -> list[Run]:
    """The (stage, key) runs to do, in the registry's order: the stale ones and every run
    downstream of one (its inputs will change)."""
    todo: list[Run] = []
    for stage in STAGES:
        for key in stage.keys(settings):
            if stage.label(key) in stale or any(stage.needs(settings, key, get_stage(name), other) for name, other in todo):
                todo.append((stage.name, key))
    return todo


def record(labels: list[str]) -> None:
    """dvc commit: each run stage's deps and outs into dvc.lock, its outputs into the cache."""
    from dvc.repo import Repo

    with Repo(".") as repo:
        for label in labels:
            repo.commit(label, force=True)


def repro(params_path: str = "params.yaml") -> list[str]:
    """Bring every stale stage up to date in this process; returns the labels of the runs done."""
    settings = load_settings(params_path)
    todo = runs_to_do(settings, stale_labels())
    labels = [get_stage(name).label(key) for name, key in todo]
    if not labels:
        print("Data and pipelines are up to date.")
        return []
    from flows.stages import pipeline_flow  # Prefect, torch and MLflow only when there is work

    print(f"{len(labels)} stage runs to do: {', '.join(labels)}", flush=True)
    pipeline_flow(params_path, only=labels)
    record(labels)
    return labels


def summary(settings: Settings) -> str:
    """The last lines of a run: where the report is, what it found, where MLflow is."""
    import os

    import polars as pl

    from circuitflow.stages.artefacts import figure_dir, read_csv, report_dir

    lines = [f"Report: {(report_dir() / 'index.html').resolve()}"]
    auc = figure_dir("roc") / "auc_table.csv"
    if auc.exists() and not (table := read_csv(auc)).is_empty():
        means = table.group_by("method", maintain_order=True).agg(pl.col("edge_auc_pessimistic").mean())
        lines.append("Edge AUC against the ground truth (mean over pairs): " +
                     ", ".join(f"{m} {v:.2f}" for m, v in means.iter_rows()))
    tests = figure_dir("hypothesis") / "table.csv"
    if tests.exists() and not (table := read_csv(tests)).is_empty() and "status" in table.columns:
        counts = table["status"].value_counts(sort=True)
        lines.append("Hypothesis tests (Table 1): " + ", ".join(f"{n} {s}" for s, n in counts.iter_rows()))
    uri = os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    lines.append(f"MLflow runs: {uri} (browse: `make ui`, then http://127.0.0.1:5000)")
    return "\n".join(lines)
