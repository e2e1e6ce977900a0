"""Tracr-compiled models with known circuits (REFERENCE.md 4): convert, verify, save.

The two RASP programs and their compiling are ``behaviors/tracr_programs.py``'s (the behaviors'
datasets need tracr's encoding).  Compiled, they give:

``reverse``     4 layers, 1 head each, d_model 41, d_head 12, d_mlp 30, categorical output.
``frac_prevs``  2 layers, d_model 14, d_head 7, d_mlp 1, one numerical output.

Each is converted to a float64 TransformerLens ``HookedTransformer`` (no LayerNorm, ReLU, standard
positional embeddings, separate ``W_E`` and ``W_pos``, bidirectional attention) whose unembedding is
built from the residual-space labels and tracr's output encoder, and checked against tracr itself on
every input of length 1..5 (363 and 1,364 inputs; the largest difference is about 2e-16).

Token ids and residual labels are tracr's, as ``TracrInfo`` records them (``tracr_programs``).

Ground-truth circuits
---------------------
Edges use the project's names (``circuitflow.graph`` with ``split_input=True``): sources ``embed``,
``pos_embed``, ``a{l}.0``, ``m{l}``; destinations ``a{l}.0.q|k|v``, ``m{l}``, ``logits``.

Zero ablation, derived by ``ground_truth_circuits`` in three steps:

1. Structural: ``src -> dst`` is a candidate when the product of the matrix ``src`` writes with
   (``W_E``, ``W_pos``, the head's ``W_O``, the MLP's ``W_out`` and ``b_out``) and the one ``dst``
   reads with (``W_Q``/``W_K``/``W_V`` of the head, ``W_in``, ``W_U``) is non-zero.  Tracr gives each
   RASP variable its own residual directions, so the product is exactly zero unless ``dst`` reads a
   variable ``src`` writes; the empty components (reverse: attention of layers 1 and 2, the MLP of
   layer 3; frac_prevs: attention of layer 0, the MLP of layer 1) have all-zero weights and drop out.
   This gives 15 candidates for reverse and 7 for frac_prevs.
2. Functional: visiting destinations from ``logits`` backwards (ACDC's order), zero-ablate each
   candidate edge on top of those already removed, and remove it for good when no output at
   positions 1.. moves by more than ``tol`` (1e-4) on any of the 363 / 1,364 inputs of length 1..5.
   It removes ``embed -> a0.0.q`` and ``embed -> a0.0.k`` (the ``length`` head attends uniformly to
   every position whatever its query and key, so ablating them changes nothing at all) and, in both
   programs, the edges from ``embed`` to the query and key of the aggregating head (``a3.0`` /
   ``a1.0``): they read the ``one`` and ``tokens:BOS`` directions with which every tracr aggregate
   attends a little to BOS, a default for queries that select no key.  Here every query selects a
   key, so they move outputs by at most 5.4e-7 (reverse) and 6.2e-9 (frac_prevs), while every kept
   edge moves some output by at least 0.5: any ``tol`` between 1e-6 and 0.5 gives the same circuits.
3. Prune to the edges on a path from ``embed``/``pos_embed`` to ``logits``.

reverse, 11 edges::

    embed -> a0.0.v, a0.0 -> m0, embed -> m0                  length (selector width, BOS and `one`)
    m0 -> m1, pos_embed -> m1, embed -> m1                     opp_idx = length - indices (`one` = bias)
    m1 -> m2                                                   opp_idx - 1
    m2 -> a3.0.q, pos_embed -> a3.0.k, embed -> a3.0.v         reverse: query opp_idx-1, key index, value token
    a3.0 -> logits

frac_prevs, 5 edges::

    embed -> m0                                                tokens == "x" (numerical)
    pos_embed -> a1.0.q, pos_embed -> a1.0.k, m0 -> a1.0.v    mean over positions <= the query's
    a1.0 -> logits

Against ACDC (``acdc/tracr_task/utils.py``, ``get_tracr_reverse_edges`` and
``get_tracr_proportion_edges``): ACDC's published counts, 15 and 10, also count one "direct" edge
from each used q/k/v input to its head (``hook_q_input -> hook_q``; ``qkv_direct_edges`` in
``circuitflow.graph``).  Its reverse circuit has exactly our 11 residual edges plus 4 direct ones
(a3.0 q, k, v and a0.0 v): 15.  Its proportion circuit has 7 residual edges, our 5 plus
``embed -> a1.0.q`` and ``embed -> a1.0.k``, plus 3 direct ones: 10.  Those two edges carry the BOS
default above, which only matters when BOS appears after position 0: ACDC's proportion data wrote
w, x, y, z as token ids 0..3, which in tracr's encoding are BOS, PAD, w, x, without a leading BOS.
On those inputs the two edges move outputs by 0.67; on well-formed inputs by 6e-9.  We keep the
circuit of well-formed inputs (5 edges; 8 counted ACDC's way), the same rule that gives ACDC's own
reverse circuit.

Caveat: on full-length inputs alone (the datasets of ``circuitflow.behaviors.tracr``) zero-ablating
``a0.0 -> m0`` or ``embed -> a0.0.v`` changes nothing either, since the ``length`` MLP reads a zero
input as the maximum length, 5.  They stay in the circuit because the program needs them for
shorter inputs; a minimality test on full-length data will find them unnecessary.

Resample ablation (the corrupted input is another full-length example of the dataset): an edge whose
carried value ``src_out @ W_read(dst)`` is the same on every full-length input delivers the same
value clean or corrupted, so it carries nothing.  From the structural candidates keep the edges whose
carried value varies over all full-length inputs (243 / 1,024), then prune to paths.  Length,
``opp_idx``, positions and the BOS default are the same on every full-length input, so:

    reverse, 2 edges:     embed -> a3.0.v, a3.0 -> logits
    frac_prevs, 3 edges:  embed -> m0, m0 -> a1.0.v, a1.0 -> logits

Files written by ``save_tracr_model``: ``model.safetensors`` (the state dict), ``config.json`` (the
``HookedTransformerConfig`` fields, the tracr encoding in ``TracrInfo``, library versions) and
``ground_truth.json``; all atomic and byte-identical across runs.
"""

