"""Render a run's HTML report in headless Chromium: a screenshot at a given page width, and a
layout check that nothing makes the page wider than the window.

    python scripts/render_report.py RUN [RUN ...] [--output DIR] [--width 1400]
                                    [--screenshots DIR]
    python scripts/render_report.py --tiny DIR        # a tiny-model run (tests/tinymodel.py)
                                                      # with attention and assess, then as above

It writes the report (``stickytoken.report.write_report``) into ``--output`` (default
RUN/report), then:

- the layout check: a copy of report.html with a short script added at the end of the body,
  which measures, after layout, the document's scroll width against the window's width, the
  elements that reach past the window's right edge (outside the tables' scrolling
  wrappers), and the table wrappers that have to scroll; it writes the numbers into the
  page title as JSON, and ``chromium --headless --dump-dom`` returns the laid-out DOM, so
  the title can be read back (``--dump-dom`` alone shows no layout; the script does);
- a screenshot of the whole page at ``--width`` pixels (the height measured by the check),
  ``chromium --headless --screenshot``.

Results go to OUTPUT/render.json and OUTPUT/report.png; with ``--screenshots DIR`` the page
screenshot (as a 256-colour PNG, with Pillow) and the report's figure PNGs are copied there
too.  Exit status: 0 when the page fits, 1 when something widens it, 2 when no Chromium is
installed (Debian: ``apt-get install chromium``).  Needs no network: the report embeds its
figures.
"""
from __future__ import annotations

import argparse
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
MAX_HEIGHT = 16000          # screenshot height cap (pixels)

PROBE = """<script>
(function () {
  function measure() {
    var d = document.documentElement, vw = window.innerWidth, wide = [], clipped = [];
    document.querySelectorAll('body *').forEach(function (e) {
      if (e.closest('.table-wrap') && !e.classList.contains('table-wrap')) return;
      var r = e.getBoundingClientRect();
      if (r.right > vw + 0.5) wide.push(e.tagName.toLowerCase() + (e.className ? '.' + e.className : '')
                                        + ' ' + Math.round(r.right) + 'px');
    });
    document.querySelectorAll('.table-wrap').forEach(function (w, i) {
      if (w.scrollWidth > w.clientWidth + 1) clipped.push({table: i, scrollWidth: w.scrollWidth,
                                                           clientWidth: w.clientWidth});
    });
    var tables = document.querySelectorAll('table').length;
    document.title = 'PROBE' + JSON.stringify({scrollWidth: d.scrollWidth, clientWidth: d.clientWidth,
      innerWidth: vw, scrollHeight: d.scrollHeight, tables: tables, wide: wide.slice(0, 20),
      scrolling_tables: clipped}) + 'PROBE';
  }
  measure();
  window.addEventListener('load', measure);
})();
</script>"""


def find_browser() -> str | None:
    env = os.environ.get("CHROMIUM")
    if env and shutil.which(env):
        return shutil.which(env)
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def _chromium(browser: str, args: list[str], timeout: int = 120) -> subprocess.CompletedProcess:
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--disable-extensions",
           "--no-first-run", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
           "--virtual-time-budget=5000", *args]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def measure(browser: str, html_path: str, width: int, height: int = 3000) -> dict:
    """Lay out ``html_path`` at ``width`` pixels and return the probe's numbers."""
    with open(html_path, encoding="utf-8") as fh:
        page = fh.read()
    probe_path = os.path.join(os.path.dirname(html_path), ".render-probe.html")
    with open(probe_path, "w", encoding="utf-8") as fh:
        fh.write(page.replace("</body>", PROBE + "</body>", 1))
    try:
        out = _chromium(browser, [f"--window-size={width},{height}", "--dump-dom", "file://" + probe_path])
    finally:
        os.unlink(probe_path)
    m = re.search(r"PROBE(\{.*?\})PROBE", html.unescape(out.stdout), re.S)
    if not m:
        raise RuntimeError(f"the layout probe returned nothing (rc {out.returncode}): {out.stderr[-2000:]}")
    return json.loads(m.group(1))


def screenshot(browser: str, html_path: str, png: str, width: int, height: int) -> None:
    out = _chromium(browser, [f"--window-size={width},{height}", f"--screenshot={png}", "file://" + html_path])
    if not os.path.isfile(png):
        raise RuntimeError(f"no screenshot written (rc {out.returncode}): {out.stderr[-2000:]}")


