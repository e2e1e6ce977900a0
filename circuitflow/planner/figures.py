"""The learned planner's figures: success against thinking steps per checkpoint, pacing against
thinking steps, and probe accuracy against thinking steps (PNG, matplotlib's Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import polars as pl  # noqa: E402


def _save(figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(figure)


def plot_success(table: pl.DataFrame, path: Path, title: str) -> None:
    """One panel per level set: success rate against thinking steps, one line per checkpoint."""
    sets = table["level_set"].unique(maintain_order=True).to_list()
    figure, axes = plt.subplots(1, len(sets), figsize=(4.5 * len(sets), 3.5), squeeze=False)
    for ax, level_set in zip(axes[0], sets):
        part = table.filter(pl.col("level_set") == level_set)
        for steps in part["env_steps"].unique().sort().to_list():
            line = part.filter(pl.col("env_steps") == steps).sort("thinking_steps")
            ax.plot(line["thinking_steps"], line["success"], marker="o", label=f"{steps:,} steps")
        ax.set(xscale="symlog", xlabel="thinking steps", ylabel="success rate", title=f"{title}: {level_set} levels", ylim=(0, 1))
        ax.legend(fontsize=7)
    _save(figure, path)


def plot_pacing(table: pl.DataFrame, path: Path, title: str) -> None:
    """The final checkpoint: fraction of episodes with an early cycle, and steps to solve, against thinking steps."""
    final = table.filter(pl.col("env_steps") == table["env_steps"].max())
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for level_set in final["level_set"].unique(maintain_order=True).to_list():
        line = final.filter(pl.col("level_set") == level_set).sort("thinking_steps")
        axes[0].plot(line["thinking_steps"], line["cycle_fraction"], marker="o", label=level_set)
        axes[1].plot(line["thinking_steps"], line["steps_to_solve"], marker="o", label=level_set)
    axes[0].set(xscale="symlog", xlabel="thinking steps", ylabel="episodes with an early cycle", title=f"{title}: pacing")
    axes[1].set(xscale="symlog", xlabel="thinking steps", ylabel="steps to solve (solved episodes)", title=f"{title}: solution length")
    axes[0].legend()
    _save(figure, path)


def plot_probe(table: pl.DataFrame, path: Path, title: str) -> None:
    """Probe accuracy (all steps, first step) and the majority baseline against thinking steps."""
    table = table.sort("thinking_steps")
    figure, ax = plt.subplots(figsize=(4.8, 3.5))
    for column, label in (("accuracy", "all steps"), ("accuracy_first_step", "first step"), ("majority_accuracy", "majority class")):
        ax.plot(table["thinking_steps"], table[column], marker="o", label=label)
    ax.set(xscale="symlog", xlabel="thinking steps", ylabel="next box-push direction accuracy", title=f"{title}: probe", ylim=(0, 1))
    ax.legend(fontsize=8)
    _save(figure, path)
