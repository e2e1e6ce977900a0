"""SIIT (circuitflow.models.siit, siit_cases): high-level models, correspondence, training."""

from __future__ import annotations

import json
import re

import pytest
import torch

from circuitflow.behaviors.high_level import INPUT
from circuitflow.behaviors.rasp_cases import TRACR_CASES, _program, evaluate_rasp
from circuitflow.behaviors.siit_cases import CASES, get_case, make_dataset, score
from circuitflow.graph import Graph
from circuitflow.models import LoadedModel
from circuitflow.models import siit

TRACR = tuple(TRACR_CASES)


# ---- the high-level models -----------------------------------------------------------------------


@pytest.mark.parametrize("name", TRACR)
def test_evaluator_without_overrides_is_the_rasp_program(name):
    case = CASES[name]
    program = _program(name)
    for inputs in case.inputs:
        assert list(case.output(inputs)) == list(program(list(inputs)))


def test_evaluate_rasp_reports_every_expression_and_keeps_upstream_values_under_an_override():
    program = _program("reverse")
    by_label = {}
    stack = [program]
    while stack:
        expr = stack.pop()
        by_label[re.sub(r"_\d+$", "", expr.label)] = expr.unique_id  # without tracr's counters
        stack.extend(expr.children)
    values = evaluate_rasp(program, (1, 2, 3, 1, 2), {by_label["opp_idx-1"]: (0, 1, 2, 3, 4)})
    assert values[by_label["length"]] == (5,) * 5 and values[by_label["opp_idx"]] == (5, 4, 3, 2, 1)
    assert values[program.unique_id] == (1, 2, 3, 1, 2)  # reading position i instead of 4 - i: the identity
    assert len(evaluate_rasp(program, (1, 2))) > len(CASES["reverse"].nodes)


def test_reverse_intervention_on_the_output_head_copies_the_source_output():
    case = CASES["reverse"]
    assert case.output((1, 2, 3, 1, 2)) == (2, 1, 3, 2, 1)
    assert case.intervene((1, 2, 3, 1, 2), (3, 3, 1, 2, 2), "reverse") == (2, 2, 1, 3, 3)


def test_nodes_constant_over_the_inputs_are_folded_into_their_readers():
    # reverse's length, opp_idx and opp_idx-1 are the same on every input of length 5: not nodes,
    # and the output head reads its query from the input (the position) instead.
    case = CASES["reverse"]
    assert case.node_names == ("reverse",)
    assert case.node("reverse").reads == (("q", (INPUT,)), ("k", (INPUT,)), ("v", (INPUT,)))
    with pytest.raises(ValueError, match="no high-level node"):
        case.intervene((1, 2, 3, 1, 2), (3, 3, 1, 2, 2), "length")
    for name in TRACR:  # every remaining node varies over the inputs
        case = CASES[name]
        for node in case.node_names:
            assert len({case.evaluate(x, {})[node] for x in case.inputs}) > 1, (name, node)


def test_sort_unique_intervention_on_target_pos_moves_tokens_by_the_source_ranks():
    case = CASES["sort_unique"]
    base, source = (5, 1, 3, 2, 4), (2, 1, 3, 5, 4)
    assert case.output(base) == (1, 2, 3, 4, 5)
    assert case.evaluate(source, {})["target_pos"] == (1, 0, 2, 4, 3)
    # Position i takes the base token at the j whose source rank is i: 1, 5, 3, 4, 2.
    assert case.intervene(base, source, "target_pos") == (1, 5, 3, 4, 2)


def test_frac_prevs_intervention_on_is_x_takes_the_source_indicator():
    case = CASES["frac_prevs"]
    base, source = ("x", "w", "w", "w", "w"), ("w", "x", "x", "w", "w")
    assert case.output(base) == (1, 0.5, 1 / 3, 0.25, 0.2)
    assert case.intervene(base, source, "is_x") == (0, 0.5, 2 / 3, 0.5, 0.4)


def test_ioi_high_level_model_by_hand():
    case = CASES["ioi"]
    base = ("Ann", "Bob", "said", "Bob", "and", "Ann", "END")  # S = Bob (after said); distractor Ann
    assert case.output(base)[-1] == "Ann"
    values = case.evaluate(base, {})
    assert values["duplicate_token"] == (False, False, False, True, False, True, False)
    assert values["s_inhibition"][-1] == "Bob"
    # previous_token from a source with `said` before the second name slot: the duplicated name
    # after `said` is now the distractor Ann, so the name mover answers Bob.
    source = ("Cat", "Dan", "then", "Eve", "said", "Dan", "END")
    assert case.intervene(base, source, "previous_token")[-1] == "Bob"
    # s_inhibition from a source whose subject is Ann, the base's n1: the answer flips to n2.
    assert case.intervene(base, ("Ann", "Eve", "said", "Ann", "and", "Gus", "END"), "s_inhibition")[-1] == "Bob"
    # duplicate_token from a source without duplicates: no subject, so the name mover says n1.
    assert case.intervene(base, ("Cat", "Dan", "said", "Eve", "and", "Fay", "END"), "duplicate_token")[-1] == "Ann"
    assert len(case.inputs) == 3584 and all(case.output(x)[-1] in x[:2] for x in case.inputs[:500])


