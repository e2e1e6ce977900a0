"""params.yaml mistakes stop with one sentence naming the problem and the fix."""

import textwrap

import pytest

from circuitflow.cli import main
from circuitflow.config import ConfigError, load_params

GOOD = """
models:
  rev: {kind: tracr, program: reverse}
pairs:
  rev:
    model: rev
    behavior: tracr-reverse
    ablation: zero
discover:
  methods: [eap]
"""


def write(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_good_params_load(tmp_path):
    params = load_params(write(tmp_path, GOOD))
    assert params.pair("rev").model == "rev" and params.methods == ("eap",)


@pytest.mark.parametrize(
    "change, message",
    [
        (("behavior: tracr-reverse", "behavior: tracr-reverze"),
         "Pair 'rev' names unknown behavior 'tracr-reverze'; known behaviors: tracr-reverse, tracr-proportion"),
        (("model: rev", "model: gpt5"), "Pair 'rev' names unknown model 'gpt5'; known models: rev."),
        (("kind: tracr", "kind: onnx"), "Model 'rev' has unknown kind 'onnx'; known kinds: tracr, organism, pretrained, siit, mamba."),
        (("program: reverse", "program: sort"), "Tracr model 'rev' has unknown program 'sort'; known programs: reverse, frac_prevs."),
        (("ablation: zero", "ablation: noise"), "Pair 'rev' has unknown ablation 'noise'; choose one of zero, mean, resample."),
        (("methods: [eap]", "methods: [acdcc]"),
         "Unknown discovery method 'acdcc' in discover.methods; known methods: acdc, eap, eap-ig, hisp, sp."),
        (("methods: [eap]", "methods: [eap]\n  sp: {lamdas: [1]}"),
         "discover.sp has unknown setting 'lamdas'; allowed settings: lambdas, level, steps, lr, seed."),
        (("methods: [eap]", "methods: [eap]\n  eap-ig: {over: outputs}"), "discover.eap-ig.over must be one of inputs, activations, got 'outputs'."),
        (("methods: [eap]", "methods: [eap]\n  acdcc: {}"), "discover has unknown key 'acdcc'; allowed: methods, circuit, acdc, eap, eap-ig, hisp, sp."),
        (("methods: [eap]", "methods: [eap]\n  circuit: {size: many}"), "discover.circuit.size must be a non-negative integer or ground_truth, got 'many'."),
        (("methods: [eap]", "methods: [eap]\n  circuit: {recovered: 2}"), "discover.circuit.recovered must be a fraction in (0, 1], got 2."),
        (("  rev: {kind: tracr, program: reverse}", "  rev: {kind: tracr, program: reverse}\n  org: {kind: organism, behavior: ioi, steps: -3}"),
         "Organism model 'org': Organism setting steps must be a positive integer, got -3."),
        (("ablation: zero", "ablation: zero\n    positional: yes please"), "Pair 'rev': positional must be true or false, got 'yes please'."),
        (("pairs:", "pairs: [\n"), "is not valid YAML at line"),
    ],
)
def test_mistakes_are_one_sentence(tmp_path, change, message):
    path = write(tmp_path, GOOD.replace(*change))
    with pytest.raises(ValueError) as error:
        load_params(path)
    assert message in str(error.value)
    assert str(error.value).count("\n") == 0


def test_cli_reports_the_sentence_without_a_traceback(tmp_path, capsys):
    path = write(tmp_path, GOOD.replace("behavior: tracr-reverse", "behavior: ioi-v2"))
    assert main(["--params", str(path), "check"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("circuitflow: Pair 'rev' names unknown behavior 'ioi-v2'") and "Traceback" not in err
    assert main(["--params", str(write(tmp_path, GOOD)), "stage", "cache", "nope"]) == 2
    assert "Unknown pair 'nope'; params.yaml lists: rev." in capsys.readouterr().err


def test_missing_params_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_params(tmp_path / "absent.yaml")
