"""Pareto frontier and the PNG files."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from slimtorch.report import pareto_front, plot_pareto
from slimtorch.report.card import Report
from slimtorch.report.plots import per_class_png, robustness_png

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_pareto_png_is_written_and_valid(report, tmp_path):
    plot_pareto(Report.from_json(report), tmp_path / "pareto.png")
    data = (tmp_path / "pareto.png").read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    from PIL import Image

    with Image.open(tmp_path / "pareto.png") as img:
        assert img.width > 800 and img.height > 300


def test_charts_are_pngs(report):
    assert per_class_png(Report.from_json(report)).startswith(PNG_MAGIC)
    assert robustness_png(Report.from_json(report)).startswith(PNG_MAGIC)


def test_frontier_known_answer():
    points = [(10, 0.9, "a"), (5, 0.8, "b"), (20, 0.85, "c"), (1, 0.5, "d"), (5, 0.7, "e")]
    assert [p[2] for p in pareto_front(points)] == ["d", "b", "a"]


@given(st.lists(st.tuples(st.floats(0.001, 1e6), st.floats(0, 1), st.text(max_size=3)), min_size=1, max_size=20))
def test_frontier_points_are_not_dominated(points):
    front = pareto_front(points)
    assert front
    for x, y, _ in front:
        assert not any(px <= x and py >= y and (px < x or py > y) for px, py, _ in points)