from __future__ import annotations

import importlib.metadata
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save
from torch import Tensor
from transformer_lens import HookedTransformer, HookedTransformerConfig

from circuitflow.behaviors.tracr_programs import (
    TRACR_NAMES,  # noqa: F401 - the program names, read from here by this module's users
    CompiledProgram,
    TracrInfo,
    TracrName,
    check_program,
    compile_program,
    compiled_info,
    enumerate_inputs,
)
from circuitflow.graph import Graph
from circuitflow.io import write_atomic, write_json_atomic
from circuitflow.patching import run_circuits, source_outputs

CONFIG_FORMAT = "circuitflow.tracr/1"
# Outputs and carried values that move by no more than this are "unchanged" (see the module docstring
# for the gap it sits in: 6e-9 and 5.4e-7 below it, 0.5 above).
GROUND_TRUTH_TOL = 1e-4


# ---- conversion to TransformerLens -------------------------------------------------------------


def _hooked_config(fields: dict, device: str | torch.device = "cpu") -> HookedTransformerConfig:
    fields = dict(fields)
    fields["dtype"] = getattr(torch, fields["dtype"])
    return HookedTransformerConfig(**fields, device=str(device), init_weights=False)


def _build_hooked(fields: dict, device: str | torch.device = "cpu") -> HookedTransformer:
    with warnings.catch_warnings():  # 3.9 announces its 4.0 removal; this project pins 3.9 (DESIGN.md)
        warnings.filterwarnings("ignore", message="HookedTransformer is deprecated", category=DeprecationWarning)
        model = HookedTransformer(_hooked_config(fields, device))
    return model.eval()


