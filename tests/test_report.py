import base64
import re

import numpy as np
import polars as pl
import pytest

from circuitflow.circuit import Circuit
from circuitflow.evaluation.roc import roc_points
from circuitflow.graph import Graph
from circuitflow.report.figures import (
    circuit_edges,
    circuit_layout,
    plot_circuit,
    plot_faithfulness,
    plot_roc,
)
from circuitflow.report.html import ReportSection, write_report

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
            figures=[figures[0], figures[1]],
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
    # long tables are cut, and say so
    assert "e19" in cells and "e20" not in cells and "Showing the first 20 of 30 rows" in text


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
