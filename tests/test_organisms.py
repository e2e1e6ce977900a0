"""Model organisms: deterministic training, the files they leave, the model kind, and (slow) the
accuracy each reaches in its full training run."""

import json

import pytest
import torch

from circuitflow.graph import Graph
from circuitflow.models import organisms

# a handful of steps on a small pool: the code path of a full run in about a second
QUICK = {"steps": 4, "batch_size": 8, "n_train": 200, "n_eval": 20, "eval_every": 2, "d_model": 32, "n_heads": 2}


def train(behavior, directory, **overrides):
    return organisms.train_organism(behavior, {**QUICK, **overrides}, directory, progress=False)


def test_same_seed_gives_identical_weights_and_bytes(tmp_path):
    first = train("ioi", tmp_path / "a")
    second = train("ioi", tmp_path / "b")
    a, _, _ = organisms.load_organism(tmp_path / "a")
    b, _, _ = organisms.load_organism(tmp_path / "b")
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    written = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert {"model.safetensors", "config.json", "training_curves.json", "tokenizer/tokenizer.json"} <= {str(p) for p in written}
    for path in written:
        assert (tmp_path / "a" / path).read_bytes() == (tmp_path / "b" / path).read_bytes(), path
    assert first["curves"] == second["curves"] and first["metrics"] == second["metrics"]


def test_another_seed_gives_other_weights(tmp_path):
    train("ioi", tmp_path / "a")
    train("ioi", tmp_path / "b", seed=1)
    a, _, _ = organisms.load_organism(tmp_path / "a")
    b, _, _ = organisms.load_organism(tmp_path / "b")
    assert not torch.equal(a.W_E, b.W_E)


def test_training_leaves_the_callers_torch_state_alone(tmp_path):
    torch.manual_seed(123)
    state, threads = torch.get_rng_state(), torch.get_num_threads()
    train("greater-than", tmp_path)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.get_num_threads() == threads and not torch.are_deterministic_algorithms_enabled()


def test_config_curves_and_model_kind(tmp_path):
    spec = {"kind": "organism", "behavior": "docstring", **QUICK, "n_layers": 3}
    metrics = organisms.KIND.build("docstring-organism", spec, tmp_path)
    assert 0 <= metrics["accuracy"] <= 1 and metrics["train_seconds"] > 0
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["kind"] == "organism" and config["behavior"] == "docstring"
    assert config["settings"]["n_layers"] == 3 and config["settings"]["d_mlp"] == 4 * 32
    assert "train_seconds" not in config["metrics"]  # files stay byte-identical across runs
    # training rows: BOS, the prompt (36 words, up to 6 more with the varied defs), the answer
    assert 38 <= config["hooked_transformer_config"]["n_ctx"] <= 44
    curves = json.loads((tmp_path / "training_curves.json").read_text())
    assert curves["step"] == list(range(4)) and curves["eval_step"] == [2, 4]

    loaded = organisms.KIND.load(tmp_path)
    assert loaded.graph == Graph.from_config(loaded.model.cfg) and loaded.graph.n_layers == 3
    tokenizer = loaded.info["tokenizer"]
    assert loaded.model.cfg.d_vocab == len(tokenizer) and loaded.model.tokenizer is not None
    from circuitflow.behaviors import get_behavior

    behavior = get_behavior("docstring")
    examples = behavior.encode(behavior.make_dataset(3, 0), tokenizer)
    logits = loaded.model(examples["clean"])
    assert logits.shape == (3, 37, len(tokenizer))
    assert torch.isfinite(behavior.score(logits, logits, examples)).all()


def test_induction_organism_is_attention_only_and_scores_its_heads(tmp_path):
    result = train("induction", tmp_path)
    model, tokenizer, _ = organisms.load_organism(tmp_path)
    assert model.cfg.attn_only and model.cfg.n_layers == 2
    assert {"loss_first_half", "loss_repeated_half", "induction_score_max", "induction_score_a1.1"} <= set(result["metrics"])
    from circuitflow.behaviors import get_behavior

    behavior = get_behavior("induction")
    clean = behavior.encode(behavior.make_dataset(4, 0), tokenizer)["clean"]
    scores = organisms.induction_scores(model, clean)
    assert scores.shape == (2, 2) and ((scores >= 0) & (scores <= 1)).all()


