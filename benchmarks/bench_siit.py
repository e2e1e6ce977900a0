"""SIIT training: per case, the steps and wall-clock time to reach the target, and the final figures.

Each case trains with ``train_siit`` (one torch thread, deterministic) into a temporary directory,
then every low-level node is resampled on 2,000 fresh (base, source) pairs: the worst non-circuit
node's fraction of changed outputs (target below 1%) and the worst circuit node's agreement with the
high-level model's prediction under the same intervention.
Run: python benchmarks/bench_siit.py [--cases reverse hist ...] [--batch-size 128] [--max-steps 3000]
                                     [--target 0.99] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile

from circuitflow.models import siit
from circuitflow.models.siit_cases import CASES


def bench_case(name: str, settings: dict) -> dict:
    with tempfile.TemporaryDirectory() as directory:
        result = siit.train_siit(name, settings, directory, progress=False)
        model = siit.load_siit(directory)[0]
    case = CASES[name]
    targets = siit.HighLevelTargets(case)
    base, source = siit.eval_pairs(len(case.inputs), 2000, seed=7)
    effects = siit.resampling_effects(model, targets, base, source)
    others = siit.non_circuit_nodes(case, model.cfg)
    circuit = [n for n in effects if n not in others]
    return {
        "case": name,
        "steps": result["steps"],
        "train_seconds": round(result["train_seconds"], 1),
        "reached_target": result["reached_target"],
        **{k: round(result[k], 4) for k in ("accuracy", "iia", "iia_min", "strict_accuracy", "strict_accuracy_min")},
        "worst_non_circuit_changed": round(max(effects[n]["changed"] for n in others), 4),
        "worst_circuit_as_predicted": round(min(effects[n]["as_predicted"] for n in circuit), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--max-steps", type=int, default=3000)
    parser.add_argument("--target", type=float, default=0.99)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    rows = []
    for name in args.cases:
        target = min(args.target, 0.95) if name == "ioi" else args.target
        row = bench_case(name, {"batch_size": args.batch_size, "max_steps": args.max_steps, "target": target})
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as file:
            json.dump(rows, file, indent=2)


if __name__ == "__main__":
    main()