def test_unknown_cases_and_nodes_are_refused():
    with pytest.raises(ValueError, match="Unknown SIIT case"):
        get_case("nope")
    with pytest.raises(ValueError, match="no high-level node"):
        CASES["reverse"].intervene((1, 2, 3, 1, 2), (1, 1, 1, 1, 1), "nope")


def test_tracr_layer_allocation_is_followed_and_conflicts_move_down():
    reverse = {node.name: (node.block, node.layer) for node in CASES["reverse"].nodes}
    assert reverse == {"reverse": ("head", 3)}  # tracr's layer, with the constant nodes before it folded
    frac = {node.name: (node.block, node.layer) for node in CASES["frac_prevs"].nodes}
    assert frac == {"is_x": ("mlp", 0), "frac_prevs": ("head", 1)}
    pair = {node.name: node.layer for node in CASES["pair_balance"].nodes}
    assert pair == {"bools_open": 0, "opens": 1, "bools_close": 1, "closes": 2, "pair_balance": 2}  # tracr: both bools in MLP 0


# ---- correspondence and ground truth -------------------------------------------------------------


def _cfg(name):
    case = CASES[name]
    return case, siit.hooked_config(case, siit.resolve_settings(case, {}))


def test_reverse_correspondence_and_ground_truth_by_hand():
    case, cfg = _cfg("reverse")
    assert siit.correspondence(case) == {"reverse": ("a3.0",)}
    assert set(siit.ground_truth_edges(case, cfg)) == {"input -> a3.0.q", "input -> a3.0.k", "input -> a3.0.v", "a3.0 -> logits"}
    assert cfg.n_layers == 4 and cfg.n_heads == 4 and cfg.d_mlp == 4 * cfg.d_model and cfg.act_fn == "gelu"
    assert len(siit.non_circuit_nodes(case, cfg)) == 4 * 5 - 1


def test_ioi_ground_truth_by_hand():
    case, cfg = _cfg("ioi")
    assert siit.correspondence(case) == {"previous_token": ("a0.0",), "duplicate_token": ("a0.1",), "s_inhibition": ("a1.0",), "name_mover": ("a2.0",)}
    edges = siit.ground_truth_edges(case, cfg)
    assert {"a0.0 -> a1.0.k", "a0.1 -> a1.0.k", "a1.0 -> a2.0.q", "a2.0 -> logits", "input -> a2.0.v"} <= set(edges)
    assert len(edges) == 3 + 3 + 4 + 3 + 1


@pytest.mark.parametrize("name", list(CASES))
def test_every_ground_truth_edge_is_a_graph_edge_in_graph_order(name):
    case, cfg = _cfg(name)
    graph = Graph.from_config(cfg)
    edges = siit.ground_truth_edges(case, cfg)
    assert edges == [e for e in graph.edge_names if e in set(edges)]
    image = siit.correspondence(case)
    assert len({p for parts in image.values() for p in parts}) == sum(len(parts) for parts in image.values())  # no sharing
    assert any(e.endswith("-> logits") for e in edges)
    for node in case.nodes:
        assert all(p == INPUT or case.node(p).layer <= node.layer for p in node.parents)


def test_settings_are_checked():
    case = CASES["reverse"]
    with pytest.raises(ValueError, match="Unknown SIIT settings"):
        siit.resolve_settings(case, {"lr_typo": 1})
    with pytest.raises(ValueError, match="at least 4 layers"):
        siit.resolve_settings(case, {"n_layers": 2})
    with pytest.raises(ValueError, match="at least 4 heads"):
        siit.resolve_settings(case, {"n_heads": 2})
    with pytest.raises(ValueError, match="unknown|Unknown"):
        siit.validate("m", {"kind": "siit", "case": "nope"})
    assert siit.resolve_settings(CASES["hist"], {})["n_layers"] == 2  # at least 2


# ---- datasets ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["reverse", "frac_prevs", "ioi"])
def test_make_dataset(name):
    case = CASES[name]
    frame = make_dataset(name, 50, seed=3)
    assert frame.equals(make_dataset(name, 50, seed=3))
    clean, corrupted = frame["clean"].to_list(), frame["corrupted"].to_list()
    assert all(row[0] == 0 and len(row) == case.seq_len + 1 for row in clean)
    assert sorted(clean) == sorted(corrupted) and all(a != b for a, b in zip(clean, corrupted))
    for row, answer in zip(clean, frame["answer"].to_list()):
        assert answer == case.labels(case.output(case.decode(row)))
    logits = torch.randn(50, case.seq_len + 1, 3)
    assert torch.equal(score(name, logits, logits), torch.zeros(50))


# ---- training ------------------------------------------------------------------------------------

FEW_STEPS = {"max_steps": 4, "batch_size": 16, "eval_every": 2, "n_eval_pairs": 32}


