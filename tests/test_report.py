import base64
import re
from typing import ClassVar

import numpy as np
import polars as pl
import pytest

from circuitflow.circuit import Circuit
from circuitflow.evaluation.roc import roc_points
from circuitflow.graph import Graph
from circuitflow.report import figures as figures_module
from circuitflow.report.captions import CAPTIONS, caption
from circuitflow.report.circuit_grid import edge_weights, plot_circuit_grid
from circuitflow.report.dvc_curves import overlay, staircase
from circuitflow.report.faithfulness_figures import (
    plot_fraction_grid,
    plot_fraction_recovered,
    shared_limits,
)
from circuitflow.report.figures import (
    circuit_edges,
    circuit_layout,
    plot_circuit,
    plot_faithfulness,
    plot_roc,
)
from circuitflow.report.html import ReportSection, write_report
from circuitflow.report.summary import glance_tables, pivot, table1_caption

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SMALL_CIRCUIT = [
    "input -> a0.0.q",
    "input -> a0.0.k",
    "input -> a0.1.v @ 2",
    "input -> a0.1.v @ 3",  # the same edge at another position: drawn once
    "a0.0 -> a1.1.v",
    "a0.1 -> m0",
    "m0 -> a1.1.q",
    "a1.1 -> m1",
    "m1 -> logits",
]


def roc_frames():
    rng = np.random.default_rng(0)
    truth = rng.random(60) < 0.3
    return {
        "EAP": roc_points(rng.random(60) + truth, truth),
        "random": roc_points(rng.random(60), truth),
    }


def faithfulness_frames():
    sizes = [1, 3, 10, 30, 100, 300, 1000]
    return {
        "EAP": pl.DataFrame({"n_edges": sizes, "faithfulness": [2.0, 1.5, 1.0, 0.6, 0.3, 0.1, 0.0]}),
        "ACDC": pl.DataFrame({"n_edges": sizes, "faithfulness": [2.1, 1.2, 0.8, 0.4, 0.2, 0.05, 0.0]}),
    }


# ---- figures -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "plot, data",
    [
        (plot_roc, roc_frames),
        (plot_faithfulness, faithfulness_frames),
        (plot_circuit, lambda: SMALL_CIRCUIT),
    ],
    ids=["roc", "faithfulness", "circuit"],
)
def test_figures_are_byte_identical_across_calls(tmp_path, plot, data):
    first = plot(data(), tmp_path / "a" / "figure.png", "A title")
    second = plot(data(), tmp_path / "b" / "figure.png", "A title")
    assert [p.name for p in first] == ["figure.png", "figure.svg"]
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes(), f"{a.name} differs between two calls"
    assert first[0].read_bytes().startswith(PNG_MAGIC)
    svg = first[1].read_text()
    assert "<svg" in svg and "<dc:date>" not in svg
    assert not list((tmp_path / "a").glob("*.tmp"))  # atomic writes leave no temporary file


def test_figure_formats_and_bad_input(tmp_path):
    written = plot_roc(roc_frames(), tmp_path / "roc.svg", "ROC", formats=("png",))
    assert written == [tmp_path / "roc.png"] and not (tmp_path / "roc.svg").exists()
    with pytest.raises(ValueError, match="format"):
        plot_roc(roc_frames(), tmp_path / "roc", "ROC", formats=("pdf",))
    with pytest.raises(ValueError, match="lacks column"):
        plot_faithfulness({"EAP": pl.DataFrame({"n": [1]})}, tmp_path / "f", "F")
    with pytest.raises(ValueError, match="not a node name"):
        plot_circuit(["input -> blocks.0.attn"], tmp_path / "c", "C")