def test_induction_score_reads_the_right_attention_entries():
    """A model whose layer-1 heads attend exactly one position past the previous occurrence scores 1."""
    from tests.conftest import small_model

    model = small_model(n_layers=2, attn_only=True, d_mlp=None, n_heads=2, n_ctx=9)
    half = 4
    clean = torch.tensor([[0, 5, 6, 7, 8, 5, 6, 7, 8]])
    target = torch.zeros(1, 2, 9, 9)
    for query in range(half + 1, 2 * half):
        target[:, :, query, query - half + 1] = 1.0

    def induction_pattern(pattern, hook):
        return target if hook.layer() == 1 else pattern

    with model.hooks(fwd_hooks=[("blocks.1.attn.hook_pattern", induction_pattern)]):
        scores = organisms.induction_scores(model, clean)
    assert torch.allclose(scores[1], torch.ones(2)) and (scores[0] < 0.9).all()


def test_accuracy_definitions():
    logits = torch.zeros(2, 3, 10)
    logits[0, -1, 4] = 1.0  # predicts 4
    logits[1, -1, 7] = 1.0  # predicts 7
    answers = torch.tensor([4, 4])
    assert organisms.correct("ioi", logits, {"io": answers}).tolist() == [1.0, 0.0]
    assert organisms.correct("docstring", logits, {"answer": answers}).tolist() == [1.0, 0.0]
    year_ids = torch.arange(100).expand(2, -1) + 1000  # token 1000 + y is the year "y"
    years = torch.zeros(2, 3, 1100)
    years[0, -1, 1000 + 50] = 1.0  # predicts 50 after 49: later, correct
    years[1, -1, 1000 + 30] = 1.0  # predicts 30 after 30: not strictly later
    assert organisms.correct("greater-than", years, {"year_ids": year_ids, "yy": torch.tensor([49, 30])}).tolist() == [1.0, 0.0]
    clean = torch.tensor([[0, 1, 2, 1, 2]])
    perfect = torch.nn.functional.one_hot(torch.tensor([[1, 2, 1, 2, 0]]), 3).float()
    mask = torch.tensor([[False, False, False, True, False]])  # logits at 3 predict token 4
    assert organisms.correct("induction", perfect, {"clean": clean, "loss_mask": mask}).tolist() == [1.0]


def test_varied_docstring_layouts_keep_the_task():
    from circuitflow.behaviors import get_behavior

    behavior = get_behavior("docstring")
    settings = organisms.resolve_settings("docstring", {"n_train": 200, "vary_layout": True})
    plain = behavior.training_examples(200, 0)
    varied = organisms.training_frame(behavior, settings)
    assert varied["target"].to_list() == plain["target"].to_list()
    n_parameters = set()
    for before, after, target in zip(plain["prompt"], varied["prompt"], varied["target"]):
        docstring_part = before[before.index(")"):]
        assert after.endswith(docstring_part)  # the docstring is untouched
        words = after.split(" ")
        parameters = words[5 : words.index(")") : 2]  # "def M ( self , a , b" -> a b
        position = parameters.index(target)
        documented = [piece.split(" ")[0] for piece in docstring_part.split(" : param ")[1:]]
        assert parameters[position - 2 : position] == documented
        assert len(set(parameters)) == len(parameters)
        n_parameters.add(len(parameters))
    assert n_parameters == set(range(3, 10))  # 0..3 extra before and after the matching three


def test_varied_induction_lengths_cover_the_range():
    from circuitflow.behaviors import get_behavior

    settings = organisms.resolve_settings("induction", {"n_train": 240})
    frame = organisms.training_frame(get_behavior("induction"), settings)
    halves = [len(target.split(" ")) + 1 for target in frame["target"]]
    assert sorted(set(halves)) == list(organisms.INDUCTION_HALF_LENGTHS)
    assert halves != sorted(halves)  # shuffled, not grouped by length
    for prompt, target in zip(frame["prompt"], frame["target"]):
        words = prompt.split(" ")
        assert words[-1] == words[0] and " ".join(words[1:-1]) == target


