"""Gradient search for bad inputs (uit de Bos & Garriga-Alonso 2024): ascent on KL(full || circuit)
over soft (clean, corrupted) input pairs, convex combinations of real inputs' token embeddings.
KL is the circuit's loss, lower is better for the circuit; the search looks for the highest."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from transformer_lens import HookedTransformer

from circuitflow.circuit import Circuit
from circuitflow.evaluation.adversarial.pairs import answer_positions, check_tokens, pair_kl, stack_masks
from circuitflow.graph import Graph
from circuitflow.metrics import kl_divergence
from circuitflow.numerics import flush_denormal
from circuitflow.patching import patched_forward, run_circuits, source_outputs
from circuitflow.settings import SearchSettings


def _token_embedding(model: HookedTransformer, graph: Graph) -> torch.nn.Module:
    """The model's token-embedding module (a Mamba model's ``embedding``, a transformer's ``embed``)."""
    return model.embedding if graph.is_mamba else model.embed


@contextlib.contextmanager
def _token_embeddings(model: HookedTransformer, graph: Graph, embeddings: torch.Tensor) -> Iterator[None]:
    """While open, the token embedding returns ``embeddings`` (batch, pos, d_model) whatever its
    tokens: the patching engine reads token ids, so soft inputs enter through this forward hook."""

    def replace(module, args, output):
        if output.shape != embeddings.shape:
            raise ValueError(f"Soft embeddings {tuple(embeddings.shape)} do not match the tokens' {tuple(output.shape)}.")
        return embeddings

    handle = _token_embedding(model, graph).register_forward_hook(replace)
    try:
        yield
    finally:
        handle.remove()


@dataclass(frozen=True)
class BadInputSearch:
    """What ``search_bad_inputs`` found; KL(full || circuit) is the loss, lower is better for the circuit."""

    kl: torch.Tensor  # (restart,) best KL reached on the soft inputs
    hard_kl: torch.Tensor  # (restart,) KL of the hard projections (tokens of the heaviest weight)
    clean_tokens: torch.Tensor  # (restart, pos) hard projection of the best clean weights
    corrupted_tokens: torch.Tensor  # (restart, pos)
    clean_weights: torch.Tensor  # (restart, pos, n_clean_pool) softmax weights at the best step
    corrupted_weights: torch.Tensor  # (restart, pos, n_corrupted_pool)
    history: torch.Tensor  # (steps, restart) KL at each step

    @property
    def best(self) -> float:
        """The largest KL found, soft or hard."""
        return float(torch.cat([self.kl, self.hard_kl]).max())


def search_bad_inputs(
    model: HookedTransformer,
    graph: Graph,
    mask: torch.Tensor | Circuit,
    clean_pool: torch.Tensor,
    corrupted_pool: torch.Tensor,
    *,
    position: int = -1,
    n_restarts: int = SearchSettings.restarts,
    steps: int = SearchSettings.steps,
    lr: float = 0.1,
    seed: int = 0,
) -> BadInputSearch:
    """Gradient ascent on KL(full || circuit) over soft (clean, corrupted) input pairs.

    At each position the input's token embedding is a convex combination (softmax weights) of the
    pool inputs' token embeddings at that position, for the clean and the corrupted input alike;
    the corrupted one's source activations are the resample-ablation values, so the gradient reaches
    both.  Each restart starts 95% on a random real pair (seeded) and runs ``steps`` Adam steps.
    mask: (n_edges,) or a Circuit; clean_pool (n_clean, pos), corrupted_pool (n_corrupted, pos)
    token ids of real inputs.  The soft inputs lie between real embeddings but need not be
    realisable as tokens: ``hard_kl`` scores their projection onto each position's heaviest token.
    """
    check_tokens(clean_pool, corrupted_pool)
    _, masks = stack_masks(graph, {"circuit": mask})
    if n_restarts < 1 or steps < 1:
        raise ValueError(f"n_restarts ({n_restarts}) and steps ({steps}) must be at least 1.")
    position = int(answer_positions(position, 1, clean_pool.shape[1])[0])
    soft = _SoftPairs(model, graph, masks.to(clean_pool.device), clean_pool, corrupted_pool, n_restarts, position)
    generator = torch.Generator().manual_seed(seed)
    clean_logits, corrupted_logits = soft.start(clean_pool.shape[0], generator), soft.start(corrupted_pool.shape[0], generator)
    optimizer = torch.optim.Adam([clean_logits, corrupted_logits], lr=lr)
    best_kl = torch.full((n_restarts,), -1.0, dtype=torch.float64, device=clean_pool.device)
    best_clean = clean_logits.detach().softmax(-1)
    best_corrupted = corrupted_logits.detach().softmax(-1)
    history = []
    for _ in range(steps):
        clean_w, corrupted_w = clean_logits.softmax(-1), corrupted_logits.softmax(-1)
        kl = soft.kl(clean_w, corrupted_w)  # (restart,)
        improved = kl.detach() > best_kl
        best_kl = torch.where(improved, kl.detach(), best_kl)
        best_clean = torch.where(improved[:, None, None], clean_w.detach(), best_clean)
        best_corrupted = torch.where(improved[:, None, None], corrupted_w.detach(), best_corrupted)
        history.append(kl.detach())
        # gradients for the weights only: the model's parameters get none (and cost none)
        with flush_denormal(graph.is_mamba):  # a Mamba scan's gradients decay into subnormals too
            clean_logits.grad, corrupted_logits.grad = torch.autograd.grad(-kl.sum(), [clean_logits, corrupted_logits])
        optimizer.step()
    return soft.result(best_kl, best_clean, best_corrupted, torch.stack(history))


