"""Pieces of the pipeline's steps that the end-to-end run cannot pin down on tiny params."""

from pathlib import Path

import torch

from circuitflow.behaviors import get_behavior
from circuitflow.behaviors.tokenizer import build_word_tokenizer, load_tokenizer, save_tokenizer
from circuitflow.pipeline import _answer_positions


def test_answer_positions_are_the_last_or_the_last_predicted_one(tmp_path):
    for name, expected in (("ioi", 14), ("induction", 19)):  # induction: loss_mask True at 11..19 of 21
        behavior = get_behavior(name)
        save_tokenizer(build_word_tokenizer(behavior.vocabulary()), tmp_path / name)
        examples = behavior.encode(behavior.make_dataset(5, 0), load_tokenizer(tmp_path / name))
        assert torch.equal(_answer_positions(examples), torch.full((5,), expected))


def test_the_siit_slice_runs_through_every_step_into_the_benchmark_table(tmp_path, monkeypatch):
    # Two SIIT cases (a few training steps: the code path, not trained models) through models ->
    # generate -> cache -> discover -> evaluate, then the SIIT figure and the report.
    import polars as pl
    import yaml

    from circuitflow import pipeline
    from circuitflow.config import load_params
    from tests.project_copy import ROOT, tiny_params

    params = tiny_params(yaml.safe_load((ROOT / "params.yaml").read_text()))
    params["models"] = {f"siit-{case}": {"kind": "siit", "case": case} for case in ("reverse", "hist")}
    params["pairs"] = {f"siit-{case}": {"model": f"siit-{case}", "behavior": f"siit-{case}", "n_examples": 24, "seed": 0,
                                        "ablation": "resample", "batch_size": 12} for case in ("reverse", "hist")}
    params = tiny_params(params)
    params["evaluate"].update(hypothesis_tests=None, adversarial=None)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    loaded = load_params("params.yaml")
    for model in loaded.models:
        pipeline.build_model(loaded, model)
    for pair in loaded.pairs:
        for step in (pipeline.generate, pipeline.cache, pipeline.discover, pipeline.evaluate):
            step(loaded, pair)
    for name in pipeline.FIGURES:
        pipeline.figure(loaded, name)
    pipeline.report(loaded)

    table = pl.read_csv("data/figures/siit/auroc_table.csv")
    assert table.shape[0] == 2 * len(loaded.methods)
    assert set(table["case"]) == {"reverse", "hist"} and set(table["method"]) == set(loaded.methods)
    assert table["edge_auc"].is_between(0, 1).all()
    training = pl.read_csv("data/figures/siit/training.csv")
    assert training["steps"].to_list() == [6, 6] and training["accuracy"].is_between(0, 1).all()
    page = next(Path("data/report").glob("*.html")).read_text()
    assert "SIIT benchmark" in page and "SIIT training" in page
