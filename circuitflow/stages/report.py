"""The report stage: one self-contained HTML page, the AUC table first, then per pair its figures
and circuit diagrams, and the settings of the run."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from circuitflow.circuit import Circuit
from circuitflow.report.figures import plot_circuit
from circuitflow.report.html import ReportSection, write_report
from circuitflow.settings import Settings
from circuitflow.stages import StepResult
from circuitflow.stages.artefacts import discover_dir, figure_dir, read_csv


def _summary_sections() -> list[ReportSection]:
    """The tables over every pair: AUCs, saved circuits, Table 1, and the SIIT, positional and
    adversarial sections where those figures ran."""
    roc_dir, hypothesis_dir, adversarial_dir = figure_dir("roc"), figure_dir("hypothesis"), figure_dir("adversarial")
    sections = [ReportSection(
        title="Discovery against the ground truth",
        text="Edge and node AUC of each method where the model's circuit is known (higher is better; "
             "pessimistic = the ACDC paper's staircase AUC).",
        tables=[("AUC", read_csv(roc_dir / "auc_table.csv")),
                ("Saved circuits: edges and fraction of the model's score recovered", read_csv(roc_dir / "circuit_table.csv"))],
    ), ReportSection(
        title="Hypothesis tests (Shi et al.)",
        text="Table 1 as in the paper: each circuit (rows) under each test (columns), passes / fails / "
             "not applicable with the p-value; for the counting tests k (random circuits or references "
             "beaten) and the ties among them. A test is not applicable where the model's own score has "
             "no variance (tracr, categorical SIIT: the score compares the model with itself). Per pair "
             "below: the random-circuit sweeps and per-edge minimality effects.",
        tables=[("Table 1", read_csv(hypothesis_dir / "table1.csv")),
                ("Every test in full", read_csv(hypothesis_dir / "table.csv"))],
    )]
    mib_dir = figure_dir("mib")
    if (mib_dir / "cpr_cmd.csv").exists():
        table = pl.read_csv(mib_dir / "cpr_cmd.csv")
        sections.append(ReportSection(
            title="MIB circuit localization (Mueller et al. 2025)",
            text="For k in 0.1% ... 100% of the edges, the top k edges by score (pruned of edges off every "
                 "input-to-logits path) are kept and the rest ablated; f_k = (m(C_k) - m(empty)) / (m(full) - "
                 "m(empty)), m the behavior's metric (the logit difference for the logit-margin behaviors). "
                 "CPR: the area under f_k with edges ranked by signed scores (higher is better); CMD: the area "
                 "of |1 - f_k| with edges ranked by absolute scores (0 is best). MIB reports random scores "
                 "at a CMD of about 0.7 and EAP-IG near 0.",
            figures=sorted(mib_dir.glob("mib_*.png")),
            tables=[("CMD (lower is better), pair x method", table.pivot("method", index="pair", values="cmd")),
                    ("CPR (higher is better), pair x method", table.pivot("method", index="pair", values="cpr"))],
        ))
    siit_dir = figure_dir("siit")
    if (siit_dir / "auroc_table.csv").exists():
        sections.append(ReportSection(
            title="SIIT benchmark (InterpBench)",
            text="Every discovery method on every SIIT-trained model: edge AUROC against the circuit the "
                 "model was trained to implement (higher is better).",
            figures=[siit_dir / "auroc_boxes.png"],
            tables=[("Edge AUROC (pessimistic), case x method",
                     pl.read_csv(siit_dir / "auroc_table.csv").pivot("method", index="case", values="edge_auc")),
                    ("SIIT training (accuracy, IIA and strict accuracy: mean and worst node)", pl.read_csv(siit_dir / "training.csv"))],
        ))
    positional_dir = figure_dir("positional")
    if (positional_dir / "layer_importance.csv").exists():
        importance = pl.read_csv(positional_dir / "layer_importance.csv")
        sections.append(ReportSection(
            title="Positional attribution (Mamba IOI, Ensign & Garriga-Alonso)",
            text="Positional EAP-IG: one signed score per edge and token position (red: the edge pushes "
                 "towards the answer); per layer, the summed |score| of the edges into and out of it.",
            figures=sorted(positional_dir.glob("heatmap_*.png")) + sorted(positional_dir.glob("layers_*.png")),
            tables=[("Layer importance", importance)],
        ))
    if (adversarial_dir / "percentiles.csv").exists():
        sections.append(ReportSection(
            title="Adversarial evaluation and tails",
            text="KL(model || circuit) at the answer over every (clean, corrupted) pair (lower is better); "
                 "p99_bound: the order-statistic upper bound on the 99th percentile. The tail verdicts say "
                 "whether the circuit's failures are heavier-tailed than exponential.",
            tables=[("Percentiles", pl.read_csv(adversarial_dir / "percentiles.csv")),
                    ("Tail verdicts", pl.read_csv(adversarial_dir / "tails.csv")),
                    ("Worst pairs", pl.read_csv(adversarial_dir / "worst.csv"))],
        ))
    return sections


def _pair_section(settings: Settings, name: str, out: Path) -> ReportSection:
    """One pair's figures and each method's circuit diagram."""
    pair = settings.pair(name)
    roc_dir, faithfulness_dir = figure_dir("roc"), figure_dir("faithfulness")
    hypothesis_dir, adversarial_dir = figure_dir("hypothesis"), figure_dir("adversarial")
    candidates = [roc_dir / f"roc_{name}.png", faithfulness_dir / f"faithfulness_{name}.png",
                  hypothesis_dir / f"sufficiency_{name}.png", hypothesis_dir / f"minimality_{name}.png",
                  *(adversarial_dir / f"{kind}_{name}.png" for kind in ("kl", "hill", "qq", "ioi_groups"))]
    figures = [path for path in candidates if path.exists()]
    for method in settings.methods:
        circuit = Circuit.load(discover_dir(name) / f"{method}_circuit.json")
        figures += plot_circuit(circuit.edges, out / f"{name}_{method}_circuit.png",
                                f"{name}: {method} circuit ({len(circuit)} edges)", formats=("png",))
    text = f"Model {pair.model}, behavior {pair.behavior}, {pair.ablation} ablation, methods {', '.join(settings.methods)}."
    return ReportSection(title=name, text=text, figures=figures)


def run(settings: Settings, out: Path) -> StepResult:
    """One self-contained HTML page: the summary tables, then per pair its figures and circuit diagrams."""
    sections = _summary_sections() + [_pair_section(settings, name, out) for name in settings.pairs]
    # The science settings only: how the run was orchestrated (task runner, schedules) changes no result.
    science = {k: v for k, v in settings.raw.items() if k not in ("prefect", "deployments", "mlflow")}
    write_report(out / "index.html", sections, settings=science, title="circuitflow report")
    return StepResult(metrics={"n_pairs": len(settings.pairs)})
