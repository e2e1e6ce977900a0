"""Print the `dvc exp run` flags that turn params.yaml into another params file.

    dvc exp run $(python tools/params_overrides.py params-full.yaml)

One `-S ++key=value` per leaf of the other file that differs from params.yaml (values as YAML, so
lists and nulls survive; `++` sets a key whether or not params.yaml has it), so the experiment is
params.yaml plus exactly those changes.  Like any `dvc exp run`, it leaves those values in the
workspace's params.yaml afterwards (`git checkout params.yaml` restores the default; the run stays
in `dvc exp show`).  A key the other file drops is an error: `dvc exp run` can set values but not
remove keys.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import yaml


def leaves(tree: object, prefix: str = "") -> dict[str, object]:
    """Dotted key -> value for every non-mapping value of a nested mapping."""
    if not isinstance(tree, dict) or not tree:
        return {prefix: tree}
    out: dict[str, object] = {}
    for key, value in tree.items():
        out.update(leaves(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def overrides(base: dict, other: dict) -> list[str]:
    base_leaves, other_leaves = leaves(base), leaves(other)
    dropped = sorted(key for key in base_leaves if key not in other_leaves and not any(k.startswith(key + ".") for k in other_leaves))
    if dropped:
        raise SystemExit(f"{dropped[0]} is in params.yaml but not in the other file; dvc exp run cannot remove keys, so add it there.")
    flags = []
    for key, value in other_leaves.items():
        if base_leaves.get(key, object()) != value:
            text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()
            flags += ["-S", f"++{key}={text}"]
    return flags


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit("usage: python tools/params_overrides.py OTHER_PARAMS.yaml")
    base = yaml.safe_load(Path("params.yaml").read_text())
    other = yaml.safe_load(Path(sys.argv[1]).read_text())
    print(" ".join(shlex.quote(flag) for flag in overrides(base, other)))


if __name__ == "__main__":
    main()