def test_circuit_diagram_edges_and_layout(tmp_path):
    drawn = circuit_edges(SMALL_CIRCUIT + ["a1.1.q -> a1.1"])  # a q/k/v direct edge: not drawn
    assert drawn == [
        ("a0.0", "a1.1", "v"),
        ("a0.1", "m0", "other"),
        ("a1.1", "m1", "other"),
        ("input", "a0.0", "k"),
        ("input", "a0.0", "q"),
        ("input", "a0.1", "v"),
        ("m0", "a1.1", "q"),
        ("m1", "logits", "other"),
    ]
    nodes = sorted({n for src, dst, _ in drawn for n in (src, dst)})
    layout = circuit_layout(nodes)
    y = {node: layout[node][1] for node in nodes}
    assert y["input"] < y["a0.0"] == y["a0.1"] < y["m0"] < y["a1.1"] < y["m1"] < y["logits"]
    assert layout["a0.0"][0] < layout["a0.1"][0]  # heads spread by index

    # a circuit taken from a graph, with positions, renders
    graph = Graph(n_layers=2, n_heads=2, attn_only=False, n_positions=4)
    circuit = Circuit.from_edges(graph, SMALL_CIRCUIT[2:4] + ["a0.1 -> m0 @ 1", "m0 -> logits @ 3"])
    png, svg = plot_circuit(circuit.edges, tmp_path / "circuit.png", "A small circuit")
    assert png.read_bytes().startswith(PNG_MAGIC) and png.stat().st_size > 1000
    assert plot_circuit([], tmp_path / "empty.png", "Empty", formats=("png",))[0].is_file()


# ---- the HTML report ---------------------------------------------------------------------------
EXTERNAL = re.compile(r"""(?:src|href|action|data)\s*=\s*["']?\s*(?:https?:)?//""", re.IGNORECASE)


def make_report(tmp_path, settings=None):
    figures = plot_roc(roc_frames(), tmp_path / "roc.png", "ROC")
    circuit_png = plot_circuit(SMALL_CIRCUIT, tmp_path / "circuit.png", "Circuit", formats=("png",))[0]
    sections = [
        ReportSection(
            title="ROC <curves> & AUC",
            text="Edge ROC against the ground truth.\n\nSecond paragraph with <script>alert(1)</script>.",
            figures=[(figures[0], "ROC of two methods: x false positive rate, y true positive rate"), figures[1]],
            tables=[("AUC by method", pl.DataFrame({"method": ["EAP", "A<B>"], "auc": [0.9871234, 0.5], "n": [3, 1041]}))],
        ),
        ReportSection(title="The circuit", figures=[circuit_png]),
        ReportSection(
            title="Long table",
            tables=[("scores", pl.DataFrame({"edge": [f"e{i}" for i in range(30)], "score": list(range(30))}))],
        ),
    ]
    settings = settings or {"model": "attn-only-3l", "seed": 1, "methods": ["eap", "acdc"], "tau": 0.01}
    path = write_report(tmp_path / "out" / "report.html", sections, settings, "Run <report>", max_table_rows=20)
    return path, sections