def _unembedding(compiled: CompiledProgram) -> np.ndarray:
    """(d_model, d_vocab_out): output id j reads the residual direction ``<output label>:<token j>``
    (or the single direction ``<output label>`` of a numerical output)."""
    assembled = compiled.assembled
    labels = list(assembled.residual_labels)
    output_label = compiled.program.label
    output_map = getattr(assembled.output_encoder, "encoding_map", None)
    if output_map is None:
        wanted = {output_label: 0}
    else:
        wanted = {f"{output_label}:{token}": j for token, j in output_map.items()}
    missing = sorted(set(wanted) - set(labels))
    if missing:
        raise ValueError(f"The residual stream of {compiled.name} lacks the output directions {missing}.")
    w_u = np.zeros((len(labels), len(wanted)))
    for label, j in wanted.items():
        w_u[labels.index(label), j] = 1.0
    return w_u


def to_hooked_transformer(compiled: CompiledProgram) -> tuple[HookedTransformer, TracrInfo]:
    """Convert a compiled program to a float64 ``HookedTransformer`` (CPU, eval mode) and its info."""
    assembled = compiled.assembled
    params = {module: {k: np.asarray(v, dtype=np.float64) for k, v in p.items()} for module, p in assembled.params.items()}
    config = assembled.model_config
    if config.layer_norm or config.causal:
        raise ValueError(f"{compiled.name} was compiled with LayerNorm or causal attention, which this converter does not handle.")
    w_e = params["token_embed"]["embeddings"]
    w_pos = params["pos_embed"]["embeddings"]
    w_u = _unembedding(compiled)
    d_model, n_heads, d_head = w_e.shape[1], config.num_heads, config.key_size
    fields = {
        "n_layers": config.num_layers,
        "d_model": d_model,
        "n_heads": n_heads,
        "d_head": d_head,
        "d_mlp": config.mlp_hidden_size,
        "d_vocab": w_e.shape[0],
        "d_vocab_out": w_u.shape[1],
        "n_ctx": w_pos.shape[0],
        "act_fn": "relu",
        "normalization_type": None,
        "attention_dir": "bidirectional",
        "positional_embedding_type": "standard",
        "default_prepend_bos": False,
        "dtype": "float64",
        "model_name": f"tracr-{compiled.name}",
    }
    model = _build_hooked(fields)

    def heads_in(w: np.ndarray) -> np.ndarray:  # (d_model, head * d_head) -> (head, d_model, d_head)
        return w.reshape(d_model, n_heads, d_head).transpose(1, 0, 2)

    weights = {"embed.W_E": w_e, "pos_embed.W_pos": w_pos, "unembed.W_U": w_u, "unembed.b_U": np.zeros(w_u.shape[1])}
    for layer in range(config.num_layers):
        attn, mlp = f"transformer/layer_{layer}/attn", f"transformer/layer_{layer}/mlp"
        for tl_name, tracr_name in (("Q", "query"), ("K", "key"), ("V", "value")):
            weights[f"blocks.{layer}.attn.W_{tl_name}"] = heads_in(params[f"{attn}/{tracr_name}"]["w"])
            weights[f"blocks.{layer}.attn.b_{tl_name}"] = params[f"{attn}/{tracr_name}"]["b"].reshape(n_heads, d_head)
        weights[f"blocks.{layer}.attn.W_O"] = params[f"{attn}/linear"]["w"].reshape(n_heads, d_head, d_model)
        weights[f"blocks.{layer}.attn.b_O"] = params[f"{attn}/linear"]["b"]
        weights[f"blocks.{layer}.mlp.W_in"] = params[f"{mlp}/linear_1"]["w"]
        weights[f"blocks.{layer}.mlp.b_in"] = params[f"{mlp}/linear_1"]["b"]
        weights[f"blocks.{layer}.mlp.W_out"] = params[f"{mlp}/linear_2"]["w"]
        weights[f"blocks.{layer}.mlp.b_out"] = params[f"{mlp}/linear_2"]["b"]
    state = model.state_dict()
    unknown = sorted(set(weights) - set(state))
    if unknown:  # pragma: no cover - guards against a TransformerLens renaming
        raise ValueError(f"TransformerLens has no parameters {unknown}; the converter needs updating.")
    for key, value in weights.items():
        state[key] = torch.tensor(np.ascontiguousarray(value), dtype=torch.float64)
    model.load_state_dict(state, strict=True)
    return model, compiled_info(compiled)


