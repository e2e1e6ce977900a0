"""The report's first screen: which method found which circuit, how faithful it is, and whether it
passes the hypothesis tests, as small pivoted tables (pair x method) and Table 1's grid.

Pure functions of the figure stages' tables (the CSVs under data/figures): no file is read here.
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

DIGITS = 3


def pivot(frame: pl.DataFrame, values: str, methods: Sequence[str], index: str = "pair") -> pl.DataFrame:
    """``frame``'s ``values`` as one row per ``index`` and one column per method, in ``methods``'
    order (methods absent from ``frame`` are left out), floats rounded to ``DIGITS`` places."""
    if frame.is_empty() or values not in frame.columns:
        return pl.DataFrame(schema={index: pl.String})
    table = frame.pivot("method", index=index, values=values, aggregate_function="first", maintain_order=True)
    columns = [m for m in methods if m in table.columns]
    # + 0.0 turns the -0.0 that rounding leaves into 0.0
    return table.select(index, *[pl.col(m).round(DIGITS) + 0.0 if table[m].dtype.is_float() else pl.col(m) for m in columns])


def glance_tables(
    auc: pl.DataFrame, circuits: pl.DataFrame, cpr_cmd: pl.DataFrame | None, methods: Sequence[str]
) -> list[tuple[str, pl.DataFrame]]:
    """The pair x method tables: edge AUC where a ground truth exists, the saved circuit's size and
    the fraction of the metric it recovers, MIB's CMD and CPR (with random scores' as a baseline)."""
    tables = []
    if not auc.is_empty():
        tables.append(("Edge AUC against the ground truth (pessimistic; 1 = perfect, 0.5 = chance)", pivot(auc, "edge_auc_pessimistic", methods)))
    tables += [("Saved circuit: edges", pivot(circuits, "edges", methods)),
               ("Saved circuit: fraction of the metric recovered (1 = the model)", pivot(circuits, "recovered", methods))]
    if cpr_cmd is not None and not cpr_cmd.is_empty():
        with_random = (*methods, "random")
        tables += [("MIB CMD (0 is best)", pivot(cpr_cmd, "cmd", with_random)),
                   ("MIB CPR (higher is better)", pivot(cpr_cmd, "cpr", with_random))]
    return tables


def table1_caption(table1: pl.DataFrame) -> str:
    """Table 1's caption, with the outcome counts: how many circuit x test cells pass, fail, or do
    not apply."""
    cells = [v for column in table1.columns[2:] for v in table1[column].to_list() if v]
    counts = {word: sum(str(v).startswith(word) for v in cells) for word in ("passes", "fails", "not applicable")}
    return ("Table 1 (Shi et al.): each circuit (rows) under each test (columns): passes / fails / not applicable, with the "
            f"p-value (k, ties: counting tests). {counts['passes']} pass, {counts['fails']} fail, {counts['not applicable']} not applicable.")


__all__ = ["glance_tables", "pivot", "table1_caption"]
