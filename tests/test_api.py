"""The Python API (find_circuit), counterfactual pairs files (pairs:<path>) and the checkpoint model
kind, each checked against an independent computation: the discovery functions called directly,
the recovered fraction and the circuits' logits recomputed from plain and patched forward passes."""

import json
import re
from pathlib import Path

import polars as pl
import pytest
import torch
from conftest import small_model
from safetensors.torch import save_file

from circuitflow.api import find_circuit
from circuitflow.behaviors import get_behavior
from circuitflow.behaviors.tokenizer import (
    build_word_tokenizer,
    load_tokenizer,
    save_tokenizer,
)
from circuitflow.circuit import Circuit
from circuitflow.discovery.eap import eap_scores
from circuitflow.discovery.eap_ig import eap_ig_inputs_scores
from circuitflow.graph import Graph
from circuitflow.models import MODEL_KINDS, checkpoint, load_model, organisms
from circuitflow.patching import run_circuits, source_outputs

README = Path(__file__).resolve().parents[1] / "README.md"
WORDS = ["When", "Mary", "and", "John", "went", "to", "the", "store", ",", "gave", "a", "drink", "Anna", "Paul", "Kate", "Tom", "park", "ring"]
CLEAN = ["When Mary and John went to the store , John gave a drink to"] * 2 + ["When Tom and Kate went to the park , Kate gave a ring to"] * 2
CORRUPTED = ["When Anna and Paul went to the store , Tom gave a drink to", "When Paul and Anna went to the park , Mary gave a ring to"] * 2
ANSWERS, WRONG = ["Mary", "Mary", "Tom", "Tom"], ["John", "John", "Kate", "Kate"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tokenizer")
    save_tokenizer(build_word_tokenizer([*WORDS, "to"]), directory)
    return load_tokenizer(directory)


@pytest.fixture(scope="module")
def model(tokenizer):
    model = small_model(seed=3, n_layers=2, d_vocab=len(tokenizer))
    model.set_tokenizer(tokenizer)
    return model


def encoded(tokenizer, texts):
    return torch.tensor([[tokenizer.bos_token_id, *tokenizer(t, add_special_tokens=False)["input_ids"]] for t in texts])


def logit_difference(logits, answer, wrong):
    """logits (batch, pos, vocab) -> (batch,), written out here instead of taken from the library."""
    rows = torch.arange(logits.shape[0])
    return logits[rows, -1, answer] - logits[rows, -1, wrong]


# ---- the README example -------------------------------------------------------------------------
def readme_example() -> str:
    section = README.read_text().split("## Python API", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_readme_example_runs_on_a_trained_organism(tmp_path, monkeypatch):
    code = readme_example()
    assert len(code.strip().splitlines()) <= 5
    organisms.train_organism("ioi", {"steps": 400, "batch_size": 32, "n_train": 2000, "n_eval": 50, "eval_every": 400, "d_model": 32,
                                     "n_heads": 2, "warmup_steps": 10, "lr": 3e-3}, tmp_path / "data/models/ioi-organism", progress=False)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 (the README's own example, run as written)
    result = namespace["result"]
    loaded = load_model(tmp_path / "data/models/ioi-organism")
    assert Circuit.load(tmp_path / "ioi_circuit.json", loaded.graph) == result.circuit
    saved = pl.read_parquet(tmp_path / "ioi_circuit.scores.parquet")
    assert saved["edge"].to_list() == list(loaded.graph.edge_names)
    assert torch.equal(torch.tensor(saved["score"].to_list(), dtype=torch.float64), result.scores)
    assert saved["in_circuit"].sum() == len(result.edges) > 0
    assert result.recovered >= 0.8
    # the smallest such circuit: one edge fewer recovers less (recomputed by hand below)
    clean, corrupted = encoded(loaded.tokenizer, namespace["clean"]), encoded(loaded.tokenizer, namespace["corrupted"])
    answers, wrong = (torch.tensor([loaded.tokenizer.convert_tokens_to_ids(w) for w in ws]) for ws in (["Mary", "Tom"], ["John", "Kate"]))
    assert recovered_by_hand(loaded.model, loaded.graph, clean, corrupted, answers, wrong, result.scores.abs(), len(result.edges) - 1) < 0.8


def recovered_by_hand(model, graph, clean, corrupted, answers, wrong, ranking, n):
    """(LD(C) - LD(empty)) / (LD(model) - LD(empty)), mean logit differences; the empty circuit under
    resample ablation is the model on the corrupted prompts."""
    with torch.no_grad():
        full = logit_difference(model(clean), answers, wrong).mean()
        empty = logit_difference(model(corrupted), answers, wrong).mean()
        mask = torch.zeros(graph.n_edges)
        mask[torch.sort(ranking, descending=True, stable=True).indices[:n]] = 1
        ablated = source_outputs(model, graph, corrupted)
        kept = logit_difference(run_circuits(model, graph, clean, ablated, mask), answers, wrong).mean()
    return float((kept - empty) / (full - empty))


# ---- find_circuit against the discovery functions -----------------------------------------------
def test_eap_scores_are_eap_scores_called_directly_and_signed(model, tokenizer):
    result = find_circuit(model, CLEAN, CORRUPTED, ANSWERS, WRONG, method="eap", n_edges=10)
    clean, corrupted = encoded(tokenizer, CLEAN), encoded(tokenizer, CORRUPTED)
    answers, wrong = (torch.tensor([tokenizer.convert_tokens_to_ids(w) for w in ws]) for ws in (ANSWERS, WRONG))
    graph = Graph.from_config(model.cfg)
    ablated = source_outputs(model, graph, corrupted)
    expected = eap_scores(model, graph, clean, ablated, lambda logits, index: logit_difference(logits, answers[index], wrong[index]).sum())
    torch.testing.assert_close(result.scores, expected, rtol=1e-6, atol=1e-9)
    assert (result.scores < 0).any() and (result.scores > 0).any()
    inside = result.scores.abs()[result.circuit.members]
    assert len(result.edges) == 10 and inside.min() >= result.scores.abs()[~result.circuit.members].max()


def test_eap_ig_scores_are_the_signed_eap_ig_function(model, tokenizer):
    result = find_circuit(model, CLEAN, CORRUPTED, ANSWERS, WRONG, steps=3, n_edges=5)
    clean, corrupted = encoded(tokenizer, CLEAN), encoded(tokenizer, CORRUPTED)
    answers, wrong = (torch.tensor([tokenizer.convert_tokens_to_ids(w) for w in ws]) for ws in (ANSWERS, WRONG))
    graph = Graph.from_config(model.cfg)
    metric = lambda logits, index: logit_difference(logits, answers[index], wrong[index]).sum()
    expected = eap_ig_inputs_scores(model, graph, clean, source_outputs(model, graph, corrupted), metric, steps=3)
    torch.testing.assert_close(result.scores, expected, rtol=1e-6, atol=1e-9)
    assert (result.scores < 0).any()


def test_recovered_fraction_recomputed_by_hand(model, tokenizer):
    clean, corrupted = encoded(tokenizer, CLEAN), encoded(tokenizer, CORRUPTED)
    answers, wrong = (torch.tensor([tokenizer.convert_tokens_to_ids(w) for w in ws]) for ws in (ANSWERS, WRONG))
    graph = Graph.from_config(model.cfg)
    for n in (0, 7, 20):
        result = find_circuit(model, CLEAN, CORRUPTED, ANSWERS, WRONG, method="eap", n_edges=n)
        assert result.recovered == pytest.approx(recovered_by_hand(model, graph, clean, corrupted, answers, wrong, result.scores.abs(), n), rel=1e-4, abs=1e-5)
    default = find_circuit(model, CLEAN, CORRUPTED, ANSWERS, WRONG, method="eap")
    assert default.recovered >= 0.8
    assert recovered_by_hand(model, graph, clean, corrupted, answers, wrong, default.scores.abs(), len(default.edges) - 1) < 0.8


def test_full_circuit_reproduces_the_models_logits(model, tokenizer):
    graph = Graph.from_config(model.cfg)
    result = find_circuit(model, CLEAN, CORRUPTED, ANSWERS, WRONG, method="hisp", n_edges=graph.n_edges)
    clean, corrupted = encoded(tokenizer, CLEAN), encoded(tokenizer, CORRUPTED)
    assert result.circuit == Circuit.full(graph) and result.recovered == pytest.approx(1.0)
    with torch.no_grad():
        patched = run_circuits(model, graph, clean, source_outputs(model, graph, corrupted), result.circuit.mask())
        torch.testing.assert_close(patched, model(clean), rtol=1e-4, atol=1e-4)


def test_token_tensors_and_ids_give_the_same_result_as_strings(model, tokenizer):
    answers = [tokenizer.convert_tokens_to_ids(w) for w in ANSWERS]
    wrong = torch.tensor([tokenizer.convert_tokens_to_ids(w) for w in WRONG])
    from_text = find_circuit(model, CLEAN, CORRUPTED, ANSWERS, WRONG, method="eap")
    from_ids = find_circuit(model, encoded(tokenizer, CLEAN), encoded(tokenizer, CORRUPTED), answers, wrong, method="eap")
    assert torch.equal(from_text.scores, from_ids.scores) and from_text.circuit == from_ids.circuit
    one = find_circuit(model, CLEAN[:2], CORRUPTED[:2], "Mary", "John", method="eap")  # one answer for every prompt
    assert torch.equal(one.scores, find_circuit(model, CLEAN[:2], CORRUPTED[:2], ANSWERS[:2], WRONG[:2], method="eap").scores)


@pytest.mark.parametrize("method", ["acdc", "sp"])
def test_kl_methods_and_other_ablations_run(model, method):
    settings = {"thresholds": [0.01, 0.1]} if method == "acdc" else {"steps": 3, "lambdas": [0.1]}
    result = find_circuit(model, CLEAN, CORRUPTED, ANSWERS, WRONG, method=method, ablation="mean", n_edges=5, **settings)
    assert result.scores.shape == (result.graph.n_edges,) and len(result.edges) == 5
    assert find_circuit(model, CLEAN, CORRUPTED, ANSWERS, WRONG, method="eap", ablation="zero").ablation == "zero"


def test_save_and_plot(model, tmp_path):
    result = find_circuit(model, CLEAN, CORRUPTED, ANSWERS, WRONG, method="eap", n_edges=6)
    circuit_path, scores_path = result.save(tmp_path / "c.json")
    assert scores_path == tmp_path / "c.scores.parquet" and Circuit.load(circuit_path) == result.circuit
    assert [p.suffix for p in result.plot(tmp_path / "c")] == [".png", ".svg"]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"clean": [CLEAN[0], "When Mary and John went to the store , John gave a drink"] * 2}, "clean prompt of example 1 .* same number of tokens"),
    ({"corrupted": [CORRUPTED[0], "When Anna went to the store , Tom gave a drink to"] * 2}, "corrupted prompt of example 1"),
    ({"corrupted": CORRUPTED[:3]}, "4 clean and 3 corrupted"),
    ({"answers": "Mary John"}, "answers of example 0 .* 2 tokens"),
    ({"answers": "Zed"}, "unknown"),
    ({"clean": ["When Zed and John went to the store , John gave a drink to"] * 4}, "does not know"),
    ({"answers": ANSWERS[:2]}, "one answer or a list of 4"),
    ({"method": "magic"}, "Unknown discovery method 'magic'"),
    ({"ablation": "noise"}, "Unknown ablation 'noise'"),
    ({"method": "eap", "steps": 3}, "steps"),
    ({"n_edges": 10_000}, "n_edges must be"),
    ({"n_examples": 2}, "n_examples and seed"),
    ({"behavior": "ioi"}, "not both"),
])
def test_bad_inputs_are_one_sentence(model, kwargs, message):
    arguments = {"clean": CLEAN, "corrupted": CORRUPTED, "answers": ANSWERS, "wrong_answers": WRONG, **kwargs}
    with pytest.raises(ValueError, match=message) as error:
        find_circuit(model, **arguments)
    assert "\n" not in str(error.value)