# ---- verification against tracr ----------------------------------------------------------------


def tracr_outputs(compiled: CompiledProgram) -> list[tuple[Tensor, np.ndarray]]:
    """Tracr's own outputs before any argmax on every input of length 1..max_seq_len.

    One (tokens (n, L + 1), outputs (n, L + 1, d_vocab_out)) pair per length L; the haiku forward
    runs jitted on the whole batch of each length (about 0.5 s per length, mostly XLA compiling).
    """
    import haiku as hk
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    assembled = compiled.assembled

    @hk.without_apply_rng
    @hk.transform
    def forward(tokens):
        model = assembled.get_compiled_model()
        residual = model.transformer(model.embed(tokens), jnp.ones_like(tokens), use_dropout=False).output
        return model.unembed(residual, use_unembed_argmax=False)

    apply = jax.jit(forward.apply)
    info = compiled_info(compiled)
    results = []
    for length in range(1, info.max_seq_len + 1):
        tokens = enumerate_inputs(info, length)
        outputs = np.asarray(apply(assembled.params, jnp.asarray(tokens.numpy())), dtype=np.float64)
        if outputs.ndim == 2:  # tracr squeezes a numerical output
            outputs = outputs[..., None]
        results.append((tokens, outputs))
    return results


def verify_conversion(
    compiled: CompiledProgram,
    model: HookedTransformer,
    *,
    tol: float = 1e-9,
    reference: list[tuple[Tensor, np.ndarray]] | None = None,
) -> float:
    """Largest absolute difference between ``model``'s and tracr's outputs over every input of length
    1..5 (all positions, before argmax); raises ``ValueError`` when it exceeds ``tol`` or, for a
    categorical output, when an argmax at positions 1.. differs.  ``reference``: ``tracr_outputs``
    computed before (it takes most of the time); the model is not changed.
    """
    reference = tracr_outputs(compiled) if reference is None else reference
    worst, worst_tokens = 0.0, None
    categorical = compiled_info(compiled).categorical_output
    for tokens, expected in reference:
        with torch.no_grad():
            got = model(tokens.to(model.cfg.device)).double().cpu().numpy()
        if got.shape != expected.shape:
            raise ValueError(f"The converted {compiled.name} model outputs shape {got.shape}, tracr {expected.shape}.")
        diff = np.abs(got - expected).max(axis=(1, 2))
        if categorical:  # an argmax flip is a failure whatever its size
            flipped = (got[:, 1:].argmax(-1) != expected[:, 1:].argmax(-1)).any(-1)
            diff = np.where(flipped, np.inf, diff)
        i = int(diff.argmax())
        if diff[i] > worst or worst_tokens is None:
            worst, worst_tokens = float(diff[i]), tokens[i].tolist()
    if not worst <= tol:
        raise ValueError(
            f"The converted {compiled.name} model differs from tracr by {worst:.3g} (tolerance {tol:g}) "
            f"on input ids {worst_tokens}, so the conversion is wrong."
        )
    return worst


def build_tracr_model(name: TracrName, *, tol: float = 1e-9) -> tuple[HookedTransformer, TracrInfo]:
    """Compile, convert and verify ``name``: the model every later stage uses."""
    compiled = compile_program(name)
    model, info = to_hooked_transformer(compiled)
    verify_conversion(compiled, model, tol=tol)
    return model, info


