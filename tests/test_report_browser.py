"""The report's first screen, as a reader sees it: the report stage runs on hand-made figure and
discovery folders for two pairs (tracr-reverse with its ground truth, ioi without), headless Chromium
(Debian's `chromium`) opens the page at a laptop's size (1366 x 768), and what lies inside that
first screen must answer "which method found which circuit, how faithful, does it pass the tests":
the pair x method tables and Table 1's grid.  The screenshot is kept as
artifacts/report_first_screen.png.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from project_copy import ROOT, only_pairs
from test_mlflow_ui import CHROMIUM, keep, render, visible_text

from circuitflow.circuit import Circuit
from circuitflow.graph import Graph

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is absent (/usr/bin/chromium); `apt-get install -y chromium`.")

PAIRS = ["tracr-reverse", "ioi"]
TRUTH = ["input -> a0.0.q", "a0.0 -> m0", "m0 -> a1.1.v", "a1.1 -> logits"]
LAPTOP = (1366, 768)
# Written into a copy of the page: the captions of the tables (and folded tables' summaries) that lie
# entirely inside the first screen, in document order, as the DOM's last element.
PROBE = """<script>addEventListener("load", () => {
  const seen = [...document.querySelectorAll("caption, summary, h1, h2")]
    .filter(e => e.getBoundingClientRect().bottom <= innerHeight).map(e => e.textContent.trim());
  const out = document.createElement("pre"); out.id = "first-screen"; out.textContent = JSON.stringify(seen);
  document.body.appendChild(out);
});</script>"""


def hand_made_run(methods: list[str]) -> None:
    """The artefacts the report stage reads, in the current directory: figure tables, each method's
    circuit and scores, tracr-reverse's ground truth."""
    graph = Graph(n_layers=2, n_heads=2, attn_only=False)
    rng = np.random.default_rng(0)
    for pair in PAIRS:
        folder = Path("data/discover") / pair
        folder.mkdir(parents=True)
        pl.DataFrame({"edge": list(graph.edge_names), **{m: rng.random(graph.n_edges).tolist() for m in methods}}).write_parquet(folder / "scores.parquet")
        for i, method in enumerate(methods):
            Circuit.from_edges(graph, TRUTH[: 2 + i % 3] + list(graph.edge_names)[i : i + 3]).save(folder / f"{method}_circuit.json")
    Path("data/models/tracr-reverse").mkdir(parents=True)
    Path("data/models/tracr-reverse/ground_truth.json").write_text(json.dumps({"zero": TRUTH, "resample": TRUTH[1:]}))
    figures = Path("data/figures")
    for name in ("roc", "hypothesis", "mib"):
        (figures / name).mkdir(parents=True)
    rows = [{"pair": p, "method": m, "edge_auc_pessimistic": rng.random(), "node_auc_pessimistic": rng.random()} for p in PAIRS[:1] for m in methods]
    pl.DataFrame(rows).write_csv(figures / "roc/auc_table.csv")
    pl.DataFrame([{"pair": p, "method": m, "edges": int(rng.integers(3, 40)), "recovered": rng.random()} for p in PAIRS for m in methods]
                 ).write_csv(figures / "roc/circuit_table.csv")
    pl.DataFrame([{"pair": p, "method": m, "cpr": rng.random(), "cmd": rng.random()} for p in PAIRS for m in (*methods, "random")]
                 ).write_csv(figures / "mib/cpr_cmd.csv")
    tests = ("equivalence", "independence", "minimality", "sufficiency", "partial_necessity")
    grid = [{"pair": p, "circuit": c, **{t: f"{['passes', 'fails', 'not applicable'][(i + j) % 3]} (p={0.01 * (i + 1):.3g})" for j, t in enumerate(tests)}}
            for i, (p, c) in enumerate([("tracr-reverse", "ground_truth"), ("tracr-reverse", "acdc"), ("ioi", "acdc")])]
    pl.DataFrame(grid).write_csv(figures / "hypothesis/table1.csv")
    pl.DataFrame([{"pair": g["pair"], "circuit": g["circuit"], "test": t, "status": g[t].split(" (")[0]} for g in grid for t in tests]
                 ).write_csv(figures / "hypothesis/table.csv")


@pytest.fixture
def report(tmp_path, monkeypatch) -> Path:
    from circuitflow.settings import load_settings
    from circuitflow.stages import get_stage

    params = only_pairs(yaml.safe_load((ROOT / "params.yaml").read_text()), PAIRS)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    settings = load_settings("params.yaml")
    hand_made_run(list(settings.methods))
    get_stage("report").run(settings)
    return tmp_path / "data/report/index.html"


def test_the_first_screen_answers_which_circuit_how_faithful_and_the_tests(report, tmp_path):
    page = report.read_text()
    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("</body>", PROBE + "</body>"))
    dom = render(probed.as_uri(), tmp_path / "profile", tmp_path / "first.png", height=LAPTOP[1], width=LAPTOP[0])
    first_screen = json.loads(re.search(r'<pre id="first-screen">(.*?)</pre>', dom, re.DOTALL)[1].replace("&quot;", '"'))

    # the title, then the glance tables and Table 1, all inside the first 768 pixels
    assert first_screen[:2] == ["circuitflow report", "At a glance"], first_screen
    for expected in ("Edge AUC against the ground truth", "Saved circuit: edges", "Saved circuit: fraction of the metric recovered",
                     "MIB CMD", "MIB CPR", "Table 1 (Shi et al.)"):
        assert any(text.startswith(expected) for text in first_screen), (expected, first_screen)
    # pivoted: one row per pair, one column per method; Table 1 as the grid of tests with outcomes coloured
    glance = page.split('<section id="s2')[0]
    assert re.search(r"<th>pair</th><th>acdc</th><th>eap</th>", glance)
    assert "<th>equivalence</th><th>independence</th><th>minimality</th><th>sufficiency</th><th>partial_necessity</th>" in glance
    assert '<td class="passes">passes (p=0.01)</td>' in glance and '<td class="fails">' in glance and '<td class="na">' in glance
    # the per-pair sections: the circuits side by side with a caption, the ground truth marked for tracr
    text = visible_text(page)
    assert "tracr-reverse: each method's saved circuit side by side" in text and "ground truth known (4 edges)" in text
    assert "ioi" in text and "no ground truth" in text

    from PIL import Image

    screenshot = tmp_path / "first.png"
    with Image.open(screenshot) as image:
        assert image.size == LAPTOP
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
    assert screenshot.stat().st_size > 20_000 and (colours is None or len(colours) > 50)  # text and tables, not a blank page
    keep(screenshot, "report_first_screen.png")
