"""The report stage: one self-contained HTML page.  The first screen answers "which method found
which circuit, how faithful, does it pass the tests" (pair x method tables and Table 1's grid);
then faithfulness on one scale for every pair, the full tables, one section per pair (figures with
captions, the circuits side by side) and the settings of the run."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from circuitflow.circuit import Circuit
from circuitflow.report.captions import caption
from circuitflow.report.circuit_grid import plot_circuit_grid
from circuitflow.report.html import ReportSection, write_report
from circuitflow.report.summary import glance_tables, table1_caption
from circuitflow.settings import Settings
from circuitflow.stages import StepResult
from circuitflow.stages.artefacts import discover_dir, figure_dir, model_dir, read_csv


def _optional_csv(path: Path) -> pl.DataFrame | None:
    return pl.read_csv(path) if path.exists() else None


def _glance(settings: Settings) -> ReportSection:
    """The first screen: the pair x method tables, then Table 1."""
    roc_dir, hypothesis_dir = figure_dir("roc"), figure_dir("hypothesis")
    tables = glance_tables(read_csv(roc_dir / "auc_table.csv"), read_csv(roc_dir / "circuit_table.csv"),
                           _optional_csv(figure_dir("mib") / "cpr_cmd.csv"), settings.methods)
    table1 = read_csv(hypothesis_dir / "table1.csv")
    return ReportSection(
        title="At a glance",
        text=f"{len(settings.pairs)} pairs (model, behavior), methods {', '.join(settings.methods)}. Rows: pairs; columns: methods. "
             "Each method's saved circuit is cut from its scores (discover.circuit); the tests below judge the circuits "
             "evaluate.hypothesis_tests names. Details per pair further down.",
        tables=[*tables, (table1_caption(table1), table1)],
        side_by_side=True,
    )


def _detail_sections(settings: Settings) -> list[ReportSection]:
    """Faithfulness over every pair, then the full tables of each figure stage that ran."""
    faithfulness_dir, roc_dir, hypothesis_dir = figure_dir("faithfulness"), figure_dir("roc"), figure_dir("hypothesis")
    sections = [ReportSection(
        title="Faithfulness, every pair on one scale",
        text="The faithfulness figure: the normalised fraction of the metric recovered, from the evaluate stage's MIB "
             "circuits (mib.parquet keeps the per-size metric that normalisation needs; faithfulness.parquet keeps only "
             "a loss per size, drawn per pair below as the secondary figure).",
        figures=[(faithfulness_dir / "fraction_all.png", caption("fraction_all"))],
    )] if (faithfulness_dir / "fraction_all.png").exists() else []
    sections += [ReportSection(
        title="Discovery against the ground truth",
        text="Edge and node AUC of each method where the model's circuit is known (higher is better; pessimistic = the "
             "ACDC paper's staircase AUC; trapezoid = linear interpolation between the sweep's points).",
        tables=[("AUC, every level and kind", read_csv(roc_dir / "auc_table.csv")),
                ("Saved circuits: edges and fraction of the metric recovered", read_csv(roc_dir / "circuit_table.csv"))],
    ), ReportSection(
        title="Hypothesis tests (Shi et al.)",
        text="A test is not applicable where the model's own score has no variance (tracr, categorical SIIT: the score "
             "compares the model with itself). Per pair below: the random-circuit sweeps and per-edge minimality effects.",
        tables=[("Every test in full: statistic, p-value, k, ties, reason", read_csv(hypothesis_dir / "table.csv"))],
    )]
    return sections + _benchmark_sections()


def _benchmark_sections() -> list[ReportSection]:
    """MIB, SIIT, positional and adversarial sections where those figures ran."""
    sections, mib_dir, siit_dir = [], figure_dir("mib"), figure_dir("siit")
    positional_dir, adversarial_dir = figure_dir("positional"), figure_dir("adversarial")
    if (mib_dir / "cpr_cmd.csv").exists():
        sections.append(ReportSection(
            title="MIB circuit localization (Mueller et al. 2025)",
            text="For k in 0.1% ... 100% of the edges, the top k edges by score (pruned of edges off every input-to-logits "
                 "path) are kept and the rest ablated; f_k = (m(C_k) - m(empty)) / (m(full) - m(empty)). CPR: the area under "
                 "f_k with edges ranked by signed scores (higher is better); CMD: the area of |1 - f_k| with edges ranked by "
                 "absolute scores (0 is best). MIB reports random scores at a CMD of about 0.7 and EAP-IG near 0. Curves per pair below.",
            tables=[("CPR and CMD, every pair and method", pl.read_csv(mib_dir / "cpr_cmd.csv"))]))
    if (siit_dir / "auroc_table.csv").exists():
        sections.append(ReportSection(
            title="SIIT benchmark (InterpBench)",
            text="Every discovery method on every SIIT-trained model: edge AUROC against the circuit the model was trained to implement.",
            figures=[(siit_dir / "auroc_boxes.png", caption("auroc_boxes"))],
            tables=[("Edge AUROC (pessimistic), case x method", pl.read_csv(siit_dir / "auroc_table.csv").pivot("method", index="case", values="edge_auc")),
                    ("SIIT training (accuracy, IIA and strict accuracy: mean and worst node)", pl.read_csv(siit_dir / "training.csv"))]))
    if (positional_dir / "layer_importance.csv").exists():
        sections.append(ReportSection(
            title="Positional attribution (Mamba IOI, Ensign & Garriga-Alonso)",
            text="Positional EAP-IG: one signed score per edge and token position; per layer, the summed |score| of the edges into and out of it.",
            figures=[(p, caption(p.stem.split("_")[0], p.stem.split("_", 1)[1])) for kind in ("heatmap", "layers") for p in sorted(positional_dir.glob(f"{kind}_*.png"))],
            tables=[("Layer importance", pl.read_csv(positional_dir / "layer_importance.csv"))]))
    if (adversarial_dir / "percentiles.csv").exists():
        sections.append(ReportSection(
            title="Adversarial evaluation and tails",
            text="KL(model || circuit) at the answer over every (clean, corrupted) pair (nats, lower is better); p99_bound: the "
                 "order-statistic upper bound on the 99th percentile. The tail verdicts say whether the circuit's failures are "
                 "heavier-tailed than exponential.",
            tables=[("Percentiles", pl.read_csv(adversarial_dir / "percentiles.csv")), ("Tail verdicts", pl.read_csv(adversarial_dir / "tails.csv")),
                    ("Worst pairs", pl.read_csv(adversarial_dir / "worst.csv"))]))
    planner_dir = figure_dir("planner")
    if (planner_dir / "thinking.csv").exists():
        captions = {"success": "Success rate on held-out levels (y, fraction solved) against the thinking steps N the agent is "
                               "given on the first observation before it acts (x), one line per training checkpoint; easier and "
                               "harder level sets. Thinking helps where the lines rise with N.",
                    "pacing": "Pacing: the fraction of episodes that return to an earlier state in their first steps, and the "
                              "steps to solve, against the thinking steps N. Thinking that replaces pacing lowers both.",
                    "probe": "Linear probes per square for the direction the box there is next pushed, decoded from the "
                             "ConvLSTM cell states: accuracy against N, with the majority-class baseline."}
        sections.append(ReportSection(
            title="The learned planner (Taufeeque et al. 2024)",
            text="A DRC ConvLSTM agent trained here with PPO on generated Sokoban levels (a reduced scale of the paper's "
                 "2 billion steps): does extra computation at the start of an episode raise its success, reduce pacing, "
                 "and extend the plan a linear probe can read?",
            figures=[(path, captions[path.stem.split("_")[0]]) for kind in captions for path in sorted(planner_dir.glob(f"{kind}_*.png"))],
            tables=[("Success, cycles and steps to solve against thinking steps", pl.read_csv(planner_dir / "thinking.csv")),
                    ("Probe accuracy against thinking steps", pl.read_csv(planner_dir / "probe.csv"))]))
    return sections


def ground_truth(settings: Settings, name: str) -> list[str] | None:
    """The pair's ground-truth edges under its ablation (tracr's differ by ablation), or None."""
    pair = settings.pair(name)
    path = model_dir(pair.model) / "ground_truth.json"
    if not path.exists():
        return None
    truth = json.loads(path.read_text())
    if "edges" in truth:  # a pretrained model's canonical circuit: one edge list
        return list(truth["edges"])
    return truth.get(pair.ablation.value, truth.get("zero"))


def _pair_section(settings: Settings, name: str, out: Path) -> ReportSection:
    """One pair's figures, each with its caption, and its circuits side by side."""
    pair = settings.pair(name)
    scores = pl.read_parquet(discover_dir(name) / "scores.parquet")
    circuits = {m: (Circuit.load(discover_dir(name) / f"{m}_circuit.json").edges, dict(zip(scores["edge"].to_list(), scores[m].to_list())))
                for m in settings.methods}
    truth = ground_truth(settings, name)
    grid = plot_circuit_grid(circuits, out / f"{name}_circuits.png", f"{name}: each method's saved circuit", truth=truth)[0]
    candidates = [("fraction", figure_dir("faithfulness") / f"fraction_{name}.png"), ("roc", figure_dir("roc") / f"roc_{name}.png"),
                  ("circuits", grid), ("faithfulness", figure_dir("faithfulness") / f"faithfulness_{name}.png"),
                  *((kind, figure_dir("hypothesis") / f"{kind}_{name}.png") for kind in ("sufficiency", "minimality")),
                  ("mib", figure_dir("mib") / f"mib_{name}.png"),
                  *((kind, figure_dir("adversarial") / f"{kind}_{name}.png") for kind in ("kl", "hill", "qq", "ioi_groups"))]
    figures = [(path, caption(kind, name)) for kind, path in candidates if path.exists()]
    known = f"ground truth known ({len(truth)} edges)" if truth is not None else "no ground truth"
    text = f"Model {pair.model}, behavior {pair.behavior}, {pair.ablation.value} ablation, {known}; methods {', '.join(settings.methods)}."
    return ReportSection(title=name, text=text, figures=figures)


def run(settings: Settings, out: Path) -> StepResult:
    """One self-contained HTML page: the first screen's tables, the detail tables, then per pair its
    figures and circuits side by side."""
    sections = [_glance(settings), *_detail_sections(settings), *(_pair_section(settings, name, out) for name in settings.pairs)]
    # The science settings only: how the run was orchestrated (task runner, schedules) changes no result.
    science = {k: v for k, v in settings.raw.items() if k not in ("prefect", "deployments", "mlflow")}
    write_report(out / "index.html", sections, settings=science, title="circuitflow report")
    return StepResult(metrics={"n_pairs": len(settings.pairs)}, params={"pairs": list(settings.pairs), "methods": list(settings.methods)})