def test_a_model_that_is_not_one_is_refused():
    with pytest.raises(ValueError, match="HookedTransformer, a model directory or a LoadedModel"):
        find_circuit(42, CLEAN, CORRUPTED, ANSWERS, WRONG)


# ---- counterfactual pairs files (pairs:<path>) --------------------------------------------------
def pairs_frame(n=4):
    return pl.DataFrame({"note": [f"row {i}" for i in range(n)], "clean": CLEAN[:n], "corrupted": CORRUPTED[:n],
                         "answer": ANSWERS[:n], "wrong_answer": WRONG[:n]})


@pytest.fixture
def pairs_csv(tmp_path):
    path = tmp_path / "my_pairs.csv"
    pairs_frame().write_csv(path)
    return path


def test_pairs_files_read_alike_and_sample_deterministically(pairs_csv, tmp_path):
    pairs_frame().write_parquet(tmp_path / "my_pairs.parquet")
    from_csv, from_parquet = (get_behavior(f"pairs:{p}") for p in (pairs_csv, tmp_path / "my_pairs.parquet"))
    frame = from_csv.make_dataset(None, 0)
    assert frame.columns == ["index", "clean", "corrupted", "answer", "wrong_answer"]
    assert frame.equals(from_parquet.make_dataset(None, 0))
    assert frame["clean"].to_list() == CLEAN and frame["index"].to_list() == [0, 1, 2, 3]
    sample = from_csv.make_dataset(2, 7)
    assert sample.equals(from_csv.make_dataset(2, 7)) and sample["index"].to_list() == sorted(sample["index"].to_list())
    assert {tuple(from_csv.make_dataset(2, seed)["index"]) for seed in range(20)} != {tuple(sample["index"])}
    assert from_csv.vocabulary() == sorted({w for text in [*CLEAN, *CORRUPTED, *ANSWERS, *WRONG] for w in text.split()})
    assert from_csv.training_examples(3, 0).columns == ["prompt", "target"]


