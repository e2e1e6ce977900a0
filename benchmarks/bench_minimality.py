"""Speed of the minimality test (Shi et al. 2024) at the paper's N = 1,000 references.

The test evaluates 1 + |C| + 2N circuits through the patching engine (``run_circuits`` with
(circuit, n_edges) masks, via ``hypothesis_tests.circuit_evaluator``).  Cases:
  tracr-reverse     ground truth (11 edges), zero ablation, MSE against the full model, the
                    pipeline's dataset (every input of length 4: 81)
  tracr-proportion  ground truth (5 edges), zero ablation, the pipeline's dataset (256)
  organism          run from a project where `dvc repro` has built them: the IOI organism and its
                    ACDC circuit, resample ablation, 100 IOI prompts, the IOI score; else a
                    random-weight model of its size (2 layers, d_model 64, 4 heads, d_mlp 256), a
                    20-edge random circuit, 100 examples of 12 tokens, KL at the last position
Reports per case: seconds for the whole test (wall clock and this process's CPU time), circuits evaluated per second, and the sampler alone
(random circuits of the circuit's size drawn per second).  Torch threads: --threads (default 1; the
tiny models are overhead-bound, and more threads only contend on a shared machine).
Run: python benchmarks/bench_minimality.py [--references 1000] [--threads 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import time

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from circuitflow.behaviors import tracr as behaviors
from circuitflow.circuit import Circuit
from circuitflow.evaluation import hypothesis_tests as ht
from circuitflow.evaluation.random_circuits import random_circuit_masks
from circuitflow.graph import Graph
from circuitflow.models import tracr
from circuitflow.metrics import kl_divergence
from circuitflow.ablation import ablation_values
from circuitflow.patching import source_outputs


def tracr_case(name: str, lengths: tuple[int, ...]):
    model, info = tracr.to_hooked_transformer(tracr.compile_program(name))
    graph = tracr.tracr_graph(model)
    circuit = Circuit.from_edges(graph, tracr.ground_truth_circuits(name, model, info)["zero"])
    behavior = {"reverse": "reverse", "frac_prevs": "proportion"}[name]
    zero = ablation_values("zero", like=torch.zeros(graph.n_sources, 1, 1, model.cfg.d_model, dtype=model.cfg.dtype))
    sets = [tracr.enumerate_inputs(info, length) for length in lengths]
    sets.append(behaviors.tokens(behaviors.make_dataset(behavior, None, 1, info=info)))  # the pipeline's dataset
    score = lambda circuit_logits, model_logits, index: behaviors.score(behavior, circuit_logits, model_logits)
    evaluate = ht.concatenate_evaluators([ht.circuit_evaluator(model, graph, t, zero, score) for t in sets])
    return evaluate, circuit, sum(len(t) for t in sets)


def organism_case():
    """The pipeline's IOI organism and its ACDC circuit where they are built (`dvc repro discover@ioi`),
    else a random-weight model of its size and a random 20-edge circuit."""
    from pathlib import Path

    if Path("data/models/ioi-organism/config.json").exists() and Path("data/discover/ioi/acdc_circuit.json").exists():
        from circuitflow.behaviors import get_behavior
        from circuitflow.models import load_model

        loaded = load_model("data/models/ioi-organism")
        ioi = get_behavior("ioi")
        examples = ioi.encode(ioi.make_dataset(100, 0), loaded.tokenizer)
        ablated = ablation_values("resample", corrupted=source_outputs(loaded.model, loaded.graph, examples["corrupted"]))
        score = lambda circuit_logits, model_logits, index: ioi.score(circuit_logits, model_logits, {k: v[index] for k, v in examples.items()})
        circuit = Circuit.load("data/discover/ioi/acdc_circuit.json", loaded.graph)
        return ht.circuit_evaluator(loaded.model, loaded.graph, examples["clean"], ablated, score, batch_size=100), circuit, 100
    cfg = HookedTransformerConfig(n_layers=2, d_model=64, n_heads=4, d_head=16, d_mlp=256, d_vocab=100, n_ctx=16,
                                  act_fn="gelu", normalization_type="LN", seed=0)
    model = HookedTransformer(cfg).eval()
    graph = Graph.from_config(cfg)
    generator = torch.Generator().manual_seed(0)
    clean = torch.randint(0, cfg.d_vocab, (100, 12), generator=generator)
    corrupted = torch.randint(0, cfg.d_vocab, (100, 12), generator=generator)
    ablated = ablation_values("resample", corrupted=source_outputs(model, graph, corrupted))
    score = lambda circuit_logits, model_logits, index: kl_divergence(model_logits[:, -1], circuit_logits[:, -1])
    circuit = Circuit(graph, random_circuit_masks(graph, 20, 1, 0)[0])
    return ht.circuit_evaluator(model, graph, clean, ablated, score, batch_size=100), circuit, 100


def measure(case: str, evaluate, circuit: Circuit, n_examples: int, n_references: int) -> dict:
    start, cpu = time.perf_counter(), time.process_time()
    result = ht.minimality_test(evaluate, circuit, n_references=n_references, progress=False)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    n_circuits = 1 + len(circuit) + 2 * n_references
    start = time.perf_counter()
    random_circuit_masks(circuit.graph, len(circuit), 1000, 0)
    sampling = time.perf_counter() - start
    return {
        "case": case,
        "graph_edges": circuit.graph.n_edges,
        "circuit_edges": len(circuit),
        "n_examples": n_examples,
        "n_references": n_references,
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu_seconds, 2),  # this process only: far below `seconds` when others share the CPU
        "circuits_per_second": round(n_circuits / seconds, 1),
        "random_circuits_sampled_per_second": round(1000 / sampling, 1),
        "minimal": result.result.passes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--references", type=int, default=ht.N_REFERENCES)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cases = [
        ("tracr-reverse", *tracr_case("reverse", ())),
        ("tracr-proportion", *tracr_case("frac_prevs", ())),
        ("organism", *organism_case()),
    ]
    with torch.no_grad():
        rows = [measure(name, evaluate, circuit, n, args.references) for name, evaluate, circuit, n in cases]
    for row in rows:
        print(f"{row['case']:17s} {row['circuit_edges']:3d}/{row['graph_edges']:3d} edges, {row['n_examples']} examples, "
              f"N={row['n_references']}: {row['seconds']:7.2f} s ({row['cpu_seconds']:.2f} s CPU), {row['circuits_per_second']:7.1f} circuits/s, "
              f"sampler {row['random_circuits_sampled_per_second']:8.1f} random circuits/s, minimal={row['minimal']}")
    if args.json:
        from circuitflow.io import write_json_atomic

        write_json_atomic(args.json, {"torch_threads": args.threads, "cases": rows})


if __name__ == "__main__":
    main()
