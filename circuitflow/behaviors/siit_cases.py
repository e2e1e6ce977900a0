"""The SIIT cases (InterpBench, Gupta et al. 2024): the registry ``CASES``, the IOI-like case, and every case's
dataset, score and attribution metric (the ``siit-<case>`` behaviors of ``behaviors/__init__.py``).

A case is a task plus its high-level causal model (``high_level.Case``); the tracr cases come from
RASP programs (``rasp_cases.py``).  The IOI-like case (``ioi``), hand-written; 7 tokens after BOS::

    pos   1    2    3          4      5          6      7
          n1   n2   m3         x4     m5         x6     END

``n1 != n2`` are names; exactly one of the markers ``m3``, ``m5`` is ``said`` and the other is a
filler (``and``/``then``); the name after ``said`` is the subject S, one of n1, n2; the other slot
holds any name (a distractor: possibly n1 or n2 again).  The answer, at END, is the indirect object,
the name of n1, n2 that is not S.  8 names, 3,584 inputs.  High-level nodes (per position values):

``previous_token``  (a0.0)  PT[p] = token[p-1];                            reads q, k, v: input
``duplicate_token`` (a0.1)  DT[p] = token[p] occurs at an earlier position; reads q, k, v: input
``s_inhibition``    (a1.0)  SI[END] = token[q] for the first q in (4, 6) with DT[q] and PT[q] == said
                            (None if no such q); reads q: input, k: PT and DT, v: input
``name_mover``      (a2.0)  NM[END] = n1 if SI != n1 else n2: the output;  reads q: SI, k, v: input
S-inhibition needs both: the distractor slot can hold a duplicated name too (DT alone is ambiguous)
and ``said`` alone does not say whether its name is n1 or n2.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterator, Mapping

import numpy as np
import polars as pl
from torch import Tensor

from circuitflow.behaviors.high_level import INPUT, Case, HighLevelNode, Inputs, Values
from circuitflow.behaviors.rasp_cases import TRACR_CASES, make_tracr_case
from circuitflow.behaviors.tracr import derangement


# ---- the IOI-like case ---------------------------------------------------------------------------

IOI_NAMES = ("Ann", "Bob", "Cat", "Dan", "Eve", "Fay", "Gus", "Hal")
IOI_SAID, IOI_FILLERS, IOI_END = "said", ("and", "then"), "END"
IOI_SEQ_LEN = 7


def _ioi_inputs() -> tuple[Inputs, ...]:
    inputs = []
    for n1, n2 in itertools.permutations(IOI_NAMES, 2):
        for said_first in (True, False):
            for subject in (n1, n2):
                for distractor in IOI_NAMES:
                    for filler in IOI_FILLERS:
                        if said_first:
                            inputs.append((n1, n2, IOI_SAID, subject, filler, distractor, IOI_END))
                        else:
                            inputs.append((n1, n2, filler, distractor, IOI_SAID, subject, IOI_END))
    return tuple(inputs)


def _evaluate_ioi(inputs: Inputs, overrides: Mapping[str, tuple]) -> Values:
    """The IOI-like high-level model; values are per position of ``inputs`` (index 0 = position 1)."""
    unknown = sorted(set(overrides) - {"previous_token", "duplicate_token", "s_inhibition", "name_mover"})
    if unknown:
        raise ValueError(f"Case ioi has no high-level nodes {unknown}.")
    n = len(inputs)

    def value(name: str, compute: Callable[[], tuple]) -> tuple:
        return tuple(overrides[name]) if name in overrides else compute()

    pt = value("previous_token", lambda: (None,) + tuple(inputs[:-1]))
    dt = value("duplicate_token", lambda: tuple(inputs[p] in inputs[:p] for p in range(n)))

    def s_inhibition() -> tuple:
        subject = next((inputs[q] for q in (3, 5) if dt[q] and pt[q] == IOI_SAID), None)
        return (None,) * (n - 1) + (subject,)

    si = value("s_inhibition", s_inhibition)
    nm = value("name_mover", lambda: (None,) * (n - 1) + (inputs[0] if si[-1] != inputs[0] else inputs[1],))
    return {"previous_token": pt, "duplicate_token": dt, "s_inhibition": si, "name_mover": nm}


def make_ioi_case() -> Case:
    """The IOI-like case (see the module docstring)."""
    nodes = (
        HighLevelNode("previous_token", "head", 0, (("q", (INPUT,)), ("k", (INPUT,)), ("v", (INPUT,)))),
        HighLevelNode("duplicate_token", "head", 0, (("q", (INPUT,)), ("k", (INPUT,)), ("v", (INPUT,)))),
        HighLevelNode("s_inhibition", "head", 1, (("q", (INPUT,)), ("k", ("previous_token", "duplicate_token")), ("v", (INPUT,)))),
        HighLevelNode("name_mover", "head", 2, (("q", ("s_inhibition",)), ("k", (INPUT,)), ("v", (INPUT,)))),
    )
    return Case(
        name="ioi", vocab=(IOI_SAID, *IOI_FILLERS, IOI_END, *IOI_NAMES), seq_len=IOI_SEQ_LEN,
        output_values=IOI_NAMES, output_positions=(IOI_SEQ_LEN,), nodes=nodes, output_node="name_mover",
        causal=True, evaluate=_evaluate_ioi, inputs=_ioi_inputs(),
    )


# ---- the registry --------------------------------------------------------------------------------


class _Cases(Mapping):
    """Case name -> ``Case``, each built on first use (tracr programs take ~0.1 s, the import ~1.5 s)."""

    _builders: dict[str, Callable[[], Case]] = {
        **{name: functools.partial(make_tracr_case, name) for name in TRACR_CASES},
        "ioi": make_ioi_case,
    }

    def __getitem__(self, name: str) -> Case:
        if name not in self._builders:
            raise KeyError(f"Unknown SIIT case {name!r}; known cases: {', '.join(self._builders)}.")
        return _built(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._builders)

    def __len__(self) -> int:
        return len(self._builders)


@functools.cache
def _built(name: str) -> Case:
    return _Cases._builders[name]()


CASES: Mapping[str, Case] = _Cases()


def get_case(name: str) -> Case:
    """``CASES[name]`` with a ValueError naming the known cases."""
    if name not in CASES:
        raise ValueError(f"Unknown SIIT case {name!r}; known cases: {', '.join(CASES)}.")
    return CASES[name]


# ---- datasets and scores (the siit-<case> behaviors) ---------------------------------------------


def make_dataset(case: str | Case, n_examples: int | None, seed: int) -> pl.DataFrame:
    """A dataset of ``case``, deterministic from ``seed``: ``n_examples`` inputs drawn without
    replacement (all of them for None), kept in the case's order.

    Columns: ``clean``, ``corrupted`` (list[int64] token ids, BOS first, length seq_len + 1;
    ``corrupted[i] = clean[sigma(i)]`` for a random derangement sigma, so each corrupted input is
    another example) and ``answer``: H's output at ``case.output_positions`` (output ids, or floats for
    a numerical case).
    """
    case = get_case(case) if isinstance(case, str) else case
    everything = list(case.inputs)
    rng = np.random.default_rng(seed)
    if n_examples is not None:
        if not 2 <= n_examples <= len(everything):
            raise ValueError(f"Case {case.name} has {len(everything)} inputs; ask for 2 to {len(everything)} examples, not {n_examples}.")
        everything = [everything[i] for i in np.sort(rng.choice(len(everything), size=n_examples, replace=False))]
    sigma = derangement(len(everything), rng)
    clean = [case.encode(x) for x in everything]
    answer_type = pl.Int64 if case.categorical else pl.Float64
    return pl.DataFrame(
        {
            "clean": clean,
            "corrupted": [clean[j] for j in sigma],
            "answer": [case.labels(case.output(x)) for x in everything],
        },
        schema={"clean": pl.List(pl.Int64), "corrupted": pl.List(pl.Int64), "answer": pl.List(answer_type)},
    )


def score(case: str | Case, circuit_logits: Tensor, model_logits: Tensor) -> Tensor:
    """Per-example score, lower is better: the mean squared difference between the circuit's and the
    full model's outputs at the case's output positions.  (batch, pos, vocab) -> (batch,)."""
    case = get_case(case) if isinstance(case, str) else case
    if circuit_logits.shape != model_logits.shape or circuit_logits.dim() != 3:
        raise ValueError(f"Score needs outputs of one shape (batch, pos, vocab), got {tuple(circuit_logits.shape)} and {tuple(model_logits.shape)}.")
    positions = list(case.output_positions)
    return (circuit_logits[:, positions] - model_logits[:, positions]).pow(2).mean(dim=(1, 2))


def attribution_metric(case: str | Case, logits: Tensor, examples: Mapping[str, Tensor]) -> Tensor:
    """A scalar to differentiate (higher = more of the behavior): summed over examples and output
    positions, logit[answer] - mean logit (categorical) or the numerical output."""
    case = get_case(case) if isinstance(case, str) else case
    outputs = logits[:, list(case.output_positions)]
    if not case.categorical:
        return outputs[..., 0].sum()
    answer = examples["answer"].long().unsqueeze(-1)
    return (outputs.gather(-1, answer).squeeze(-1) - outputs.mean(-1)).sum()