def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path):
    first = siit.train_siit("frac_prevs", FEW_STEPS, tmp_path / "a", progress=False)
    siit.train_siit("frac_prevs", FEW_STEPS, tmp_path / "b", progress=False)
    siit.train_siit("frac_prevs", {**FEW_STEPS, "seed": 1}, tmp_path / "c", progress=False)
    for file in ("model.safetensors", "config.json", "training_curves.json", "ground_truth.json"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes(), file
    assert (tmp_path / "a" / "model.safetensors").read_bytes() != (tmp_path / "c" / "model.safetensors").read_bytes()
    assert first["steps"] == 4 and set(first) >= {"accuracy", "iia", "strict_accuracy", "train_seconds", "steps"}


def test_written_files_and_the_model_kind(tmp_path):
    siit.train_siit("reverse", FEW_STEPS, tmp_path, progress=False)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["kind"] == "siit" and config["case"] == "reverse" and config["settings"]["batch_size"] == 16
    assert config["hooked_transformer_config"]["n_layers"] == 4 and "accuracy" in config["metrics"]
    curves = json.loads((tmp_path / "training_curves.json").read_text())
    assert len(curves["loss"]) == 4 and curves["eval_step"] == [2, 4]
    loaded = siit.KIND.load(tmp_path)
    assert isinstance(loaded, LoadedModel) and loaded.tokenizer is None
    assert set(loaded.ground_truth) == {"zero", "resample", "mean"}
    assert loaded.ground_truth["zero"] == siit.ground_truth_edges(CASES["reverse"], loaded.model.cfg)
    assert set(loaded.ground_truth["zero"]) <= set(loaded.graph.edge_names)
    assert loaded.info["correspondence"]["reverse"] == ["a3.0"]
    siit.KIND.validate("m", {"kind": "siit", "case": "reverse", "max_steps": 10})


def test_the_step_loss_patches_exactly_the_asked_rows():
    case = CASES["reverse"]
    cfg = siit.hooked_config(case, siit.resolve_settings(case, {}))
    torch.manual_seed(0)
    model = siit._new_model(cfg).eval()
    targets = siit.HighLevelTargets(case)
    base, source = torch.tensor([0, 5, 9]), torch.tensor([7, 7, 100])
    acts = siit.capture(model, targets.tokens[source], ["a3.0", "m1"])
    with torch.no_grad(), siit.patched(model, [("a3.0", slice(0, 2), acts["a3.0"][:2])]):
        logits = model(targets.tokens[base])
    clean = model(targets.tokens[base]).detach()
    assert torch.allclose(logits[2], clean[2])  # row 2 not patched
    assert not torch.allclose(logits[0], clean[0])
    # Patching a node with its own activation changes nothing (the hook is exact).
    own = siit.capture(model, targets.tokens[base], ["m1"])
    with torch.no_grad(), siit.patched(model, [("m1", slice(None), own["m1"])]):
        assert torch.allclose(model(targets.tokens[base]), clean)
    assert not model.hook_dict["blocks.3.attn.hook_z"].fwd_hooks  # the hooks are gone


# ---- trained models (slow) -----------------------------------------------------------------------

BATCH = {"batch_size": 128}


@pytest.fixture(scope="module")
def trained_reverse(tmp_path_factory):
    directory = tmp_path_factory.mktemp("siit_reverse")
    result = siit.train_siit("reverse", {**BATCH, "max_steps": 1500}, directory, progress=False)
    return result, siit.load_siit(directory)[0]


@pytest.mark.slow
def test_trained_reverse_resampling_non_circuit_nodes_changes_under_one_percent(trained_reverse):
    result, model = trained_reverse
    assert result["reached_target"], result
    case = CASES["reverse"]
    targets = siit.HighLevelTargets(case)
    base, source = siit.eval_pairs(len(case.inputs), 2000, seed=7)  # not the pairs it stopped on
    effects = siit.resampling_effects(model, targets, base, source)
    for node in siit.non_circuit_nodes(case, model.cfg):
        assert effects[node]["changed"] < 0.01, (node, effects[node])
    for node in ("a3.0",):  # the output head: resampled, the output is the source's, as H says
        assert effects[node]["as_predicted"] >= 0.99 and effects[node]["changed"] > 0.5


@pytest.mark.slow
@pytest.mark.parametrize("name", TRACR)
def test_each_tracr_case_trains_to_the_target(name, tmp_path):
    result = siit.train_siit(name, {**BATCH, "max_steps": 3000}, tmp_path, progress=False)
    assert result["accuracy"] >= 0.99 and result["iia"] >= 0.99 and result["strict_accuracy"] >= 0.99, result
    assert result["train_seconds"] < 600, result


@pytest.mark.slow
def test_ioi_case_trains_to_95_percent(tmp_path):
    result = siit.train_siit("ioi", {**BATCH, "max_steps": 3000, "target": 0.95}, tmp_path, progress=False)
    assert result["accuracy"] >= 0.95 and result["iia"] >= 0.95 and result["strict_accuracy"] >= 0.95, result
