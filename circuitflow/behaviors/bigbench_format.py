"""Reading a BIG-bench JSON task file (google/BIG-bench's ``task.json``) into checked, formatted
examples: what ``bigbench.py`` builds its dataset from.

The format (BIG-bench's docs/doc.md and its ``json_task.py``): a JSON object with an ``examples``
list; each example has an ``input`` string and either ``target`` (a string, or a list of strings:
every one a correct answer) or ``target_scores`` (an object mapping each choice to its score: a
multiple-choice example; when both are given, ``target_scores`` is used).  Task-level options,
with BIG-bench's defaults:

  task_prefix              ""               written once before the example
  example_input_prefix     "\\nQ: "          written before the input
  example_output_prefix    "\\nA: "          written after the input (and its choices)
  choice_prefix            "\\n  choice: "   written before each appended choice
  append_choices_to_input  true             multiple choice: append the choices to the input

so a prompt is ``task_prefix + example_input_prefix + input [+ choice_prefix + choice ...] +
example_output_prefix`` (BIG-bench's zero-shot prompt; other keys, such as ``metrics`` or
``few_shot_example_separator``, are ignored).  BIG-bench appends the choices in a seeded random
order; here the order is a permutation of the sorted choices seeded by the example's index in the
file, so a prompt is fixed by the file.

The pipeline's prompts are word-level text (words separated by single spaces), so every run of
whitespace, newlines included, becomes one space: "\\nQ: 2 + 3\\nA: " is the words "Q:", "2", "+",
"3", "A:".  A word-level tokenizer (WhitespaceSplit) could not carry a newline anyway; the line
structure is lost, the prefixes' words ("Q:", "choice:", "A:") stay.

Answers: a ``target`` string is the answer; of a list, the FIRST is the answer (the others are
other correct answers, kept in ``correct``).  ``target_scores``: the answer is the highest-scored
choice (the first such in the file where several tie), the correct answers all choices with that
score, and the wrong answers every choice scored lower.

Every bad file is one ValueError (FileNotFoundError for a missing one) naming the file, the
example's index where there is one, and the fix.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from numbers import Real
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

FORMAT_DEFAULTS: dict[str, Any] = {
    "task_prefix": "",
    "example_input_prefix": "\nQ: ",
    "example_output_prefix": "\nA: ",
    "choice_prefix": "\n  choice: ",
    "append_choices_to_input": True,
}

EXAMPLE_SCHEMA = {"index": pl.Int64, "prompt": pl.String, "answer": pl.String, "wrong": pl.List(pl.String),
                  "correct": pl.List(pl.String), "multiple_choice": pl.Boolean}


@dataclass(frozen=True)
class TaskFormat:
    """A task's prompt options (``FORMAT_DEFAULTS`` where the file gives none)."""

    task_prefix: str
    example_input_prefix: str
    example_output_prefix: str
    choice_prefix: str
    append_choices_to_input: bool


def words(text: str) -> str:
    """``text`` as word-level text: every run of whitespace (newlines included) one space."""
    return " ".join(text.split())


def load_json(path: str | Path) -> Any:
    """The file's JSON value; a missing file, a directory, bytes that are not UTF-8 or text that is
    not JSON is one error naming the file and the fix."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"BIG-bench task path {path} is a directory; name the JSON file itself, e.g. bigbench:{path / 'task.json'}.")
    if not path.exists():
        raise FileNotFoundError(f"BIG-bench task file {path} does not exist; give the path of a BIG-bench task.json file.")
    try:
        text = path.read_bytes().decode("utf-8-sig")  # a UTF-8 byte-order mark is tolerated
    except UnicodeDecodeError as error:
        raise ValueError(f"BIG-bench task file {path} is not UTF-8 (byte {error.object[error.start]:#04x} at offset {error.start}); re-save it as UTF-8, as BIG-bench's JSON tasks are.") from None
    except OSError as error:
        raise ValueError(f"BIG-bench task file {path} cannot be read ({error.strerror}); check its permissions.") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"BIG-bench task file {path} is not valid JSON ({error.msg} at line {error.lineno}, column {error.colno}); fix the file.") from None


def task_format(data: dict, path: Path) -> TaskFormat:
    """The file's prompt options, checked: prefixes strings, ``append_choices_to_input`` a bool."""
    values = {key: data.get(key, default) for key, default in FORMAT_DEFAULTS.items()}
    for key, value in values.items():
        wanted = bool if key == "append_choices_to_input" else str
        if not isinstance(value, wanted):
            raise ValueError(f"BIG-bench task file {path}: {key!r} must be a {'boolean' if wanted is bool else 'string'}, got {type(value).__name__} {value!r}; fix it or remove it for BIG-bench's default {FORMAT_DEFAULTS[key]!r}.")  # noqa: TRY004 (a bad file is a ValueError here)
    return TaskFormat(**values)


