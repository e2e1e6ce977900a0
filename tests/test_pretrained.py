"""Pretrained loading from a local Hugging Face cache, offline: tiny random models of GPT-2's and
attn-only-4l's architectures are written into a temporary cache in the hub's layout and loaded
through the same code path as the real ones."""

import json
import time
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from circuitflow.graph import Graph
from circuitflow.models import pretrained

WORDS = ["<|endoftext|>"] + [f"w{i}" for i in range(40)]
COMMIT = "1" * 40


def snapshot_dir(cache: Path, repo: str, commit: str = COMMIT) -> Path:
    """Make ``cache``'s folder for ``repo`` as ``hf download`` leaves it: refs/main -> snapshots/<commit>."""
    root = cache / ("models--" + repo.replace("/", "--"))
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)
    return snapshot


def save_word_tokenizer(directory: Path) -> None:
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token=WORDS[0]))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=WORDS[0], eos_token=WORDS[0], unk_token=WORDS[0]
    ).save_pretrained(directory)


@pytest.fixture(scope="module")
def gpt2_cache(tmp_path_factory):
    """A cache holding a 2-layer random GPT-2 as repository ``gpt2``; returns (cache, the HF model)."""
    cache = tmp_path_factory.mktemp("hub")
    snapshot = snapshot_dir(cache, "gpt2")
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=32, n_ctx=32, vocab_size=len(WORDS),
                        bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # non-trivial LayerNorm weights, so that folding or centring would show
        for name, parameter in model.named_parameters():
            if "ln" in name:
                parameter.add_(torch.randn_like(parameter) * 0.2)
    model.save_pretrained(snapshot)
    save_word_tokenizer(snapshot)
    return cache, model


@pytest.fixture(scope="module")
def attn_only_cache(tmp_path_factory):
    """A cache holding a random attn-only-4l-shaped TransformerLens checkpoint (4 layers, 8 heads,
    shortformer) as NeelNanda/Attn_Only_4L512W_C4_Code, with its tokenizer repository."""
    cache = tmp_path_factory.mktemp("hub")
    tokenizer_repo = "NeelNanda/gpt-neox-tokenizer-digits"
    save_word_tokenizer(snapshot_dir(cache, tokenizer_repo))
    snapshot = snapshot_dir(cache, "NeelNanda/Attn_Only_4L512W_C4_Code")
    neel_config = dict(
        d_model=32, n_layers=4, d_mlp=-1, d_head=4, n_heads=8, n_ctx=16, d_vocab=len(WORDS), act_fn="gelu",
        attn_only=True, normalization_type="LN", shortformer_pos=True, tokenizer_name=tokenizer_repo,
    )
    (snapshot / "config.json").write_text(json.dumps(neel_config))
    reference = HookedTransformer(HookedTransformerConfig(
        n_layers=4, d_model=32, d_head=4, n_heads=8, n_ctx=16, d_vocab=len(WORDS), act_fn="gelu",
        attn_only=True, normalization_type="LN", positional_embedding_type="shortformer", seed=0,
    ))
    torch.save(reference.state_dict(), snapshot / "model_final.pth")
    return cache, reference.eval()