def test_report_is_self_contained_and_complete(tmp_path):
    path, sections = make_report(tmp_path)
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    # nothing loaded from elsewhere: no URL at all here, and every src is an embedded data URI
    assert "http://" not in text and "https://" not in text and not EXTERNAL.search(text)
    sources = re.findall(r'src="([^"]*)"', text)
    assert len(sources) == 3 and all(s.startswith("data:image/") for s in sources)
    assert "data:image/svg+xml;base64," in text
    # the embedded figures are the files, byte for byte
    embedded_png = base64.b64decode(re.search(r'src="data:image/png;base64,([^"]*)"', text)[1])
    assert embedded_png == (tmp_path / "roc.png").read_bytes()
    # a table of contents linking to every section's anchor, and the settings
    ids = re.findall(r'id="([^"]+)"', text)
    links = re.findall(r'href="#([^"]+)"', text)
    assert len(ids) == len(set(ids))
    section_ids = [i for i in ids if i.startswith("s")]
    assert len(section_ids) == len(sections) + 1  # the sections and the settings
    assert set(section_ids) <= set(links) and "settings" in links
    # escaped text, table values, the settings block (searched outside the base64 figures)
    text = re.sub(r'"data:[^"]*"', '""', text)
    assert "<script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "ROC &lt;curves&gt; &amp; AUC" in text and "<title>Run &lt;report&gt;</title>" in text
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", text)
    for value in ("EAP", "A&lt;B&gt;", "0.987123", "0.5", "1041", "3"):
        assert value in cells
    assert "<caption>AUC by method</caption>" in text
    assert '"model": "attn-only-3l"' in text.replace("&quot;", '"')
    # long tables are cut, and say so, and start folded under their caption; every table scrolls in its own box
    assert "e19" in cells and "e20" not in cells and "Showing the first 20 of 30 rows" in text
    assert "<details><summary>scores (30 rows)</summary>" in text and text.count('<div class="scroll">') == 2
    # a figure's caption is the one given, or its file name
    assert "<figcaption>ROC of two methods: x false positive rate, y true positive rate</figcaption>" in text
    assert "<figcaption>roc.svg</figcaption>" in text
    assert "max-width: 76rem" in text  # a laptop screen


def test_report_is_deterministic_and_safe_with_urls_in_settings(tmp_path):
    settings = {"mlflow": {"tracking_uri": "http://mlflow.internal:5000"}, "out": tmp_path.name}
    first = make_report(tmp_path / "a", settings)[0].read_bytes()
    second = make_report(tmp_path / "b", settings)[0].read_bytes()
    assert first == second
    text = first.decode("utf-8")
    assert "http://mlflow.internal:5000" in text  # shown as text ...
    assert not EXTERNAL.search(text)  # ... never loaded


def test_report_missing_figure_is_a_clear_error(tmp_path):
    section = ReportSection(title="Missing", figures=[tmp_path / "nope.png"])
    with pytest.raises(ValueError, match="does not exist"):
        write_report(tmp_path / "report.html", [section], {}, "Report")
    assert not (tmp_path / "report.html").exists()


# ---- titles, captions, the first screen's tables, the circuit grid, faithfulness, DVC curves ------
class _Recording(figures_module.Figure):
    made: ClassVar[list] = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _Recording.made.append(self)


def test_long_titles_wrap_inside_the_figure(tmp_path, monkeypatch):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    monkeypatch.setattr(figures_module, "Figure", _Recording)
    _Recording.made = []
    title = "greater-than-organism-with-a-long-name: edge ROC against the ground truth (resample ablation), every method of the run"
    plot_roc(roc_frames(), tmp_path / "roc.png", title, formats=("png",))
    figure = _Recording.made[-1]
    FigureCanvasAgg(figure).draw()  # the layout as saved
    renderer = figure.canvas.get_renderer()
    box, page = figure.axes[0].title.get_window_extent(renderer), figure.bbox
    assert "\n" in figure.axes[0].get_title()  # wrapped, not clipped
    assert page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0 and box.y1 <= page.y1, (box, page)
    assert " ".join(figure.axes[0].get_title().split()) == title  # every word kept


def test_every_figure_kind_has_a_caption_with_its_axes():
    for kind in CAPTIONS:
        text = caption(kind, "ioi")
        assert len(text) > 80 and "{" not in text, kind
    assert "(m(C) - m(empty)) / (m(full) - m(empty))" in caption("fraction", "ioi")