def test_pairs_encode_score_and_kl_by_hand(pairs_csv, tokenizer):
    behavior = get_behavior(f"pairs:{pairs_csv}")
    examples = behavior.encode(behavior.make_dataset(None, 0), tokenizer)
    assert torch.equal(examples["clean"], encoded(tokenizer, CLEAN)) and torch.equal(examples["corrupted"], encoded(tokenizer, CORRUPTED))
    assert examples["answer"].tolist() == [tokenizer.convert_tokens_to_ids(w) for w in ANSWERS]
    circuit_logits, model_logits = torch.randn(2, 4, 15, len(tokenizer), generator=torch.Generator().manual_seed(0))
    difference = logit_difference(circuit_logits, examples["answer"], examples["wrong_answer"])
    torch.testing.assert_close(behavior.score(circuit_logits, model_logits, examples), -difference)
    torch.testing.assert_close(behavior.attribution_metric(circuit_logits, examples), difference.sum())
    p, q = model_logits[:, -1].softmax(-1), circuit_logits[:, -1].softmax(-1)
    torch.testing.assert_close(behavior.kl_divergence(circuit_logits, model_logits, examples), (p * (p / q).log()).sum(-1))


def test_find_circuit_on_a_pairs_file_equals_the_same_prompts(model, pairs_csv):
    from_file = find_circuit(model, behavior=f"pairs:{pairs_csv}", method="eap")
    assert torch.equal(from_file.scores, find_circuit(model, CLEAN, CORRUPTED, ANSWERS, WRONG, method="eap").scores)
    sampled = find_circuit(model, behavior=f"pairs:{pairs_csv}", method="eap", n_examples=2, seed=1)
    rows = get_behavior(f"pairs:{pairs_csv}").make_dataset(2, 1)["index"].to_list()
    pick = lambda values: [values[i] for i in rows]
    assert torch.equal(sampled.scores, find_circuit(model, pick(CLEAN), pick(CORRUPTED), pick(ANSWERS), pick(WRONG), method="eap").scores)