def read_examples(path: str | Path) -> pl.DataFrame:
    """The file's examples, checked and formatted (schema ``EXAMPLE_SCHEMA``): ``index`` (position in
    the file), ``prompt`` (word-level text), ``answer`` (word-level text), ``wrong`` (multiple
    choice: the choices scored below the best; [] for a target), ``correct`` (every correct
    answer, the answer first), ``multiple_choice``."""
    path = Path(path)
    data = load_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"BIG-bench task file {path} holds a JSON {type(data).__name__}, not an object; a task is an object with an 'examples' list.")  # noqa: TRY004 (a bad file is a ValueError here)
    examples = data.get("examples")
    if not isinstance(examples, list) or len(examples) < 2:
        hint = " (a task split into subtasks: name one subtask's task.json)" if "subtasks" in data or "examples" not in data else ""
        raise ValueError(f"BIG-bench task file {path} needs an 'examples' list of at least 2 examples{hint}.")
    layout = task_format(data, path)
    rows = [_example(example, i, path, layout) for i, example in enumerate(examples)]
    return pl.DataFrame(rows, schema=EXAMPLE_SCHEMA, orient="row")


def _example(example: Any, i: int, path: Path, layout: TaskFormat) -> tuple:
    """One checked example as a row of ``EXAMPLE_SCHEMA``."""
    where = f"Example {i} of {path}"
    if not isinstance(example, dict):
        raise ValueError(f"{where} is a JSON {type(example).__name__}, not an object; every example needs an 'input' and a 'target' or 'target_scores'.")  # noqa: TRY004 (bad input is a ValueError here)
    if not isinstance(example.get("input"), str):
        got = "no 'input' field" if "input" not in example else f"an 'input' of type {type(example['input']).__name__}"
        raise ValueError(f"{where} has {got}; every example needs an 'input' string.")  # noqa: TRY004 (a bad file is a ValueError here)
    if "target_scores" in example:
        answer, wrong, correct = _choices(example["target_scores"], where)
        choices = list(np.random.default_rng([i]).permutation(sorted(example["target_scores"])))
    elif "target" in example:
        correct, wrong, choices = _targets(example["target"], where), [], []
        answer = correct[0]
    else:
        raise ValueError(f"{where} has neither 'target' nor 'target_scores'; give the answer as 'target' (a string or a list of strings) or the choices as 'target_scores'.")
    text = example["input"]
    if choices and layout.append_choices_to_input:
        text += layout.choice_prefix + layout.choice_prefix.join(choices)
    prompt = words(layout.task_prefix + layout.example_input_prefix + text + layout.example_output_prefix)
    if not prompt:
        raise ValueError(f"{where} gives an empty prompt (its input and the task's prefixes are blank); write the question in 'input'.")
    return i, prompt, answer, wrong, correct, bool(choices)


def _targets(target: Any, where: str) -> list[str]:
    """A ``target`` string or non-empty list of strings as word-level answers, each non-blank."""
    targets = target if isinstance(target, list) else [target]
    if not targets or not all(isinstance(t, str) for t in targets):
        raise ValueError(f"{where}: 'target' must be a string or a non-empty list of strings, got {json.dumps(target)[:80]}; write the answer as text.")
    if not all(words(t) for t in targets):
        raise ValueError(f"{where} has a blank target; every target needs at least one word.")
    return [words(t) for t in targets]


def _choices(scores: Any, where: str) -> tuple[str, list[str], list[str]]:
    """``target_scores`` as (answer, wrong answers, correct answers), word-level, in file order."""
    if not isinstance(scores, dict) or len(scores) < 2:
        raise ValueError(f"{where}: 'target_scores' must be an object of at least 2 choices mapping each to its score, got {json.dumps(scores)[:80]}.")
    for choice, score in scores.items():
        if not words(choice):
            raise ValueError(f"{where} has a blank choice in 'target_scores'; every choice needs at least one word.")
        if isinstance(score, bool) or not isinstance(score, Real) or math.isnan(score):
            raise ValueError(f"{where}: the score of choice {choice!r} is {json.dumps(score)}, not a number; give each choice a number (1 for the right one, 0 for the others).")
    best = max(scores.values())
    if best <= 0:
        raise ValueError(f"{where} has no choice with a positive score in 'target_scores'; give the right choice a score of 1.")
    correct = [words(c) for c, s in scores.items() if s == best]
    wrong = [words(c) for c, s in scores.items() if s < best]
    if not wrong:
        raise ValueError(f"{where}: every choice in 'target_scores' has the best score {best}, so none is wrong; give the wrong choices a lower score (0).")
    if set(correct) & set(wrong) or len(set(correct) | set(wrong)) < len(scores):
        raise ValueError(f"{where} has choices that differ only in whitespace in 'target_scores'; make the choices distinct words.")
    return correct[0], wrong, correct
