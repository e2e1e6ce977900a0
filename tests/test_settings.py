"""params.yaml is parsed once into typed settings; every mistake is one sentence naming the
setting and the fix, with the closest known key for a misspelt one."""

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from circuitflow.settings import Ablation, SettingsError, load_settings, parse_settings
from flows.cli import main

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = yaml.safe_load((ROOT / "params.yaml").read_text())


def changed(edit) -> dict:
    raw = copy.deepcopy(DEFAULT)
    edit(raw)
    return raw


def refused(edit) -> str:
    with pytest.raises(SettingsError) as error:
        parse_settings(changed(edit))
    message = str(error.value)
    assert "\n" not in message
    return message


def test_the_shipped_params_parse_with_their_values():
    settings = load_settings(ROOT / "params.yaml")
    assert settings.pair("tracr-reverse").ablation is Ablation.ZERO and settings.pair("ioi").n_examples == 100
    assert settings.discover.sp.steps == 150 and settings.discover.eap_ig.over == "inputs"
    assert settings.evaluate.adversarial.search.restarts == 4  # params.yaml's, not the default 8
    assert settings.model("ioi-organism").steps == 1500  # the ioi organism's own default
    assert settings.model("induction-organism").attn_only is True
    full = load_settings(ROOT / "params-full.yaml")
    assert full.evaluate.adversarial.n_clean == 1000


# One misspelt key per section: refused, naming the closest known key.
@pytest.mark.parametrize("edit, where, closest", [
    (lambda r: r.update(evalute=r.pop("evaluate")), "`evalute`", "evaluate"),
    (lambda r: r["models"]["tracr-reverse"].update(programm="reverse"), "`models.tracr-reverse.programm`", "program"),
    (lambda r: r["models"]["ioi-organism"].update(stpes=3), "`models.ioi-organism.stpes`", "steps"),
    (lambda r: r["models"]["ioi-mamba"].update(d_stat=3), "`models.ioi-mamba.d_stat`", "d_state"),
    (lambda r: r["pairs"]["ioi"].update(n_exampels=3), "`pairs.ioi.n_exampels`", "n_examples"),
    (lambda r: r["discover"].update(methdos=["eap"]), "`discover.methdos`", "methods"),
    (lambda r: r["discover"]["acdc"].update(treshold=[1]), "`discover.acdc.treshold`", "thresholds"),
    (lambda r: r["discover"]["eap-ig"].update(step=3), "`discover.eap-ig.step`", "steps"),
    (lambda r: r["discover"]["hisp"].update(normalise=True), "`discover.hisp.normalise`", "normalize"),
    (lambda r: r["discover"]["sp"].update(lamdas=[1]), "`discover.sp.lamdas`", "lambdas"),
    (lambda r: r["discover"]["circuit"].update(sizes=3), "`discover.circuit.sizes`", "size"),
    (lambda r: r["evaluate"].update(faithfulness_point=3), "`evaluate.faithfulness_point`", "faithfulness_points"),
    (lambda r: r["evaluate"]["hypothesis_tests"].update(q_stars=0.9), "`evaluate.hypothesis_tests.q_stars`", "q_star"),
    (lambda r: r["evaluate"]["adversarial"].update(n_clen=3), "`evaluate.adversarial.n_clen`", "n_clean"),
    (lambda r: r["evaluate"]["adversarial"]["search"].update(restart=3), "`evaluate.adversarial.search.restart`", "restarts"),
    (lambda r: r["prefect"].update(task_runer="dask"), "`prefect.task_runer`", "task_runner"),
    (lambda r: r["deployments"].update(timezon="UTC"), "`deployments.timezon`", "timezone"),
    (lambda r: r["deployments"]["pipeline"].update(crons="0 3 * * *"), "`deployments.pipeline.crons`", "cron"),
    (lambda r: r["mlflow"].update(experiments="x"), "`mlflow.experiments`", "experiment"),
])
def test_a_misspelt_key_names_the_closest_known_one(edit, where, closest):
    message = refused(edit)
    assert message.startswith(where) and f"did you mean `{closest}`?" in message