@pytest.mark.parametrize(("write", "message"), [
    (None, "does not exist"),
    (lambda p: p.write_bytes(b""), "is empty"),
    (lambda p: p.write_text("clean,corrupted,answer,wrong_answer\n"), "holds no rows"),
    (lambda p: p.write_bytes("clean,corrupted,answer,wrong_answer\nJos\xe9,b,c,d\n".encode("latin-1")), "not UTF-8"),
    (lambda p: pairs_frame().drop("wrong_answer").write_csv(p), "no 'wrong_answer' column"),
    (lambda p: pairs_frame().with_columns(pl.Series("answer", ["Mary", None, "Tom", "Tom"])).write_csv(p), "Row 1 .* empty 'answer' cell"),
])
def test_bad_pairs_files_are_one_sentence_naming_the_file(tmp_path, write, message):
    path = tmp_path / "bad.csv"
    if write is not None:
        write(path)
    with pytest.raises(ValueError, match=message) as error:
        get_behavior(f"pairs:{path}").make_dataset(None, 0)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_pairs_files_refuse_ragged_prompts_other_suffixes_and_no_path(tmp_path, tokenizer):
    path = tmp_path / "ragged.csv"
    pairs_frame().with_columns(pl.Series("corrupted", [*CORRUPTED[:2], "When Anna went to the store , Tom gave a drink to", CORRUPTED[3]])).write_csv(path)
    behavior = get_behavior(f"pairs:{path}")
    with pytest.raises(ValueError, match=f"corrupted prompt of example 2 of pairs file {re.escape(str(path))} is 13 tokens .* same number of tokens"):
        behavior.encode(behavior.make_dataset(None, 0), tokenizer)
    (tmp_path / "pairs.txt").write_text("x")
    with pytest.raises(ValueError, match="neither .csv nor .parquet"):
        get_behavior(f"pairs:{tmp_path / 'pairs.txt'}").make_dataset(None, 0)
    with pytest.raises(ValueError, match="names no file"):
        get_behavior("pairs:")
    with pytest.raises(ValueError, match="ask for 1 to 4"):
        get_behavior(f"pairs:{path}").make_dataset(9, 0)