def test_first_screen_tables_are_pair_by_method():
    auc = pl.DataFrame({"pair": ["a", "a", "b", "b"], "method": ["eap", "acdc"] * 2, "edge_auc_pessimistic": [0.91234, 0.5, 0.7, 0.6]})
    circuits = pl.DataFrame({"pair": ["a", "a"], "method": ["eap", "acdc"], "edges": [12, 5], "recovered": [0.812345, 0.9]})
    cpr_cmd = pl.DataFrame({"pair": ["a"] * 3, "method": ["eap", "acdc", "random"], "cpr": [0.5, 0.6, 0.1], "cmd": [0.1, 0.2, 0.7]})
    tables = dict(glance_tables(auc, circuits, cpr_cmd, ["acdc", "eap"]))
    edge_auc = next(frame for name, frame in tables.items() if name.startswith("Edge AUC"))
    assert edge_auc.columns == ["pair", "acdc", "eap"] and edge_auc.row(0) == ("a", 0.5, 0.912)
    assert tables["MIB CMD (0 is best)"].columns == ["pair", "acdc", "eap", "random"]
    assert pivot(pl.DataFrame(), "x", ["eap"]).columns == ["pair"]
    grid = pl.DataFrame({"pair": ["a"], "circuit": ["acdc"], "equivalence": ["passes (p=0.5)"], "minimality": ["not applicable ()"]})
    assert "1 pass, 0 fail, 1 not applicable" in table1_caption(grid)


def test_circuit_grid_marks_the_ground_truth_and_scales_edges(tmp_path):
    weights = edge_weights(["input -> a0.0.q", "input -> a0.0.k", "a0.0 -> logits"], {"input -> a0.0.q": 2.0, "input -> a0.0.k": -4.0, "a0.0 -> logits": 1.0})
    assert weights == {("a0.0", "logits", "other"): 0.25, ("input", "a0.0", "k"): 1.0, ("input", "a0.0", "q"): 0.5}
    circuits = {"eap": (SMALL_CIRCUIT, {edge: float(i) for i, edge in enumerate(SMALL_CIRCUIT)}), "acdc": (SMALL_CIRCUIT[:3], None), "sp": ([], None)}
    first = plot_circuit_grid(circuits, tmp_path / "a.png", "pair: circuits", truth=SMALL_CIRCUIT[4:])[0]
    second = plot_circuit_grid(circuits, tmp_path / "b.png", "pair: circuits", truth=SMALL_CIRCUIT[4:])[0]
    assert first.read_bytes() == second.read_bytes() and first.read_bytes().startswith(PNG_MAGIC)
    assert plot_circuit_grid(circuits, tmp_path / "c.png", "no truth")[0].stat().st_size > 1000


def test_fraction_recovered_shares_one_scale(tmp_path):
    def mib(scale):
        return pl.DataFrame({"method": ["eap"] * 4 + ["random"] * 4, "ranking": ["absolute"] * 8,
                             "k": [0.01, 0.1, 0.5, 1.0] * 2, "f": [0.1 * scale, 0.5, 0.9, 1.0, 0.0, 0.1, 0.4, 1.0]})
    curves = {"a": mib(1.0), "b": mib(-3.0)}
    low, high = shared_limits(curves)
    assert low < -0.3 and high > 1.1
    assert plot_fraction_recovered(curves["a"], tmp_path / "a.png", "a", ylim=(low, high))[0].is_file()
    assert plot_fraction_grid(curves, tmp_path / "all.png", "all")[0].stat().st_size > 1000


def test_dvc_curves_overlay_methods_and_draw_roc_staircases():
    x, y = staircase(np.array([0.0, 0.5, 0.5, 1.0]), np.array([0.0, 0.5, 1.0, 1.0]))
    assert list(zip(x, y)) == [(0.0, 0.0), (0.5, 0.0), (0.5, 0.5), (0.5, 1.0), (1.0, 1.0)]  # right first, then up
    frames = {"eap": pl.DataFrame({"fpr": [0.0, 1.0], "tpr": [0.0, 1.0]}), "acdc": pl.DataFrame({"fpr": [1.0, 0.0], "tpr": [1.0, 0.0]})}
    table = overlay("ioi", frames, "fpr", "tpr", roc=True)
    assert table.columns == ["pair", "method", "curve", "order", "fpr", "tpr"]
    assert table["order"].to_list() == [0, 1, 2, 3, 4, 5] and table["curve"][0] == "ioi_eap" and set(table["pair"]) == {"ioi"}
