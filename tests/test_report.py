"""`rewardiff report`: the page holds the runs' numbers, every image it names exists, several runs
and every run kind go in one report, bad input is one line and writes nothing."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

from report_runs import assert_tables_hold_json, demo_run, generate_pair, self_reward_run, train_run
from rewardiff.cli import main
from rewardiff.eval.report import REPORT_HTML, write_report


class _Page(HTMLParser):
    """The page's compare tables (metric -> category -> {class: text}), <img> sources, sections."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[dict] = []
        self.images: list[str] = []
        self.text: list[str] = []
        self._row: dict | None = None
        self._cell: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and "compare" in a.get("class", "").split():
            self.tables.append({"metric": a["data-metric"], "source": a.get("data-source"), "rows": {}})
        elif tag == "tr" and self.tables and "data-category" in a:
            self._row = self.tables[-1]["rows"].setdefault(a["data-category"], {})
        elif tag in ("td", "span") and self._row is not None and a.get("class"):
            self._cell = next(c for c in a["class"].split() if c not in ("num", "gain", "loss"))
            self._row.setdefault(self._cell, "")
        elif tag == "img":
            self.images.append(a["src"])

    def handle_endtag(self, tag):
        if tag in ("td", "span"):
            self._cell = None
        elif tag in ("tr", "table"):
            self._row = None

    def handle_data(self, data):
        self.text.append(data)
        if self._row is not None and self._cell is not None:
            self._row[self._cell] += data


def parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text())
    return page


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    base, tuned = generate_pair(root / "gen")
    return {"base": base, "tuned": tuned, "compare": tuned / "compare", "ddpo": train_run(root / "ddpo"),
            "self_reward": self_reward_run(root / "sr"), "demo": demo_run(root / "demo")}


def test_generate_and_compare_report_holds_the_json_numbers(runs, tmp_path):
    page_path = write_report([runs["tuned"]], tmp_path / "r")
    page = parse(page_path)
    metrics = [t["metric"] for t in page.tables]
    assert metrics == ["oracle", "jpeg_compressibility"]
    assert assert_tables_hold_json(page.tables) == 2 * 5
    oracle = json.loads((runs["tuned"] / "compare" / "compare.json").read_text())["comparisons"][0]["overall"]
    assert oracle["change"] < 0  # the blanked images fail: the table is not all zeros
    text = " ".join(page.text)
    assert "oracle: fail" in text and "oracle: pass" in text and "jpeg_compressibility:" in text
    assert "wins" in text and (tmp_path / "r" / "figures").is_dir()


def test_every_run_kind_in_one_report(runs, tmp_path):
    order = ["base", "tuned", "compare", "ddpo", "self_reward", "demo"]
    page_path = write_report([runs[k] for k in order], tmp_path / "all")
    html = page_path.read_text()
    page = parse(page_path)
    assert html.count('<section class="run"') == len(order)
    for kind in ("generate", "compare", "train ddpo (unet)", "self-reward", "demo"):
        assert f'<span class="kind">{kind}</span>' in html
    assert "http://" not in html and "https://" not in html  # no CDN, no server
    files = [s for s in page.images if not s.startswith("data:image/png;base64,")]
    assert files and all((page_path.parent / s).is_file() for s in files)  # figures as relative files
    figures = {Path(s).name for s in files}
    assert {"run3_curves_0.png", "run3_curves_0.png", "run4_rounds.png", "run4_proxy_oracle.png", "run4_winrate.png"} <= figures
    assert len(page.images) - len(files) >= 3 * 8  # samples embedded: base + 2 rounds x 8 images
    assert assert_tables_hold_json(page.tables) >= 4 * 5
    assert '<table class="overview">' in html and "in progress" not in html


def test_in_progress_run_is_reported_as_far_as_it_got(tmp_path, capsys):
    run = train_run(tmp_path / "ddpo", epochs=5, logged=2)
    assert main(["report", str(run), "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0] == f"note: {run}: in progress: 2 of 5 epochs logged, no lora.safetensors yet; reported as far as it got"
    assert out[-1] == f"wrote {tmp_path / 'r' / REPORT_HTML}"
    assert "in progress: 2 of 5 epochs logged" in (tmp_path / "r" / REPORT_HTML).read_text()


def test_not_a_run_is_one_line_and_writes_nothing(runs, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for bad in (tmp_path / "empty", tmp_path / "missing"):
        assert main(["report", str(runs["base"]), str(bad), "--out", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: report: ") and str(bad) in err[0]
    assert not (tmp_path / "r").exists()


def test_foreign_index_html_is_kept(runs, tmp_path, capsys):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / REPORT_HTML).write_text("<html>my page</html>")
    assert main(["report", str(runs["base"]), "--out", str(tmp_path / "r")]) == 2
    assert "not a rewardiff report" in capsys.readouterr().err
    assert (tmp_path / "r" / REPORT_HTML).read_text() == "<html>my page</html>"
    assert main(["report", str(runs["base"]), "--out", str(tmp_path / "r2")]) == 0
    assert main(["report", str(runs["base"]), "--out", str(tmp_path / "r2")]) == 0  # our own page is rewritten


def test_demo_prints_its_report_last(tmp_path, capsys):
    from rewardiff.demo import DemoConfig, run_demo
    from rewardiff.generation import SamplingSettings

    cfg = DemoConfig(out=str(tmp_path / "demo"), prompts="a red circle", num_images=2, sampling=SamplingSettings(steps=1),
                     self_reward_round=False)
    run_demo(cfg, progress=False)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == f"report: {tmp_path / 'demo' / 'report' / REPORT_HTML}"
    assert "oracle pass rate per category" in (tmp_path / "demo" / "report" / REPORT_HTML).read_text()