# ---- the checkpoint model kind ------------------------------------------------------------------
CONFIG = {"n_layers": 2, "d_model": 32, "n_heads": 4, "d_head": 8, "d_mlp": 64, "d_vocab": 50, "n_ctx": 16, "act_fn": "gelu", "normalization_type": "LN"}


def write_checkpoint(directory, model, config=CONFIG, state=None):
    """A checkpoint directory written by hand, as a researcher would: config.json and model.safetensors."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    save_file(state if state is not None else {k: v.contiguous() for k, v in model.state_dict().items()}, directory / "model.safetensors")
    return directory


def test_checkpoint_builds_and_loads_with_the_original_logits(tmp_path):
    original = small_model(seed=5, n_layers=2)
    source = write_checkpoint(tmp_path / "mine", original)
    kind = MODEL_KINDS["checkpoint"]
    kind.validate("mine", {"kind": "checkpoint", "path": str(source)})
    metrics = kind.build("mine", {"kind": "checkpoint", "path": str(source)}, tmp_path / "built")
    assert metrics["n_parameters"] == sum(p.numel() for p in original.parameters())
    assert json.loads((tmp_path / "built/config.json").read_text())["kind"] == "checkpoint"
    loaded = load_model(tmp_path / "built")
    tokens = torch.randint(0, 50, (3, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded.model(tokens), original(tokens))
    assert loaded.graph == Graph.from_config(original.cfg) and loaded.tokenizer is None


def test_checkpoint_with_a_tokenizer_runs_find_circuit(tmp_path, model):
    checkpoint.save_checkpoint(model, tmp_path / "saved")  # the model's own tokenizer goes to tokenizer/
    MODEL_KINDS["checkpoint"].build("saved", {"kind": "checkpoint", "path": str(tmp_path / "saved")}, tmp_path / "built")
    loaded = load_model(tmp_path / "built")
    assert loaded.tokenizer.convert_tokens_to_ids("Mary") == model.tokenizer.convert_tokens_to_ids("Mary")
    from_directory = find_circuit(tmp_path / "built", CLEAN, CORRUPTED, ANSWERS, WRONG, method="eap")
    torch.testing.assert_close(from_directory.scores, find_circuit(model, CLEAN, CORRUPTED, ANSWERS, WRONG, method="eap").scores)


@pytest.mark.parametrize(("damage", "message"), [
    (lambda d, state: (d / "config.json").unlink(), "config.json does not exist"),
    (lambda d, state: (d / "model.safetensors").unlink(), "model.safetensors do not exist"),
    (lambda d, state: (d / "config.json").write_text(json.dumps({**CONFIG, "n_lauers": 2})), "unknown key 'n_lauers'"),
    (lambda d, state: (d / "config.json").write_text("{"), "config.json is not JSON"),
    (lambda d, state: (d / "config.json").write_text(json.dumps({**CONFIG, "dtype": "float99"})), "not a torch dtype"),
    (lambda d, state: save_file({**state, "embed.W_E": torch.zeros(40, 32)}, d / "model.safetensors"), "'embed.W_E' shape \\(40, 32\\)"),
    (lambda d, state: save_file({k: v for k, v in state.items() if k != "unembed.W_U"}, d / "model.safetensors"), "lack 'unembed.W_U'"),
    (lambda d, state: save_file({**state, "extra.weight": torch.zeros(2)}, d / "model.safetensors"), "hold 'extra.weight'"),
    (lambda d, state: (d / "model.safetensors").write_bytes(b"not safetensors"), "not a safetensors file"),
])
def test_bad_checkpoints_are_one_sentence_naming_the_file(tmp_path, damage, message):
    original = small_model(seed=5, n_layers=2)
    state = {k: v.contiguous() for k, v in original.state_dict().items()}
    source = write_checkpoint(tmp_path / "mine", original)
    damage(source, state)
    with pytest.raises(ValueError, match=message) as error:
        MODEL_KINDS["checkpoint"].build("mine", {"kind": "checkpoint", "path": str(source)}, tmp_path / "built")
    assert str(source) in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "built" / "config.json").exists()


def test_checkpoint_spec_is_validated():
    with pytest.raises(ValueError, match="unknown setting 'weights'"):
        checkpoint.validate("mine", {"kind": "checkpoint", "path": "x", "weights": "y"})
    with pytest.raises(ValueError, match="needs `path`"):
        checkpoint.validate("mine", {"kind": "checkpoint"})
