"""The HTML report as a browser lays it out (scripts/render_report.py, headless Chromium): at a
1400-pixel window nothing makes the page wider than the window, and the check does catch a
page that is too wide.  Skipped where no Chromium is installed (CI installs none)."""
import importlib.util
import os
import re

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "scripts", "render_report.py")


def _load_script():
    spec = importlib.util.spec_from_file_location("render_report", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


R = _load_script()
BROWSER = R.find_browser()
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no Chromium installed (apt-get install chromium)")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    base = tmp_path_factory.mktemp("render")
    runs = R.tiny_runs(str(base / "runs"))
    res = R.render(runs, str(base / "report"), width=1400, screenshots=str(base / "shots"), browser=BROWSER)
    return res, base


def test_report_fits_a_1400_pixel_window(rendered):
    res, base = rendered
    assert res["tables"] >= 8
    assert res["innerWidth"] == 1400
    assert res["scrollWidth"] <= 1400 and not res["wide"], res
    assert res["fits"] and not res["scrolling_tables"], res       # the tables fit; none needs its scrollbar
    from PIL import Image

    with Image.open(res["screenshot"]) as im:
        assert im.size[0] == 1400 and im.size[1] >= 2000
    shots = sorted(os.listdir(base / "shots"))
    assert "report.png" in shots and "run1_detection.png" in shots and "run2_hijack.png" in shots


def test_the_check_catches_a_page_that_is_too_wide(rendered, tmp_path):
    """The same report with the summary table as it was before (no wrapper, cells that do not
    wrap) and with a plainly too wide element: both are caught."""
    res, _ = rendered
    page = open(res["html"], encoding="utf-8").read()
    old = re.sub(r"<style>.*?</style>", "<style>body{max-width:1100px;margin:2em auto}"
                 "table{border-collapse:collapse;font-size:0.9em}th,td{padding:3px 8px}</style>", page, flags=re.S)
    old = old.replace("<div class='table-wrap'>", "").replace("</table></div>", "</table>").replace("<wbr>", "")
    wide = page.replace("</body>", "<div style='width:2000px'>wide</div></body>", 1)
    for name, html in (("old.html", old), ("wide.html", wide)):
        path = tmp_path / name
        path.write_text(html, encoding="utf-8")
        probe = R.measure(BROWSER, str(path), 1400)
        assert probe["scrollWidth"] > 1400 and probe["wide"], (name, probe)
