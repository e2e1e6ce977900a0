"""Pieces of the pipeline's steps that the end-to-end run cannot pin down on tiny params."""

from pathlib import Path

import torch

from circuitflow.behaviors import get_behavior
from circuitflow.behaviors.tokenizer import build_word_tokenizer, load_tokenizer, save_tokenizer
from circuitflow.evaluation.worst_case import answer_positions


def test_answer_positions_are_the_last_or_the_last_predicted_one(tmp_path):
    for name, expected in (("ioi", 14), ("induction", 19)):  # induction: loss_mask True at 11..19 of 21
        behavior = get_behavior(name)
        save_tokenizer(build_word_tokenizer(behavior.vocabulary()), tmp_path / name)
        examples = behavior.encode(behavior.make_dataset(5, 0), load_tokenizer(tmp_path / name))
        assert torch.equal(answer_positions(examples), torch.full((5,), expected))


def run_slice(tmp_path, monkeypatch, names, edit=None, source="params.yaml"):
    """The pairs ``names`` of ``source`` (params.yaml or params-full.yaml; tiny: a few training steps, the code path, not trained
    models) through every stage of the registry, in this process; returns the settings."""
    import yaml

    from circuitflow.settings import load_settings
    from circuitflow.stages import STAGES
    from tests.project_copy import ROOT, only_pairs, tiny_params

    params = only_pairs(tiny_params(yaml.safe_load((ROOT / source).read_text())), names)
    if edit is not None:
        edit(params)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    loaded = load_settings("params.yaml")
    for stage in STAGES:  # the registry's order: models, generate, ..., figures, report
        for key in stage.keys(loaded):
            stage.run(loaded, key)
    return loaded


def test_the_siit_slice_runs_through_every_step_into_the_benchmark_table(tmp_path, monkeypatch):
    import polars as pl

    def no_tests(params):
        params["evaluate"].update(hypothesis_tests=None, adversarial=None)

    loaded = run_slice(tmp_path, monkeypatch, ["siit-reverse", "siit-hist"], no_tests, source="params-full.yaml")

    table = pl.read_csv("data/figures/siit/auroc_table.csv")
    assert table.shape[0] == 2 * len(loaded.methods)
    assert set(table["case"]) == {"reverse", "hist"} and set(table["method"]) == set(loaded.methods)
    assert table["edge_auc"].is_between(0, 1).all()
    training = pl.read_csv("data/figures/siit/training.csv")
    assert training["steps"].to_list() == [6, 6] and training["accuracy"].is_between(0, 1).all()
    page = next(Path("data/report").glob("*.html")).read_text()
    assert "SIIT benchmark" in page and "SIIT training" in page


def test_the_mamba_slice_runs_through_every_step_with_its_positional_picture(tmp_path, monkeypatch):
    import json

    import polars as pl

    loaded = run_slice(tmp_path, monkeypatch, ["ioi-mamba"])
    scores = pl.read_parquet("data/discover/ioi-mamba/positional_scores.parquet")
    n_positions = scores["position"].n_unique()
    assert scores.height == n_positions * 6  # 2 layers: input -> l0, l1, logits; l0 -> l1, logits; l1 -> logits
    plain = pl.read_parquet("data/discover/ioi-mamba/scores.parquet")
    assert plain.height == 6 and plain["edge"].to_list() == list(dict.fromkeys(scores["edge"].to_list()))
    # the positional scores summed over positions are EAP-IG's (which keeps |score|)
    summed = scores.group_by("edge", maintain_order=True).agg(pl.col("score").sum())["score"].abs().to_numpy()
    assert abs(summed - plain["eap-ig"].to_numpy()).max() < 1e-6  # float32 model
    importance = pl.read_csv("data/figures/positional/layer_importance.csv")
    assert importance["layer"].to_list() == [0, 1]
    metrics = json.loads(Path("data/evaluate/ioi-mamba/evaluation.json").read_text())
    assert any(key.endswith(("_passes", "_hypothesis_tests_skipped")) for key in metrics)  # tested, or the circuit is the whole model
    # The Mamba paper's rule: the smallest circuit with 85% accuracy (or every edge, if none reaches it).
    circuits = json.loads(Path("data/discover/ioi-mamba/circuits.json").read_text())
    for method in loaded.methods:
        assert circuits[f"{method}_circuit_accuracy"] >= 0.85 or circuits[f"{method}_circuit_edges"] == plain.height
    positional = json.loads(Path("data/discover/ioi-mamba/positional_circuit.json").read_text())
    assert len(positional["edges"]) == circuits["positional_circuit_edges"] and all(" @ " in edge for edge in positional["edges"])
    headline = json.loads(Path("data/evaluate/ioi-mamba/metrics.json").read_text())  # DVC's: per method, the same keys for every pair
    assert set(headline) == set(loaded.methods) and all(set(v) <= {"edge_auc", "cmd"} for v in headline.values())
    table = pl.read_csv("data/figures/mib/cpr_cmd.csv")  # MIB's scores for every method
    assert set(table["method"]) == {*loaded.methods, "random"} and table["cmd"].is_finite().all()  # random: MIB's baseline
    assert plain["eap-ig_signed"].abs().to_list() == plain["eap-ig"].to_list()  # signed attribution scores kept on disk
    assert (Path("data/evaluate/ioi-mamba/adversarial") / "summary.parquet").exists() or any(Path("data/evaluate/ioi-mamba/adversarial").iterdir())
    page = next(Path("data/report").glob("*.html")).read_text()
    assert "Positional attribution" in page and loaded.pairs["ioi-mamba"].positional
