"""The learned planner (Taufeeque et al. 2024; Guez et al. 2019; REFERENCE.md 12): a DRC agent that
plays Sokoban, and the experiments on its thinking steps, pacing and plan probes.

    levels.py       Boxoban's text format, the reverse-play level generator
    sokoban.py      the batched torch environment (Boxoban's rules and rewards), a Gymnasium wrapper
    drc.py          DRC(D, N) with a hook on every layer's hidden and cell state
    training.py     PPO, deterministic and resumable to the byte
    artefacts.py    the trained model's folder (what the models stage writes for kind ``planner``)
    experiments.py  success and pacing against thinking steps, box-push probes on the cell states
    figures.py      their figures

Nothing here imports TransformerLens.
"""
