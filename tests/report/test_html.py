"""report.html: self-contained content, sensitivity parsing, and a real render in headless Chromium."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from slimtorch.report import render_html, write_report
from slimtorch.report.card import Report
from slimtorch.report.sensitivity import parse_curves, sensitivity_curves

CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "") if p and Path(p).exists()), None)


def test_html_is_self_contained_with_tables_and_images(report):
    html = render_html(Report.from_json(report))
    assert html.startswith("<!DOCTYPE html>")
    assert "<table>" in html and html.count("<tr") >= 4 + 1
    for name in ("teacher (baseline)", "1_distill", "2_prune", "3_quantize (final)"):
        assert name in html
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) >= 4  # pareto, per-class, robustness, sensitivity
    assert all(base64.b64decode(i).startswith(b"\x89PNG") for i in images)
    assert "http://" not in html and "https://" not in html  # nothing fetched from the network
    assert "sparsity: 0.5" in html  # the recipe as YAML
    assert "a run-level warning" in html


def test_html_escapes_names(report):
    report["models"][1]["name"] = "<script>x</script>"
    report["stages"][0]["model"] = report["models"][1]["name"]
    html = render_html(Report.from_json(report))
    assert "<script>x</script>" not in html and "&lt;script&gt;" in html


def test_the_prune_stages_sensitivity_scan_is_read():
    raw = {"baseline": 0.95, "layers": {"fc1": [[0.9, 0.7], [0.5, 0.9]], "fc2": [[0.5, "x"]]}}
    assert parse_curves(raw) == {"fc1": [(0.5, 0.9), (0.9, 0.7)]}


@pytest.mark.parametrize("raw", ["not a scan", {"fc1": [[0.5, 0.9]]}, [{"layer": "fc1", "sparsity": 0.5, "metric": 0.9}]])
def test_other_shapes_are_not_plotted(raw):
    assert parse_curves(raw) == {}


def test_unreadable_sensitivity_is_skipped(report):
    report["stages"][1]["details"]["sensitivity"] = "not a scan"
    assert sensitivity_curves(Report.from_json(report)) == []
    assert "<img" in render_html(Report.from_json(report))


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(report, tmp_path):
    from PIL import Image, ImageStat

    write_report(tmp_path, Report.from_json(report))
    shot = tmp_path / "shot.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars",
           "--window-size=1280,2400", f"--screenshot={shot}", (tmp_path / "report.html").as_uri()]
    subprocess.run(cmd, capture_output=True, timeout=90, check=False)
    assert shot.exists(), "chromium wrote no screenshot"
    with Image.open(shot) as img:
        gray = img.convert("L")
        assert gray.size == (1280, 2400)
        assert ImageStat.Stat(gray).stddev[0] > 20  # not a blank page
        colors = img.convert("RGB").resize((128, 240)).getcolors(maxcolors=100_000)
        assert colors is not None and len(colors) > 200  # text, tables and plots, not a flat fill


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
def test_report_fits_a_1280px_window(report, tmp_path):
    """No sideways scrolling: every table fits the page's 1280 px column (measured by the browser)."""
    for m in report["models"]:  # as wide as a real run: three timed batches, three noise levels
        first = next(iter(m["latency_ms"].values()))
        m["latency_ms"] = {b: dict(first) for b in ("1", "64", "256")}
        m["robustness"] = {f"noise_{level}": 0.9123 for level in (0.1, 0.3, 0.5)}
    write_report(tmp_path, Report.from_json(report))
    probe = tmp_path / "probe.html"
    # widest element's right edge, written into the DOM where --dump-dom can read it
    script = ("<script>let w=0;for(const e of document.querySelectorAll('.scroll,pre,img'))w=Math.max(w,e.scrollWidth-e.clientWidth);"
              "document.title='overflow:'+w+':'+document.documentElement.scrollWidth</script>")
    probe.write_text((tmp_path / "report.html").read_text().replace("</body>", script + "</body>"))
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars",
           "--window-size=1280,2400", "--dump-dom", probe.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=False).stdout
    found = re.search(r"<title>overflow:(\d+):(\d+)</title>", dom)
    assert found, dom[:500]
    overflow, page = int(found.group(1)), int(found.group(2))
    assert overflow == 0 and page <= 1280, (overflow, page)