# ---- ground-truth circuits ---------------------------------------------------------------------


def tracr_graph(model: HookedTransformer) -> Graph:
    """The project's graph of a tracr model: token and position embeddings are separate sources."""
    return Graph.from_config(model.cfg, split_input=True)


def _write_read_matrices(model: HookedTransformer, graph: Graph) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Per source, the rows it can write into the residual stream; per destination, the matrix it reads with."""
    write: dict[str, Tensor] = {"embed": model.W_E, "pos_embed": model.W_pos}
    read: dict[str, Tensor] = {"logits": model.W_U}
    for layer in range(model.cfg.n_layers):
        for head in range(model.cfg.n_heads):
            write[f"a{layer}.{head}"] = model.W_O[layer, head]
            for kind, weight in (("q", model.W_Q), ("k", model.W_K), ("v", model.W_V)):
                read[f"a{layer}.{head}.{kind}"] = weight[layer, head]
        write[f"m{layer}"] = torch.cat([model.W_out[layer], model.b_out[layer][None]])
        read[f"m{layer}"] = model.W_in[layer]
    missing = (set(graph.sources) - set(write)) | (set(graph.destinations) - set(read))
    if missing:  # pragma: no cover - graph and model come from one config
        raise ValueError(f"No weights for the graph nodes {sorted(missing)}.")
    return write, read


def _split(edge: str) -> tuple[str, str]:
    src, dst = edge.split(" -> ")
    return src, dst


def _prune_to_paths(edges: set[str]) -> set[str]:
    """The edges on some path from embed/pos_embed to logits (a destination q/k/v/MLP input leads
    to the source of its head/MLP)."""

    def node_of(dst: str) -> str:  # the source a destination feeds: a1.0.q -> a1.0, m2 -> m2
        return dst.rsplit(".", 1)[0] if dst[-2:] in (".q", ".k", ".v") else dst

    reached = {"embed", "pos_embed"}
    changed = True
    while changed:  # forward reachability; tiny graphs, so a fixed point is cheap
        changed = False
        for src, dst in map(_split, edges):
            if src in reached and node_of(dst) not in reached:
                reached.add(node_of(dst))
                changed = True
    useful = {"logits"}
    changed = True
    while changed:  # backward from logits
        changed = False
        for src, dst in map(_split, edges):
            if node_of(dst) in useful and src not in useful:
                useful.add(src)
                changed = True
    return {e for e in edges if _split(e)[0] in reached and node_of(_split(e)[1]) in useful}


def structural_edges(model: HookedTransformer) -> list[str]:
    """Edges whose source writes residual directions their destination reads (non-zero product of
    the writing and reading matrices), pruned to paths from the inputs to the logits; graph order."""
    graph = tracr_graph(model)
    write, read = _write_read_matrices(model, graph)
    kept = set()
    for edge in graph.edge_names:
        src, dst = _split(edge)
        if bool((write[src] @ read[dst]).abs().max() > 0):
            kept.add(edge)
    kept = _prune_to_paths(kept)
    return [e for e in graph.edge_names if e in kept]


def _acdc_order(graph: Graph, edges: Sequence[str]) -> list[str]:
    """Destinations from the output backwards, and each destination's sources from the latest back."""
    dst_rank = {d: i for i, d in enumerate(graph.destinations)}
    src_rank = {s: i for i, s in enumerate(graph.sources)}
    return sorted(edges, key=lambda e: (-dst_rank[_split(e)[1]], -src_rank[_split(e)[0]]))