def _compact_png(src: str, dst: str) -> None:
    """Copy a page screenshot as a 256-colour PNG (a third of the size; text and figures read
    the same), or as it is without Pillow."""
    try:
        from PIL import Image
    except ImportError:
        shutil.copyfile(src, dst)
        return
    with Image.open(src) as im:
        im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(dst, optimize=True)


def tiny_runs(folder: str) -> list[str]:
    """Two tiny-model runs (one with sticky tokens, one without, whose analyses use stand-in
    candidates), each with its attention analysis and assessment; returns the run folders."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from tinymodel import WORDS, build_tiny_model, tiny_result

    from stickytoken import assess as A
    from stickytoken import datasets as D
    from stickytoken.attention import analyze

    model = build_tiny_model(os.path.join(folder, "model"))
    words = WORDS[:40]
    corpus = {f"d{i}": " ".join(words[i:i + 6]) for i in range(30)}
    queries = {f"q{i}": " ".join(words[i:i + 2]) for i in range(8)}
    runs = []
    for name, sticky in (("with-sticky", None), ("no-sticky", ())):
        kw = {} if sticky is None else {"sticky_words": sticky}
        run = tiny_result(model, run_dir=os.path.join(folder, name), **kw)
        analyze(run, model=model, sentences=["the cat ran home", "a big dog"], n_sentences=None, max_copies=2,
                n_tokens=2, show_progress_bar=False)
        A.assess(run, model=model, n_tokens=2, copies=1,
                 retrieval=D.RetrievalData(corpus, queries, {f"q{i}": {f"d{i}": 1} for i in range(8)}),
                 clustering=D.ClusteringData([" ".join(words[i:i + 4]) for i in range(20)], ["x", "y"] * 10),
                 hijack_queries=3, max_copies=3, show_progress_bar=False)
        runs.append(run.run_dir)
    return runs


def render(runs: list[str], output: str, width: int = 1400, screenshots: str | None = None,
           browser: str | None = None) -> dict:
    """Write the report of ``runs`` into ``output``, lay it out and screenshot it; returns the
    probe's numbers plus 'fits' and the paths."""
    from stickytoken.report import write_report

    browser = browser or find_browser()
    if browser is None:
        raise FileNotFoundError("no Chromium found (tried " + ", ".join(BROWSERS) + "); apt-get install chromium")
    paths = write_report(runs, output)
    probe = measure(browser, paths["html"], width)
    height = min(MAX_HEIGHT, max(600, int(probe["scrollHeight"]) + 40))
    png = os.path.join(output, "report.png")
    screenshot(browser, os.path.abspath(paths["html"]), png, width, height)
    probe.update(width=width, fits=probe["scrollWidth"] <= probe["innerWidth"] and not probe["wide"],
                 html=paths["html"], screenshot=png, screenshot_height=height)
    if screenshots:
        os.makedirs(screenshots, exist_ok=True)
        _compact_png(png, os.path.join(screenshots, "report.png"))
        for name in sorted(os.listdir(paths["figures"])):
            if name.endswith(".png"):
                shutil.copyfile(os.path.join(paths["figures"], name), os.path.join(screenshots, name))
        probe["screenshots"] = os.path.abspath(screenshots)
    with open(os.path.join(output, "render.json"), "w", encoding="utf-8") as fh:
        json.dump(probe, fh, indent=1)
    return probe


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="*", help="finished detection run folders (results.json)")
    ap.add_argument("--tiny", metavar="DIR", help="build two tiny-model runs in DIR and report on them")
    ap.add_argument("--output", help="report folder (default: FIRST_RUN/report)")
    ap.add_argument("--width", type=int, default=1400, help="window width in pixels (default 1400)")
    ap.add_argument("--screenshots", help="copy report.png and the figures' PNGs here")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    browser = find_browser()
    if browser is None:
        print("no Chromium found (tried " + ", ".join(BROWSERS) + "); on Debian: apt-get install chromium",
              file=sys.stderr)
        return 2
    runs = list(args.runs)
    if args.tiny:
        runs += tiny_runs(args.tiny)
    if not runs:
        ap.error("give run folders or --tiny DIR")
    output = args.output or os.path.join(runs[0], "report")
    res = render(runs, output, args.width, args.screenshots, browser)
    print(json.dumps({k: res[k] for k in ("fits", "scrollWidth", "innerWidth", "scrollHeight", "tables", "wide",
                                          "scrolling_tables", "screenshot")}, indent=1))
    return 0 if res["fits"] else 1


if __name__ == "__main__":
    sys.exit(main())
