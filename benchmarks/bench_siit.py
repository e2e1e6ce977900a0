"""SIIT training: per case, the steps and wall-clock time to reach the target, and the final figures.

Each case trains with ``train_siit`` (one torch thread, deterministic) into a temporary directory,
then every low-level node is resampled on 2,000 fresh (base, source) pairs: the worst non-circuit
node's fraction of changed outputs (target below 1%) and the worst circuit node's agreement with the
high-level model's prediction under the same intervention.
Run: python benchmarks/bench_siit.py [--cases reverse hist ...] [--batch-size 128] [--max-steps 4000]
                                     [--target 0.99] [--json out.json]
     python benchmarks/bench_siit.py --built data/models/siit-*     (models the pipeline trained)
"""

from __future__ import annotations

import argparse
import json
import tempfile

from circuitflow.models import siit
from circuitflow.behaviors.siit_cases import CASES


def bench_case(name: str, settings: dict) -> dict:
    """Train case ``name`` in a temporary directory, then measure it."""
    with tempfile.TemporaryDirectory() as directory:
        result = siit.train_siit(name, settings, directory, progress=False)
        return {"case": name, "train_seconds": round(result["train_seconds"], 1), **measure_built(directory)}


def measure_built(directory: str) -> dict:
    """The final figures of the SIIT model in ``directory`` (as written by the models stage) and its
    resampling effects on 2,000 fresh (base, source) pairs."""
    model, config, _ = siit.load_siit(directory)
    case, metrics = CASES[config["case"]], config["metrics"]
    targets = siit.HighLevelTargets(case)
    base, source = siit.eval_pairs(len(case.inputs), 2000, seed=7)
    effects = siit.resampling_effects(model, targets, base, source)
    others = siit.non_circuit_nodes(case, model.cfg)
    circuit = [n for n in effects if n not in others]
    return {
        "case": case.name,
        "steps": metrics["steps"],
        "reached_target": metrics["reached_target"],
        **{k: round(metrics[k], 4) for k in ("accuracy", "iia", "iia_min", "strict_accuracy", "strict_accuracy_min")},
        "worst_non_circuit_changed": round(max(effects[n]["changed"] for n in others), 4),
        "worst_circuit_as_predicted": round(min(effects[n]["as_predicted"] for n in circuit), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--max-steps", type=int, default=4000)
    parser.add_argument("--target", type=float, default=0.99)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--built", nargs="*", default=[], help="measure these model directories (e.g. data/models/siit-*) instead of training")
    args = parser.parse_args()
    rows = []
    for directory in args.built:
        rows.append(measure_built(directory))
        print(json.dumps(rows[-1]), flush=True)
    for name in [] if args.built else args.cases:
        target = min(args.target, 0.95) if name == "ioi" else args.target
        row = bench_case(name, {"batch_size": args.batch_size, "max_steps": args.max_steps, "target": target})
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as file:
            json.dump(rows, file, indent=2)


if __name__ == "__main__":
    main()