class _ZeroAblationProbe:
    """Every input of length 1..max_seq_len with the full model's outputs, to measure how far
    zero-ablating edges moves the outputs at positions 1.. (one batched run per length)."""

    def __init__(self, model: HookedTransformer, info: TracrInfo):
        self.model, self.graph = model, tracr_graph(model)
        self.batches = []
        with torch.no_grad():
            for length in range(1, info.max_seq_len + 1):
                tokens = enumerate_inputs(info, length).to(model.cfg.device)
                self.batches.append((tokens, model(tokens)[:, 1:]))

    def largest_change(self, circuits: Sequence[Sequence[str]]) -> list[float]:
        """Per circuit (a list of kept edges), the largest change of any output over every input."""
        graph, cfg = self.graph, self.model.cfg
        masks = torch.zeros(len(circuits), graph.n_edges, dtype=cfg.dtype, device=cfg.device)
        for row, kept in enumerate(circuits):
            masks[row, [graph.edge_index[e] for e in kept]] = 1
        zero = torch.zeros(graph.n_sources, 1, 1, cfg.d_model, dtype=cfg.dtype, device=cfg.device)
        worst = torch.zeros(len(circuits), dtype=cfg.dtype, device=cfg.device)
        with torch.no_grad():
            for tokens, full in self.batches:
                logits = run_circuits(self.model, graph, tokens, zero, masks)[:, :, 1:]
                worst = torch.maximum(worst, (logits - full).abs().amax(dim=(1, 2, 3)))
        return worst.tolist()


def zero_ablation_effects(
    model: HookedTransformer, info: TracrInfo, kept: Sequence[str], candidates: Sequence[str]
) -> dict[str, float]:
    """For each candidate edge of the circuit ``kept``: the largest change of any output at positions
    1.. over every input of length 1..max_seq_len, against the full model, when that edge is
    zero-ablated too."""
    probe = _ZeroAblationProbe(model, info)
    changes = probe.largest_change([[e for e in kept if e != edge] for edge in candidates])
    return dict(zip(candidates, changes))


def _zero_circuit(model: HookedTransformer, info: TracrInfo, candidates: list[str], tol: float) -> set[str]:
    probe = _ZeroAblationProbe(model, info)
    kept = list(candidates)
    for edge in _acdc_order(probe.graph, candidates):
        without = [e for e in kept if e != edge]
        if probe.largest_change([without])[0] <= tol:
            kept = without
    return _prune_to_paths(set(kept))


def _resample_circuit(model: HookedTransformer, info: TracrInfo, candidates: list[str], tol: float) -> set[str]:
    graph = tracr_graph(model)
    write, read = _write_read_matrices(model, graph)
    tokens = enumerate_inputs(info, info.max_seq_len).to(model.cfg.device)
    varying = set()
    with torch.no_grad():
        outputs = source_outputs(model, graph, tokens)  # (source, batch, pos, d_model)
        for edge in candidates:
            src, dst = _split(edge)
            carried = outputs[graph.source_index[src]] @ read[dst]  # (batch, pos, d_read)
            if float((carried - carried[:1]).abs().max()) > tol:
                varying.add(edge)
    return _prune_to_paths(varying)


def ground_truth_circuits(
    name: TracrName, model: HookedTransformer, info: TracrInfo, *, tol: float = GROUND_TRUTH_TOL
) -> dict[str, list[str]]:
    """The ground-truth circuit of ``model`` per ablation, {"zero": [...], "resample": [...]}, each a
    sorted list of edge names, derived as the module docstring describes (0.5-2 s).  ``tol``: an
    output change (zero) or a carried-value spread (resample) no larger than this counts as none."""
    check_program(name)
    if info.name != name:
        raise ValueError(f"The tracr info describes {info.name!r}, not {name!r}; pass the info of the same model.")
    candidates = structural_edges(model)
    return {
        "zero": sorted(_zero_circuit(model, info, candidates, tol)),
        "resample": sorted(_resample_circuit(model, info, candidates, tol)),
    }


# ---- saving and loading ------------------------------------------------------------------------

