"""The full-settings switch: `dvc exp run $(python tools/params_overrides.py params-full.yaml)`."""

import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from params_overrides import leaves, overrides  # noqa: E402

from circuitflow.settings import load_settings  # noqa: E402


def apply(base: dict, flags: list[str]) -> dict:
    """What `dvc exp run -S ++key=value ...` does to params.yaml: set each dotted key (YAML value)."""
    result = yaml.safe_load(yaml.safe_dump(base))
    for flag in flags[1::2]:
        key, _, text = flag.removeprefix("++").partition("=")
        *parents, last = key.split(".")
        node = result
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = yaml.safe_load(text)
    return result


def test_the_flags_turn_params_yaml_into_params_full_yaml():
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    full = yaml.safe_load((ROOT / "params-full.yaml").read_text())
    flags = overrides(base, full)
    assert flags and all(flag == "-S" for flag in flags[::2]) and all(f.startswith("++") for f in flags[1::2])
    assert leaves(apply(base, flags)) == leaves(full)
    settings = load_settings(ROOT / "params-full.yaml")  # a valid params file
    assert settings.evaluate.adversarial.n_clean == 1000
    assert any(spec.kind == "siit" for spec in settings.models.values())


def test_a_key_the_other_file_drops_is_refused():
    with pytest.raises(SystemExit, match="a.b is in params.yaml but not in the other file"):
        overrides({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}})