class _SoftPairs:
    """The fixed parts of one search: the pools' token embeddings (n, pos, d_model), the circuit's
    mask and the constant inputs of the engine; KL of soft pairs and the hard projections' result."""

    def __init__(self, model, graph: Graph, masks: torch.Tensor, clean_pool: torch.Tensor, corrupted_pool: torch.Tensor, n_restarts: int, position: int):
        self.model, self.graph, self.masks, self.position = model, graph, masks, position
        self.clean_pool, self.corrupted_pool, self.n_restarts = clean_pool, corrupted_pool, n_restarts
        device, n_pos = clean_pool.device, clean_pool.shape[1]
        with torch.no_grad():
            embed = _token_embedding(model, graph)
            self.clean_embed, self.corrupted_embed = embed(clean_pool), embed(corrupted_pool)  # (n, pos, d_model)
        dtype = self.clean_embed.dtype
        self.dummy = torch.zeros(n_restarts, n_pos, dtype=torch.long, device=device)
        self.keep_all = torch.ones(graph.n_edges, dtype=dtype, device=device)
        self.all_ones = torch.ones(1, graph.n_sources, graph.n_destinations, dtype=dtype, device=device)
        self.zeros = torch.zeros(graph.n_sources, 1, 1, model.cfg.d_model, dtype=dtype, device=device)

    def start(self, pool_size: int, generator: torch.Generator) -> torch.Tensor:
        """Weight logits (restart, pos, pool_size), 95% on one seeded random input of the pool."""
        chosen = torch.randint(pool_size, (self.n_restarts,), generator=generator)
        logits = torch.zeros(self.n_restarts, self.clean_pool.shape[1], pool_size, dtype=self.clean_embed.dtype)
        # weight 0.95 on the chosen input: e^a / (e^a + n - 1) = 0.95
        logits[torch.arange(self.n_restarts), :, chosen] = math.log(19 * max(pool_size - 1, 1))
        return logits.to(self.clean_pool.device).requires_grad_()

    def kl(self, clean_w: torch.Tensor, corrupted_w: torch.Tensor) -> torch.Tensor:
        """KL(full || circuit) at the answer position of the soft pairs with these weights, (restart,)."""
        model, graph = self.model, self.graph
        with _token_embeddings(model, graph, torch.einsum("rpn,npd->rpd", corrupted_w, self.corrupted_embed)):
            _, outputs = patched_forward(model, graph, self.dummy, self.zeros, self.all_ones, return_deltas=True)
        with _token_embeddings(model, graph, torch.einsum("rpn,npd->rpd", clean_w, self.clean_embed)):
            reference = run_circuits(model, graph, self.dummy, self.zeros, self.keep_all)[:, self.position].double()
            circuit = run_circuits(model, graph, self.dummy, outputs[0], self.masks[0])[:, self.position].double()
        return kl_divergence(reference, circuit)

    def result(self, best_kl: torch.Tensor, best_clean: torch.Tensor, best_corrupted: torch.Tensor, history: torch.Tensor) -> BadInputSearch:
        """The search's result, with the hard projections of the best weights scored by ``pair_kl``."""
        device, n_restarts = self.clean_pool.device, self.n_restarts
        positions_index = torch.arange(self.clean_pool.shape[1], device=device)
        clean_tokens = self.clean_pool[best_clean.argmax(-1), positions_index]  # (restart, pos)
        corrupted_tokens = self.corrupted_pool[best_corrupted.argmax(-1), positions_index]
        hard_outputs = source_outputs(self.model, self.graph, corrupted_tokens)
        restarts = torch.arange(n_restarts, device=device)
        hard_kl = pair_kl(
            self.model, self.graph, clean_tokens, hard_outputs, self.masks, restarts, restarts,
            torch.full((n_restarts,), self.position, device=device),
        )[0]
        return BadInputSearch(
            kl=best_kl.clamp_min(0.0),
            hard_kl=hard_kl,
            clean_tokens=clean_tokens,
            corrupted_tokens=corrupted_tokens,
            clean_weights=best_clean,
            corrupted_weights=best_corrupted,
            history=history,
        )
