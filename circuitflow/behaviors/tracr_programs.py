"""The tracr programs that are behaviors here: RASP programs, compiled with tracr, and their encodings.

Two RASP programs from tracr's own library are compiled with ``tracr-pypi``:

``reverse``     ``lib.make_reverse(tokens)``, vocabulary {1, 2, 3}, max_seq_len 5, BOS "BOS".
``frac_prevs``  ``lib.make_frac_prevs(tokens == "x")``, vocabulary {w, x, y, z}, max_seq_len 5.

The datasets of ``behaviors/tracr.py`` need tracr's token encoding, which only the compiler
defines, so compiling lives here with the programs; converting the compiled model to TransformerLens,
verifying it and deriving its ground truth are ``models/tracr.py``'s.

Token ids are tracr's own input encoding, which sorts the tokens' values: for ``frac_prevs`` BOS=0,
PAD=1, w..z=2..5, but for ``reverse`` the integers sort first, so 1..3=0..2, BOS=3, PAD=4.
``TracrInfo`` carries the encoding; never assume BOS is 0.

Tracr names every residual direction after the RASP expression that writes it plus a process-wide
counter (``reverse_1:3``, ``map_9``); the labels kept in ``TracrInfo`` drop the counter
(``reverse:3``, ``is_x``), so what is saved does not depend on what the process compiled before.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from typing import Any, Literal, get_args

import torch
from torch import Tensor

TracrName = Literal["reverse", "frac_prevs"]

TRACR_NAMES: tuple[str, ...] = get_args(TracrName)
COMPILER_BOS = "BOS"
MAX_SEQ_LEN = 5
_VOCAB: dict[str, tuple] = {"reverse": (1, 2, 3), "frac_prevs": ("w", "x", "y", "z")}


def check_program(name: str) -> None:
    """Raise one sentence unless ``name`` is a tracr program of ``TRACR_NAMES``."""
    if name not in TRACR_NAMES:
        raise ValueError(f"Unknown tracr program {name!r}; choose one of {', '.join(TRACR_NAMES)}.")


# ---- compiling --------------------------------------------------------------------------------


def make_program(name: TracrName) -> Any:
    """The RASP program (a ``tracr.rasp.rasp.SOp``) of ``name``, from tracr's own library."""
    check_program(name)
    from tracr.compiler import lib
    from tracr.rasp import rasp

    if name == "reverse":
        return lib.make_reverse(rasp.tokens)
    return lib.make_frac_prevs((rasp.tokens == "x").named("is_x"))


@dataclasses.dataclass(frozen=True)
class CompiledProgram:
    """A compiled tracr program: its name, RASP program and tracr ``AssembledTransformerModel``."""

    name: str
    program: Any
    assembled: Any


def compile_program(name: TracrName) -> CompiledProgram:
    """Compile ``name`` with tracr (2-4 s).

    Switches jax to float64 for the whole process (``jax_enable_x64``): tracr's weights are then
    float64, so the conversion can be checked to ~1e-16.
    """
    check_program(name)
    import jax

    jax.config.update("jax_enable_x64", True)
    from tracr.compiler import compiling

    program = make_program(name)
    assembled = compiling.compile_rasp_to_model(
        program, vocab=set(_VOCAB[name]), max_seq_len=MAX_SEQ_LEN, compiler_bos=COMPILER_BOS
    )
    return CompiledProgram(name=name, program=program, assembled=assembled)


# ---- the encoding -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TracrInfo:
    """What a converted model needs beside its weights: tracr's token encodings and residual labels.

    input_tokens:  the input vocabulary in id order (token id = index), BOS and PAD included.
    output_tokens: the output vocabulary in output-id order; empty for a numerical output.
    residual_labels: the residual directions, ``name:value`` or ``name``, without tracr's counters.
    """

    name: str
    input_tokens: tuple
    bos_id: int
    pad_id: int
    output_tokens: tuple
    categorical_output: bool
    max_seq_len: int
    residual_labels: tuple[str, ...]

    @property
    def vocab_ids(self) -> tuple[int, ...]:
        """Ids of the program's vocabulary (BOS and PAD excluded), in id order."""
        return tuple(i for i in range(len(self.input_tokens)) if i not in (self.bos_id, self.pad_id))

    def encode(self, tokens: Sequence) -> list[int]:
        """Token ids of a sequence of vocabulary values, with BOS prepended."""
        ids = {token: i for i, token in enumerate(self.input_tokens)}
        unknown = [t for t in tokens if t not in ids or ids[t] in (self.bos_id, self.pad_id)]
        if unknown or not 0 < len(tokens) <= self.max_seq_len:
            vocab = [self.input_tokens[i] for i in self.vocab_ids]
            raise ValueError(
                f"The {self.name} model takes 1 to {self.max_seq_len} tokens from {vocab}, got {list(tokens)}."
            )
        return [self.bos_id] + [ids[t] for t in tokens]

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        return {key: list(value) if isinstance(value, tuple) else value for key, value in data.items()}

    @classmethod
    def from_json(cls, data: dict) -> "TracrInfo":
        fields = {f.name for f in dataclasses.fields(cls)}
        if set(data) != fields:
            raise ValueError(f"Tracr info needs the fields {sorted(fields)}, got {sorted(data)}.")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def _counter_free_labels(compiled: CompiledProgram) -> tuple[str, ...]:
    """Residual labels with each RASP expression's unique-id suffix replaced by its plain name."""
    names: dict[str, str] = {}
    stack = [compiled.program]
    while stack:
        expr = stack.pop()
        names[expr.label] = expr.name
        stack.extend(expr.children)
    labels = []
    for label in compiled.assembled.residual_labels:
        direction, sep, value = label.partition(":")
        prefixes = [p for p in names if direction == p or direction.startswith(p + "_")]
        if prefixes:
            prefix = max(prefixes, key=len)
            direction = names[prefix] + direction[len(prefix) :]
        labels.append(direction + sep + value)
    if len(set(labels)) != len(labels):  # pragma: no cover - tracr names are distinct
        raise ValueError(f"Residual labels of {compiled.name} collide once their counters are removed: {labels}.")
    return tuple(labels)


def compiled_info(compiled: CompiledProgram) -> TracrInfo:
    """The ``TracrInfo`` of a compiled program: its encodings and counter-free residual labels."""
    assembled = compiled.assembled
    encoder = assembled.input_encoder
    input_map = encoder.encoding_map
    input_tokens = tuple(sorted(input_map, key=input_map.__getitem__))
    output_map = getattr(assembled.output_encoder, "encoding_map", None)
    categorical = output_map is not None
    output_tokens = tuple(sorted(output_map, key=output_map.__getitem__)) if categorical else ()
    return TracrInfo(
        name=compiled.name,
        input_tokens=input_tokens,
        bos_id=encoder.bos_encoding,
        pad_id=encoder.pad_encoding,
        output_tokens=output_tokens,
        categorical_output=categorical,
        max_seq_len=assembled.params["pos_embed"]["embeddings"].shape[0] - 1,
        residual_labels=_counter_free_labels(compiled),
    )


def enumerate_inputs(info: TracrInfo, length: int) -> Tensor:
    """Every input of ``length`` vocabulary tokens, BOS first, in lexicographic id order: (n, length + 1)."""
    rows = [(info.bos_id, *ids) for ids in itertools.product(info.vocab_ids, repeat=length)]
    return torch.tensor(rows, dtype=torch.long)


def tracr_info(name: TracrName) -> TracrInfo:
    """The ``TracrInfo`` of ``name`` (compiles it: a few seconds; ``load_tracr_info`` reads a saved one)."""
    return compiled_info(compile_program(name))