_CONFIG_FIELDS = (
    "n_layers", "d_model", "n_heads", "d_head", "d_mlp", "d_vocab", "d_vocab_out", "n_ctx", "act_fn",
    "normalization_type", "attention_dir", "positional_embedding_type", "default_prepend_bos", "model_name",
)


def _config_fields(model: HookedTransformer) -> dict:
    fields = {key: getattr(model.cfg, key) for key in _CONFIG_FIELDS}
    fields["dtype"] = str(model.cfg.dtype).removeprefix("torch.")
    return fields


def save_tracr_model(directory: str | Path, name: TracrName) -> Path:
    """Compile, convert and verify ``name``, derive its ground truth, and write ``model.safetensors``,
    ``config.json`` and ``ground_truth.json`` into ``directory`` (see ``write_tracr_model``).
    The same program always gives the same bytes.  Returns ``directory``.
    """
    check_program(name)
    compiled = compile_program(name)
    model, info = to_hooked_transformer(compiled)
    verify_conversion(compiled, model)
    return write_tracr_model(directory, model, info, ground_truth_circuits(name, model, info))


def write_tracr_model(
    directory: str | Path, model: HookedTransformer, info: TracrInfo, ground_truth: dict[str, list[str]]
) -> Path:
    """Write a converted model, its info and ground truth into ``directory`` (created if needed), each
    file atomically; JSON keys sorted, so equal inputs give equal bytes.  Returns ``directory``."""
    directory = Path(directory)
    if set(ground_truth) != {"zero", "resample"}:
        raise ValueError(f"The ground truth needs the keys 'zero' and 'resample', got {sorted(ground_truth)}.")
    config = {
        "format": CONFIG_FORMAT,
        "hooked_transformer_config": _config_fields(model),
        "tracr": info.to_json(),
        "versions": {pkg: importlib.metadata.version(pkg) for pkg in ("tracr-pypi", "transformer-lens")},
    }
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    blob = save(state)
    write_atomic(directory / "model.safetensors", lambda tmp: tmp.write_bytes(blob))
    write_json_atomic(directory / "config.json", config)
    write_json_atomic(directory / "ground_truth.json", {k: sorted(v) for k, v in ground_truth.items()})
    return directory


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise ValueError(f"{path} is missing; write {what} with save_tracr_model first.")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); rewrite it with save_tracr_model.") from None


def load_tracr_info(directory: str | Path) -> TracrInfo:
    """The ``TracrInfo`` saved in ``directory/config.json``."""
    config = _read_json(Path(directory) / "config.json", "the tracr model")
    if config.get("format") != CONFIG_FORMAT:
        raise ValueError(f"{Path(directory) / 'config.json'} is not a {CONFIG_FORMAT} file; rewrite it with save_tracr_model.")
    return TracrInfo.from_json(config["tracr"])


def load_tracr_model(directory: str | Path, device: str | torch.device = "cpu") -> tuple[HookedTransformer, TracrInfo]:
    """The model and info written by ``save_tracr_model`` (eval mode, float64, on ``device``)."""
    directory = Path(directory)
    info = load_tracr_info(directory)
    config = _read_json(directory / "config.json", "the tracr model")
    weights = directory / "model.safetensors"
    if not weights.is_file():
        raise ValueError(f"{weights} is missing; write the tracr model with save_tracr_model first.")
    model = _build_hooked(config["hooked_transformer_config"], device)
    model.load_state_dict(load_file(weights, device=str(device)), strict=True)
    return model, info


def load_ground_truth(directory: str | Path) -> dict[str, list[str]]:
    """The ground-truth circuits saved in ``directory/ground_truth.json``: {"zero": [...], "resample": [...]}."""
    truth = _read_json(Path(directory) / "ground_truth.json", "the tracr model")
    if set(truth) != {"zero", "resample"}:
        raise ValueError(f"{Path(directory) / 'ground_truth.json'} needs the keys 'zero' and 'resample'; rewrite it with save_tracr_model.")
    return truth