@pytest.mark.parametrize(
    "behavior, settings, message",
    [
        ("tracr-reverse", {}, "Organisms are trained on"),
        ("ioi", {"learning_rate": 0.1}, r"Unknown organism settings \['learning_rate'\]"),
        ("ioi", {"steps": 0}, "steps must be a positive integer"),
        ("ioi", {"d_model": 30, "n_heads": 4}, "multiple of n_heads"),
        ("induction", {"attn_only": False}, "attention-only"),
        ("ioi", {"vary_layout": True}, "vary_layout applies to docstring and induction only"),
    ],
)
def test_bad_settings_are_one_sentence(behavior, settings, message):
    with pytest.raises(ValueError, match=message):
        organisms.resolve_settings(behavior, settings)


def test_model_kind_validate_names_the_model():
    with pytest.raises(ValueError, match="Organism model 'x': Organisms are trained on"):
        organisms.validate("x", {"kind": "organism", "behavior": "nope"})
    organisms.validate("x", {"kind": "organism", "behavior": "ioi", "n_layers": 2, "d_model": 64, "steps": 3000, "seed": 0})


def test_missing_files_are_one_sentence(tmp_path):
    with pytest.raises(ValueError, match="config.json is missing or not JSON"):
        organisms.load_organism(tmp_path)


# ---- the full runs (each a few minutes on one core) -----------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("behavior", ["ioi", "greater-than", "docstring"])
def test_full_training_reaches_the_accuracy_target(behavior, tmp_path):
    result = organisms.train_organism(behavior, {}, tmp_path, progress=False)
    print(behavior, result["metrics"], "wall", result["train_seconds"], "cpu", result["train_cpu_seconds"])
    assert result["metrics"]["accuracy"] >= organisms.ACCURACY_TARGET
    assert result["train_cpu_seconds"] < 600
    if behavior == "docstring":
        # The documented caveat (organisms.py): trained on the behavior's one layout, the organism
        # copies the def's fifth parameter (a positional shortcut), so one parameter fewer before
        # the matching ones breaks it.  This pins that down, so a change that fixes it shows here.
        from circuitflow.behaviors import get_behavior

        model, tokenizer, _ = organisms.load_organism(tmp_path)
        docstring = get_behavior("docstring")
        frame = docstring.make_dataset(200, 7)
        shifted = frame.with_columns(
            clean=frame["clean"].map_elements(lambda p: " ".join(p.split(" ")[:4] + p.split(" ")[6:]), return_dtype=str)
        )
        examples = docstring.encode(shifted, tokenizer)
        with torch.no_grad():
            accuracy = organisms.correct("docstring", model(examples["clean"]), examples).mean()
        assert accuracy < 0.5, "the docstring organism no longer takes the positional shortcut: update the caveat"


@pytest.mark.slow
def test_full_induction_training_learns_induction_heads(tmp_path):
    result = organisms.train_organism("induction", {}, tmp_path, progress=False)
    metrics = result["metrics"]
    print("induction", metrics, "wall", result["train_seconds"], "cpu", result["train_cpu_seconds"])
    assert metrics["loss_repeated_half"] < 0.25 * metrics["loss_first_half"]
    assert metrics["accuracy"] >= organisms.ACCURACY_TARGET
    layer_1 = max(metrics[f"induction_score_a1.{h}"] for h in range(4))
    layer_0 = max(metrics[f"induction_score_a0.{h}"] for h in range(4))
    # Induction heads visible: layer 1's heads attend to the token after the first occurrence far
    # above chance (~1/20) and well above layer 0's (measured at the defaults: 0.34 in each of a1.0-a1.2
    # -- the four heads share the work -- against at most 0.14 in layer 0).
    assert layer_1 > 0.25 and layer_1 > 2 * layer_0
    assert result["train_cpu_seconds"] < 600
