"""What every figure of the report shows, its axes and units, and how to read it: one caption per
kind of figure, ``{pair}`` filled in per pair (``caption``)."""

from __future__ import annotations

CAPTIONS = {
    "fraction_all": (
        "Faithfulness of every pair on one scale. y: fraction of the behavior's metric the circuit recovers, "
        "(m(C) - m(empty)) / (m(full) - m(empty)) (1 = the whole model, 0 = every edge ablated; the black line marks 1); "
        "x: fraction of the model's edges kept, top edges by |score| (log scale). One line per method, grey dashed: "
        "random scores. Read: the further left a curve reaches 1, the smaller the faithful circuit."),
    "fraction": (
        "{pair}: fraction of the metric recovered, (m(C) - m(empty)) / (m(full) - m(empty)), against the fraction of "
        "edges kept (top edges by |score|, log scale), on the y scale shared by every pair. These are MIB's f_k circuits "
        "(evaluate's mib.parquet); 1 = the model, 0 = the empty circuit, grey dashed = random scores."),
    "roc": (
        "{pair}: edge ROC against the ground truth. x: false positive rate, y: true positive rate (fractions of the "
        "non-circuit and circuit edges), each method's threshold sweep drawn as the pessimistic staircase; legend: "
        "pessimistic and trapezoid AUC (higher is better, dotted diagonal = chance)."),
    "circuits": (
        "{pair}: each method's saved circuit side by side, on the same node positions (inputs at the bottom, per layer "
        "the heads then the MLP, logits at the top). Line width: the edge's |score| relative to the largest in that "
        "circuit. Where the ground truth is known (first panel): green = edge in it, red = not in it, dotted grey = "
        "ground-truth edge the circuit misses; otherwise colour = the input the edge feeds (q, k, v, MLP / logits). "
        "Layout hand-made (Graphviz's dot is not used, so the picture does not depend on it being installed)."),
    "faithfulness": (
        "{pair}: faithfulness loss (the behavior's loss of the circuit against the full model, lower is better, in the "
        "behavior's units) against the number of edges kept (top edges by score; log axis when the sizes span decades). "
        "The secondary faithfulness figure: the normalised fraction is the one above."),
    "sufficiency": (
        "{pair}: the circuit under test against random circuits (Shi et al.). x: random circuit size as a fraction of the "
        "model's edges; y: fraction of random circuits the circuit beats (sufficiency: lower score with the circuit alone; "
        "partial necessity: higher score with it removed). Filled markers: the binomial test passes at that size; "
        "dashed: q*; dotted: the circuit's own size."),
    "minimality": (
        "{pair}: per edge of the circuit under test, the change of the mean score when it is knocked out (symmetric-log "
        "x axis, score units); blue = necessary, red = found unnecessary; grey bar: the range of the reference deltas of "
        "random added edges, dashed: their q* quantile. Read: edges left of the dashed line do no more than a random edge."),
    "mib": (
        "{pair}: MIB's f_k, the fraction of the metric recovered by the top k of the edges (x: k, fraction of edges kept; "
        "y: f_k, 1 = the model). Solid: edges ranked by signed score (CPR = area under it, higher is better); dashed: by "
        "|score| (CMD = area between it and 1, lower is better)."),
    "kl": (
        "{pair}: distribution of KL(model || circuit) at the answer position over every (clean, corrupted) pair "
        "(x: KL in nats, lower is better), one per circuit; the worst cases sit in the right tail."),
    "hill": (
        "{pair}: Hill plot of the circuit's per-pair KL. x: k, the number of largest values used; y: the tail index "
        "alpha estimated from them. A plateau gives the tail's alpha; small alpha = heavy tail (rare large failures)."),
    "qq": (
        "{pair}: Q-Q plots of the circuit's per-pair KL against a normal and an exponential distribution (x: theoretical "
        "quantiles, y: observed). Points bending above the line at the right: a heavier tail than that distribution."),
    "ioi_groups": (
        "{pair}: mean KL(model || circuit) by indirect-object name (rows) and template (columns), nats; darker = the "
        "circuit fails more on that group."),
    "auroc_boxes": (
        "Edge AUROC (pessimistic, against the circuit each SIIT model was trained to implement) per method over the "
        "SIIT cases: box = quartiles, dots = cases; dotted line 0.5 = chance, higher is better."),
    "heatmap": (
        "{pair}: positional EAP-IG, one signed score per edge (rows) and token position (columns); red pushes towards "
        "the answer, blue away, colour scale in logit-difference units."),
    "layers": (
        "{pair}: per layer, the summed |positional EAP-IG score| of the edges into it and out of it (logit-difference "
        "units); the tallest bars are the layers the behavior runs through."),
}


def caption(kind: str, pair: str = "") -> str:
    """The caption of a figure of kind ``kind`` (a key of ``CAPTIONS``) for ``pair``."""
    return CAPTIONS[kind].format(pair=pair)


__all__ = ["CAPTIONS", "caption"]