@pytest.mark.parametrize("edit, message", [
    (lambda r: r["pairs"]["ioi"].update(seed=True), "`pairs.ioi.seed` must be an integer, got bool True."),
    (lambda r: r["pairs"]["ioi"].update(batch_size=True), "`pairs.ioi.batch_size` must be an integer, got bool True."),
    (lambda r: r["evaluate"]["adversarial"].update(n_clean="ten"), "`evaluate.adversarial.n_clean` must be an integer, got str 'ten'."),
    (lambda r: r["discover"]["acdc"].update(thresholds="x"), "`discover.acdc.thresholds` must be a list of numbers, got str 'x'."),
    (lambda r: r["pairs"]["ioi"].update(ablation="noise"), "`pairs.ioi.ablation` must be one of zero, mean, resample, got str 'noise'."),
    (lambda r: r["pairs"]["ioi"].update(behavior="ioi-v2"), "`pairs.ioi.behavior` is 'ioi-v2', not a behavior: did you mean `ioi`?"),
    (lambda r: r["pairs"]["ioi"].update(model="gpt5"), "`pairs.ioi.model` is 'gpt5', not a model in params.yaml"),
    (lambda r: r["models"]["ioi-organism"].update(kind="onnx"), "`models.ioi-organism.kind` is 'onnx', not a model kind"),
    (lambda r: r["discover"].update(methods=["acdcc"]), "`discover.methods[0]` must be one of acdc, eap, eap-ig, hisp, sp"),
    (lambda r: r["discover"]["circuit"].update(recovered=2), "`discover.circuit.recovered` must be between 1e-09 and 1.0, got 2.0."),
    (lambda r: r["discover"]["circuit"].update(size="many"), "`discover.circuit.size` must be an integer or one of ground_truth, got str 'many'."),
    (lambda r: r["models"]["ioi-organism"].update(steps=-3), "`models.ioi-organism.steps` must be at least 1, got -3."),
    (lambda r: r["models"]["ioi-organism"].update(d_model=30), "`models.ioi-organism.d_model` (30) must be a multiple of n_heads (4)."),
    (lambda r: r["pairs"]["ioi"].update(positional="yes please"), "`pairs.ioi.positional` must be true or false, got str 'yes please'."),
    (lambda r: r["evaluate"].update(circuit="sp2"), "`evaluate.circuit` is 'sp2', which is not in discover.methods"),
    (lambda r: r["prefect"].update(n_workers=2), "`prefect.n_workers` does not apply to the threads task runner; remove it."),
])
def test_bad_values_are_one_sentence(edit, message):
    assert message in refused(edit)


def test_null_switches_a_section_off_and_absent_means_the_defaults():
    settings = parse_settings(changed(lambda r: r["evaluate"].update(hypothesis_tests=None)))
    assert settings.evaluate.hypothesis_tests is None
    settings = parse_settings(changed(lambda r: r["evaluate"].pop("adversarial")))
    assert settings.evaluate.adversarial.n_clean == 100 and settings.evaluate.adversarial.search.restarts == 8


def test_yaml_errors_and_missing_files_are_one_sentence(tmp_path):
    (tmp_path / "bad.yaml").write_text("pairs: [\n")
    with pytest.raises(SettingsError, match="is not valid YAML at line"):
        load_settings(tmp_path / "bad.yaml")
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "absent.yaml")


def test_cli_params_before_or_after_the_command_and_no_traceback(tmp_path, capsys):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(changed(lambda r: r["pairs"]["ioi"].update(behavior="ioi-v2"))))
    for argv in (["--params", str(path), "check"], ["check", "--params", str(path)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("circuitflow: `pairs.ioi.behavior` is 'ioi-v2'") and "Traceback" not in err
    path.write_text(yaml.safe_dump(DEFAULT))
    assert main(["check", "--params", str(path)]) == 0
    assert main(["stage", "cache", "nope", "--params", str(path)]) == 2
    assert "Unknown pair 'nope'" in capsys.readouterr().err


def test_check_and_help_import_neither_torch_nor_transformer_lens():
    code = ("import sys, json; from flows.cli import main; "
            "sys.argv = ['circuitflow', 'check']; rc = main(['check']); "
            "print(json.dumps([m for m in ('torch', 'transformer_lens', 'prefect', 'mlflow') if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert json.loads(out.strip().splitlines()[-1]) == []


def test_files_named_in_params_are_checked_before_any_work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "task.json").write_text("{}")
    (tmp_path / "tasks").mkdir()
    assert parse_settings(changed(lambda r: r["pairs"]["ioi"].update(behavior="bigbench:task.json"))).pair("ioi").behavior == "bigbench:task.json"
    for behavior, says in (("bigbench:missing.json", "missing.json, which does not exist"), ("pairs:tasks", "tasks, which is a folder")):
        assert says in refused(lambda r, b=behavior: r["pairs"]["ioi"].update(behavior=b))
    assert "which is not a folder" in refused(lambda r: r["models"].update(mine={"kind": "checkpoint", "path": "nowhere"}))
