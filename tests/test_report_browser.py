"""The report in a real browser: headless Chromium (Debian's `chromium` package) opens it from
disk; no console error, every <img> decoded (naturalWidth > 0), the compare tables show the
numbers of the runs' compare.json, and a screenshot is saved.

Chromium is driven through its command line only (no extra Python package): `--dump-dom` of a
copy of the page with a probe script prepended, which records errors (script errors, failed
resource loads, console.error / console.warn) and, after the load event, the images' sizes and
the tables' cells into an attribute of <body>; Chromium's own console log (`--enable-logging`)
is checked too. `scripts/test.sh` installs Chromium when it runs as root and it is missing.
Set REWARDIFF_REPORT_SCREENSHOT=PATH to keep the screenshot.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from report_runs import assert_tables_hold_json, generate_pair, self_reward_run, train_run
from rewardiff.eval.report import write_report

BROWSER = os.environ.get("REWARDIFF_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(BROWSER is None, reason="headless Chromium not installed (apt-get install -y chromium; scripts/test.sh does it as root)")
TIMEOUT_S = 90
WINDOW = (1280, 2400)

PROBE = """<script>
window.__probe = {errors: []};
window.addEventListener('error', function (e) {
  var t = e.target;
  window.__probe.errors.push(t && t !== window && (t.src || t.href) ? 'failed to load ' + (t.src || t.href).slice(0, 120) : String(e.message));
}, true);
window.addEventListener('unhandledrejection', function (e) { window.__probe.errors.push('unhandled rejection: ' + e.reason); });
['error', 'warn'].forEach(function (level) {
  var original = console[level];
  console[level] = function () { window.__probe.errors.push('console.' + level + ': ' + Array.from(arguments).join(' ')); original.apply(console, arguments); };
});
window.addEventListener('load', function () {
  var p = window.__probe;
  p.images = Array.from(document.images).map(function (i) { return {src: i.getAttribute('src').slice(0, 40), width: i.naturalWidth, complete: i.complete}; });
  p.tables = Array.from(document.querySelectorAll('table.compare')).map(function (t) {
    var rows = {};
    t.querySelectorAll('tr[data-category]').forEach(function (tr) {
      var cells = {};
      tr.querySelectorAll('td[class], span[class]').forEach(function (c) {
        var name = Array.from(c.classList).filter(function (k) { return ['num', 'gain', 'loss'].indexOf(k) < 0; })[0];
        if (name) cells[name] = c.textContent.trim();
      });
      rows[tr.dataset.category] = cells;
    });
    return {metric: t.dataset.metric, source: t.dataset.source, rows: rows};
  });
  document.body.setAttribute('data-probe', JSON.stringify(p));
});
</script>"""


class _BodyAttr(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.probe: str | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "body":
            self.probe = dict(attrs).get("data-probe")


def _chromium(*args: str) -> subprocess.CompletedProcess:
    cmd = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
           "--hide-scrollbars", f"--window-size={WINDOW[0]},{WINDOW[1]}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("browser")
    _, tuned = generate_pair(root / "gen")
    runs = [tuned, self_reward_run(root / "sr"), train_run(root / "ddpo")]
    return write_report(runs, root / "report")


def test_report_loads_in_chromium_without_errors(report):
    probe_page = report.with_name("probe.html")  # beside the page: the same relative figure paths
    html = report.read_text()
    probe_page.write_text(html.replace("<head>", "<head>" + PROBE, 1))
    done = _chromium("--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000", "--dump-dom", probe_page.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    parser = _BodyAttr()
    parser.feed(done.stdout)
    assert parser.probe, "the probe did not run: " + done.stderr[-2000:]
    probe = json.loads(parser.probe)
    assert probe["errors"] == []
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], console
    assert len(probe["images"]) == html.count("<img ") > 20
    not_loaded = [i for i in probe["images"] if not (i["complete"] and i["width"] > 0)]
    assert not_loaded == []
    assert {i["src"][:5] for i in probe["images"]} == {"data:", "figur"}  # embedded samples and relative figure files
    assert len(probe["tables"]) >= 3
    assert assert_tables_hold_json(probe["tables"]) >= 3 * 5


def test_probe_sees_a_broken_image(report, tmp_path):
    """The check can fail: a page whose image file is missing is caught."""
    broken = report.with_name("broken.html")
    broken.write_text(report.read_text().replace("<head>", "<head>" + PROBE, 1).replace('src="figures/', 'src="missing/', 1))
    done = _chromium("--virtual-time-budget=10000", "--dump-dom", broken.as_uri())
    parser = _BodyAttr()
    parser.feed(done.stdout)
    probe = json.loads(parser.probe)
    assert any(e.startswith("failed to load") for e in probe["errors"])
    assert any(i["width"] == 0 for i in probe["images"])


def test_screenshot(report, tmp_path):
    shot = Path(os.environ.get("REWARDIFF_REPORT_SCREENSHOT") or tmp_path / "report.png")
    shot.parent.mkdir(parents=True, exist_ok=True)
    done = _chromium(f"--screenshot={shot}", "--virtual-time-budget=10000", report.as_uri())
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    with Image.open(shot) as im:
        assert im.size == WINDOW
        pixels = np.asarray(im.convert("RGB"), dtype=float)
    assert pixels.std() > 10  # not a blank page
