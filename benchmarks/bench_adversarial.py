"""Adversarial evaluation at the paper's scale: KL(full || circuit) on 1,000 x 1,000 (clean, corrupted) pairs.

Model: the trained IOI organism and its ACDC circuit, where the pipeline has built them
(data/models/ioi-organism, data/discover/ioi; `dvc repro discover@ioi`), on IOI prompts from the
behavior's generator (1,000 clean, 1,000 corrupted, ACDC's ABC corruption).  Without them (or with
--random), an organism-sized random model: 3 layers, d_model 64, 4 heads, d_mlp 256, vocab 100,
15-token inputs, and a random circuit of 30% of the edges.  One engine circuit per pair, plus the
all-edges reference once per clean input.  Pairs stream to Parquet.
Reports wall time, pairs per second, resident memory (RSS sampled every 0.2 s while pairs stream:
flat means it does not grow with the pairs done; ru_maxrss peak before and after), the KL summary
and tail verdict, and a gradient search for bad inputs against the brute-force worst pair.
Run: python benchmarks/bench_adversarial.py [--n-clean 1000] [--n-corrupted 1000] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from circuitflow.circuit import Circuit
from circuitflow.evaluation.adversarial import read_pair_kl, search_bad_inputs, stream_pair_kl, summarize
from circuitflow.evaluation.tails import tail_verdict
from circuitflow.graph import Graph
from circuitflow.io import write_json_atomic

N_POS, VOCAB = 15, 100


def rss_mb() -> float:
    """Current resident set size in MB (Linux /proc)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def cpu_seconds() -> float:
    """User + system CPU time of this process, all threads (wall time inflates when the machine is shared)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


class RssSampler(threading.Thread):
    """Samples the current RSS every ``interval`` seconds until stopped."""

    def __init__(self, interval: float = 0.2):
        super().__init__(daemon=True)
        self.interval, self.samples, self.stopped = interval, [], threading.Event()

    def run(self) -> None:
        start = time.perf_counter()
        while not self.stopped.wait(self.interval):
            self.samples.append((time.perf_counter() - start, rss_mb()))


ORGANISM, CIRCUIT = Path("data/models/ioi-organism"), Path("data/discover/ioi/acdc_circuit.json")


def ioi_organism(n_clean: int, n_corrupted: int):
    """The pipeline's IOI organism, its ACDC circuit, and IOI prompts (seed 0)."""
    from circuitflow.behaviors import get_behavior
    from circuitflow.models import load_model

    loaded = load_model(ORGANISM)
    behavior = get_behavior("ioi")
    examples = behavior.encode(behavior.make_dataset(max(n_clean, n_corrupted), 0), loaded.tokenizer)
    circuit = Circuit.load(CIRCUIT, loaded.graph)
    description = f"IOI organism ({loaded.model.cfg.n_layers} layers, d_model {loaded.model.cfg.d_model}), its ACDC circuit"
    return loaded.model, loaded.graph, examples["clean"][:n_clean], examples["corrupted"][:n_corrupted], circuit, description


def random_model(n_clean: int, n_corrupted: int):
    cfg = HookedTransformerConfig(n_layers=3, d_model=64, n_heads=4, d_head=16, d_mlp=256, d_vocab=VOCAB,
                                  n_ctx=N_POS, act_fn="gelu", normalization_type="LN", seed=0)
    model = HookedTransformer(cfg).eval()
    graph = Graph.from_config(cfg)
    generator = torch.Generator().manual_seed(0)
    clean = torch.randint(0, VOCAB, (n_clean, N_POS), generator=generator)
    corrupted = torch.randint(0, VOCAB, (n_corrupted, N_POS), generator=generator)
    circuit = Circuit(graph, torch.rand(graph.n_edges, generator=generator) < 0.3)
    return model, graph, clean, corrupted, circuit, "3 layers, d_model 64, 4 heads, d_mlp 256, vocab 100, 15 tokens, random weights"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-clean", type=int, default=1000)
    parser.add_argument("--n-corrupted", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=256, help="pairs per engine pass")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--search-steps", type=int, default=100, help="gradient-search steps (0 skips the search)")
    parser.add_argument("--out", type=Path, default=None, help="where to write pairs.parquet (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--random", action="store_true", help="the random-weight model even when the IOI organism is built")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if not args.random and ORGANISM.joinpath("config.json").exists() and CIRCUIT.exists():
        model, graph, clean, corrupted, circuit, description = ioi_organism(args.n_clean, args.n_corrupted)
    else:
        model, graph, clean, corrupted, circuit, description = random_model(args.n_clean, args.n_corrupted)

    folder = args.out or Path(tempfile.mkdtemp(prefix="bench_adversarial_"))
    path = folder / "pairs.parquet"
    n_pairs = args.n_clean * args.n_corrupted
    rss_before, peak_before = rss_mb(), peak_rss_mb()
    sampler = RssSampler()
    sampler.start()
    start, cpu_start = time.perf_counter(), cpu_seconds()
    stream_pair_kl(model, graph, clean, corrupted, {"circuit": circuit}, path, batch_size=args.batch_size, progress=True)
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
    sampler.stopped.set()
    sampler.join()
    peak_after = peak_rss_mb()
    # flatness: RSS over the first tenth of the run against the rest
    samples = np.array(sampler.samples) if sampler.samples else np.array([[0.0, rss_mb()]])
    early = samples[samples[:, 0] <= max(0.1 * seconds, samples[0, 0])][:, 1]
    kl = read_pair_kl(path, "circuit")
    summary = summarize(kl)
    verdict = tail_verdict(kl)

    figures = {
        "model": description,
        "edges": graph.n_edges,
        "circuit_edges": len(circuit),
        "pairs": n_pairs,
        "batch_size": args.batch_size,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_1min_at_end": os.getloadavg()[0],
        "seconds": seconds,
        "pairs_per_second": n_pairs / seconds,
        "cpu_seconds": cpu,
        "pairs_per_cpu_second": n_pairs / cpu,
        "rss_mb_before": rss_before,
        "rss_mb_first_tenth_max": float(early.max()),
        "rss_mb_during_max": float(samples[:, 1].max()),
        "rss_mb_at_10_25_50_75_100_percent_of_run": [
            round(float(samples[min(int(f * len(samples)), len(samples) - 1), 1]), 1) for f in (0.1, 0.25, 0.5, 0.75, 1.0)
        ],
        "rss_mb_during_last": float(samples[-1, 1]),
        "peak_rss_mb_before": peak_before,
        "peak_rss_mb_after": peak_after,
        "parquet_mb": path.stat().st_size / 2**20,
        "kl_mean": summary["mean"],
        "kl_p50": summary["p50"],
        "kl_p99": summary["p99"],
        "kl_p99.99": summary["p99.99"],
        "kl_max": summary["max"],
        "tail": verdict.explain(),
    }
    if args.search_steps > 0:
        start = time.perf_counter()
        found = search_bad_inputs(model, graph, circuit, clean, corrupted, n_restarts=8, steps=args.search_steps, lr=0.2)
        figures.update({
            "search_seconds": time.perf_counter() - start,
            "search_best_kl": found.best,
            "search_best_soft_kl": float(found.kl.max()),
            "search_best_hard_kl": float(found.hard_kl.max()),
            "search_over_brute_force_max": found.best / summary["max"],
            "search_over_brute_force_median": found.best / summary["p50"],
        })
    width = max(map(len, figures))
    for key, value in figures.items():
        print(f"{key:<{width}}  {value:.4g}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    if args.json:
        write_json_atomic(args.json, figures)


if __name__ == "__main__":
    main()