def test_gpt2_loads_offline_with_the_original_logits(gpt2_cache):
    cache, hf_model = gpt2_cache
    model = pretrained.load_pretrained("gpt2", cache_dir=cache)
    tokens = torch.randint(0, len(WORDS), (3, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = hf_model(tokens).logits
        assert torch.allclose(model(tokens), expected, atol=1e-5)
        folded = pretrained.load_pretrained("gpt2", cache_dir=cache, fold_ln=True)
        assert folded.cfg.normalization_type == "LNPre"
        assert torch.allclose(folded(tokens), expected, atol=1e-4)
    # no processing: the unembedding is as published (TransformerLens's default would centre it)
    assert torch.equal(model.W_U, hf_model.lm_head.weight.T)
    assert model.tokenizer is not None and model.tokenizer.encode("w1 w2")[-2:] == [2, 3]
    assert Graph.from_config(model.cfg).n_layers == 2


def test_transformer_lens_checkpoint_loads_offline(attn_only_cache):
    cache, reference = attn_only_cache
    model = pretrained.load_pretrained("attn-only-4l", cache_dir=cache)
    assert model.cfg.positional_embedding_type == "shortformer" and model.tokenizer is not None
    tokens = torch.randint(0, len(WORDS), (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(tokens), reference(tokens))
    with pytest.raises(ValueError, match="shortformer positions, where LayerNorm cannot be folded"):
        pretrained.load_pretrained("attn-only-4l", cache_dir=cache, fold_ln=True)


def test_missing_model_is_one_sentence_and_fast(tmp_path):
    start = time.perf_counter()
    with pytest.raises(pretrained.NotInCache) as error:
        pretrained.load_pretrained("gpt2", cache_dir=tmp_path / "empty")
    assert time.perf_counter() - start < 5  # no network retries
    message = str(error.value)
    assert message.startswith("gpt2 is not in the Hugging Face cache at ")
    assert "`hf download gpt2`" in message and "HF_HOME" in message and message.count(". ") == 0


def test_missing_tokenizer_names_its_repository(attn_only_cache, tmp_path):
    cache, _ = attn_only_cache
    import shutil

    partial = tmp_path / "hub"
    shutil.copytree(cache / "models--NeelNanda--Attn_Only_4L512W_C4_Code", partial / "models--NeelNanda--Attn_Only_4L512W_C4_Code")
    with pytest.raises(pretrained.NotInCache, match=r"attn-only-4l's tokenizer .*`hf download NeelNanda/gpt-neox-tokenizer-digits`"):
        pretrained.load_pretrained("attn-only-4l", cache_dir=partial)


def test_default_cache_follows_hf_home_at_call_time(gpt2_cache, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    assert pretrained.hf_cache_dir() == tmp_path / "hub"
    with pytest.raises(pretrained.NotInCache, match=str(tmp_path / "hub")):
        pretrained.load_pretrained("gpt2")
    monkeypatch.setenv("HF_HUB_CACHE", str(gpt2_cache[0]))
    assert pretrained.cached_revision("gpt2") == COMMIT


def test_offline_switch_is_restored(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    before = constants.HF_HUB_OFFLINE
    with pretrained.offline():
        assert constants.HF_HUB_OFFLINE is True
    assert constants.HF_HUB_OFFLINE == before
    import os

    assert "HF_HUB_OFFLINE" not in os.environ


def test_unknown_name_is_one_sentence():
    with pytest.raises(ValueError, match="Unknown pretrained model 'gpt-7'"):
        pretrained.load_pretrained("gpt-7")


def test_model_kind_records_the_revision_and_the_canonical_circuit(attn_only_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(attn_only_cache[0]))
    spec = {"kind": "pretrained", "name": "attn-only-4l", "circuit": "docstring"}
    metrics = pretrained.KIND.build("docstring-model", spec, tmp_path)
    assert metrics["ground_truth_edges"] == 37
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["kind"] == "pretrained" and config["revision"] == COMMIT
    loaded = pretrained.KIND.load(tmp_path)
    assert loaded.graph.qkv_direct_edges and loaded.graph.n_edges == 1377
    assert len(loaded.ground_truth["resample"]) == 37 and set(loaded.ground_truth) == {"zero", "mean", "resample"}
    assert loaded.info["tokenizer"] is loaded.model.tokenizer


def test_model_kind_refuses_bad_specs():
    with pytest.raises(ValueError, match="unknown settings \\['revision'\\]"):
        pretrained.validate("m", {"kind": "pretrained", "name": "gpt2", "revision": "main"})
    with pytest.raises(ValueError, match="belongs to attn-only-4l, not gpt2"):
        pretrained.validate("m", {"kind": "pretrained", "name": "gpt2", "circuit": "docstring"})
    with pytest.raises(ValueError, match="needs `name:`"):
        pretrained.validate("m", {"kind": "pretrained"})
