"""`rewardiff report RUN... --out DIR`: one static HTML page that shows what a run did.

People judge a text-to-image fine-tune by looking at images side by side and at curves, so the
report puts on one page, per run: its config; per-category tables of the evaluation protocol
(paired changes with 95% CIs, `eval.compare`); win / tie / loss bars; learning curves from
train_log.jsonl; the proxy-reward vs oracle plot (the reward-hacking check); and image grids,
base beside tuned (and each round), every image with its oracle verdict and reason and the
judges' scores already written beside it. Several runs in one report are summarised side by side.

The page needs no server and no network: samples are embedded as data URIs, figures are PNG
files in DIR/figures/ referenced by relative paths. It only reads the runs (figures and
index.html are written under DIR); the oracle verdicts it shows are evaluation only, as
everywhere (read from oracle_verdicts.jsonl, or computed for the shown images).

Run folders recognised (by the files they hold): a `generate` folder (metadata.jsonl), an
`eval compare` output (compare.json), a self-reward run (round_1/), a training run
(train_log.jsonl: DDPO, ReFL, ...), the demo folder (base/ + self_reward/).
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Callable

from rewardiff.errors import RewardiffError
from rewardiff.eval.compare import ORACLE, Comparison
from rewardiff.io_utils import atomic_write_text, read_jsonl

REPORT_HTML = "index.html"
FIGURES = "figures"
TEMPLATE = Path(__file__).with_name("report_template.html")
GENERATOR_TAG = '<meta name="generator" content="rewardiff report">'
"""Marks a page as ours: an existing index.html without it is not overwritten."""
CATEGORY_ORDER = ("single", "pair", "counting", "position")
MAX_PROMPTS_PER_CATEGORY = 3  # gallery rows per category (a protocol set has hundreds of prompts)
MAX_GALLERY_PROMPTS = 16
MAX_IMAGES_PER_CELL = 4  # images of one prompt shown per column
THUMBNAIL = 256  # px: larger samples (SD's 512-1024) are shrunk before embedding


# ---- what a run holds ----------------------------------------------------------------------------


@dataclass
class EvalSet:
    """One generated set with its oracle table (shapes prompts) and mean judge score, if evaluated."""

    label: str
    metadata: Path
    oracle: dict | None = None  # OracleReport.to_dict()
    judge: float | None = None  # the self-judge's mean score on the set


@dataclass
class Pairing:
    """Base and tuned sets compared by the protocol (compare.json) and/or by a win rate."""

    label: str
    base: Path | None  # metadata.jsonl of each side (None: the recorded path no longer exists)
    tuned: Path | None
    comparisons: list[Comparison] = field(default_factory=list)
    source: Path | None = None  # the compare.json read
    winrate: dict | None = None
    compare_dir: Path | None = None  # holds <reward>/{base,tuned}/scores.jsonl
    winrate_dir: Path | None = None


@dataclass
class Column:
    """One column of an image grid: a set and the per-image scores found beside it."""

    name: str
    metadata: Path
    scores: dict[str, dict[str, float]] = field(default_factory=dict)  # reward -> image path -> score


@dataclass
class RunView:
    path: Path
    kind: str
    status: str | None = None  # None: complete; else what is missing ('in progress: ...')
    config: str | None = None
    sets: list[EvalSet] = field(default_factory=list)
    pairings: list[Pairing] = field(default_factory=list)
    curves: list[tuple[str, list[dict]]] = field(default_factory=list)  # (title, train-log rows)
    rounds: list[dict] = field(default_factory=list)  # self-reward: {"label", "oracle", "judge"} per model
    galleries: list[tuple[str, list[Column]]] = field(default_factory=list)
    summary: dict | None = None


# ---- reading runs --------------------------------------------------------------------------------


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None


def _config(folder: Path) -> dict:
    import yaml

    try:
        return yaml.safe_load((folder / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}


def _config_text(folder: Path) -> str | None:
    path = folder / "config.yaml"
    return path.read_text() if path.is_file() else None


def _resolve(recorded: str | None, anchor: Path) -> Path | None:
    """A path recorded in a JSON (relative to the cwd of the run that wrote it) found again:
    as given, under the anchor's ancestors, or by its tail under the anchor (moved run folders)."""
    if not recorded:
        return None
    rec = Path(recorded)
    tries = [rec] + [a / rec for a in (anchor, *anchor.parents)] + [anchor / Path(*rec.parts[i:]) for i in range(1, len(rec.parts))]
    for p in tries:
        if p.is_dir() and (p / "metadata.jsonl").is_file():
            return p / "metadata.jsonl"
        if p.is_file():
            return p
    return None


def _rows(meta: Path) -> list[dict]:
    return list(read_jsonl(meta)) if meta.is_file() else []


def _expected_images(folder: Path) -> int | None:
    """How many images the `generate` run in `folder` will hold when finished (None: unknown)."""
    from rewardiff.generation import images_per_prompt, read_prompts

    cfg, run = _config(folder), _json(folder / "run.json")
    if not cfg or not run:
        return None
    try:
        prompts = read_prompts(cfg["prompts"])
        if len(prompts) != run.get("num_prompts"):
            return None
        return sum(images_per_prompt(cfg["prompts"], prompts, int(cfg["num_images"])))
    except (RewardiffError, OSError, KeyError, TypeError, ValueError):
        return None


def _eval_set(folder: Path, label: str) -> EvalSet:
    ev = _json(folder / "eval.json") or {}
    oracle = ev.get("oracle") or _json(folder / "oracle_eval.json")
    judge = (ev.get("judge") or {}).get("score")
    return EvalSet(label, folder / "metadata.jsonl", oracle, judge)


def _pairing_from_compare(cmp_dir: Path, label: str, tuned_default: Path | None = None) -> Pairing | None:
    data = _json(cmp_dir / "compare.json")
    if not data:
        return None
    comparisons = [Comparison.from_dict(c) for c in data.get("comparisons", [])]
    base = _resolve(data.get("base"), cmp_dir)
    tuned = _resolve(data.get("tuned"), cmp_dir) or tuned_default
    return Pairing(label, base, tuned, comparisons, cmp_dir / "compare.json", compare_dir=cmp_dir)


def _attach_winrate(p: Pairing, wr_dir: Path) -> None:
    data = _json(wr_dir / "winrate.json")
    if data:
        p.winrate, p.winrate_dir = data, wr_dir
        if p.base is None:
            p.base = _resolve(data.get("base"), wr_dir)


def _generate_parts(folder: Path, label: str) -> tuple[EvalSet, Pairing | None]:
    """A generate folder: its evaluated set and, if it was compared with a base, the pairing."""
    es = _eval_set(folder, label)
    p = _pairing_from_compare(folder / "compare", f"{label} vs base", es.metadata)
    if (folder / "winrate" / "winrate.json").is_file():
        if p is None:
            p = Pairing(f"{label} vs base", None, es.metadata)
        _attach_winrate(p, folder / "winrate")
    return es, p


def _progress_status(folder: Path) -> str | None:
    n = len(_rows(folder / "metadata.jsonl"))
    expected = _expected_images(folder)
    if expected is not None and n < expected:
        return f"in progress: {n} of {expected} images generated"
    return None


def _view_generate(path: Path) -> RunView:
    view = RunView(path, "generate", _progress_status(path), _config_text(path))
    es, p = _generate_parts(path, path.resolve().name or "generated set")
    if p is not None and p.base is not None and p.base.parent.resolve() != path.resolve():
        view.sets.append(_eval_set(p.base.parent, "base"))
    view.sets.append(es)
    if p is not None:
        view.pairings.append(p)
    return view


def _view_compare(path: Path) -> RunView:
    p = _pairing_from_compare(path, "tuned vs base")
    if p is None:
        raise RewardiffError(f"report: {path / 'compare.json'} cannot be read as a comparison (rerun rewardiff eval compare)")
    view = RunView(path, "compare", None, None)
    view.pairings.append(p)
    return view


def _train_kind(cfg: dict) -> str:
    if "target" in cfg and "epochs" in cfg:
        return f"train ddpo ({cfg['target']})"
    if "train_steps" in cfg:
        return "train refl"
    return "training"


def _view_train(path: Path) -> RunView:
    cfg = _config(path)
    view = RunView(path, _train_kind(cfg), None, _config_text(path))
    rows = list(read_jsonl(path / "train_log.jsonl"))
    view.curves.append(("learning curves (train_log.jsonl)", rows))
    view.summary = _json(path / "summary.json")
    if view.kind != "training" and not (path / "lora.safetensors").is_file() and (cfg.get("epochs") or cfg.get("train_steps")):
        total = cfg.get("epochs") or cfg.get("train_steps")
        unit = "epochs" if "epochs" in cfg else "steps"
        done = max((int(r.get("epoch", r.get("step", 0))) for r in rows), default=0)
        view.status = f"in progress: {done} of {total} {unit} logged, no lora.safetensors yet"
    return view


def _scale_dirs(round_dir: Path) -> list[Path]:
    ev = round_dir / "eval"
    return sorted((d for d in ev.iterdir() if d.is_dir() and (d / "eval.json").is_file()), key=lambda d: d.name) if ev.is_dir() else []


def _view_self_reward(path: Path, base_dir: Path | None = None) -> RunView:
    cfg = _config(path)
    view = RunView(path, "self-reward", None, _config_text(path))
    rounds_total = int(cfg.get("rounds") or 0)
    if base_dir is None:
        recorded = (cfg.get("eval") or {}).get("base_dir") or ""
        base_dir = path / "base_eval"
        if recorded and not (base_dir / "eval.json").is_file():
            found = _resolve(str(Path(recorded) / "eval.json"), path)
            base_dir = found.parent if found is not None else Path(recorded)
    columns: list[Column] = []
    if (base_dir / "eval.json").is_file():
        es = _eval_set(base_dir, "base")
        view.sets.append(es)
        columns.append(Column("base", es.metadata))
        if es.oracle:
            view.rounds.append({"label": "base", "oracle": es.oracle.get("overall"), "judge": es.judge})
    curve_rows: list[dict] = []
    offset = 0
    k = 0
    for k in range(1, max(rounds_total, 1) + 1):
        rd = path / f"round_{k}"
        if not rd.is_dir():
            break
        log = rd / "train" / "train_log.jsonl"
        if log.is_file():
            rows = list(read_jsonl(log))
            curve_rows += [{**r, "stage": f"round {k} {r.get('stage', '')}".strip(), "step": offset + int(r.get("step", 0))} for r in rows]
            offset += max((int(r.get("step", 0)) for r in rows), default=0)
        for sd in _scale_dirs(rd):
            scale = sd.name.removeprefix("scale_")
            label = f"round {k} @{scale}"
            es, p = _generate_parts(sd, label)
            view.sets.append(es)
            if p is not None:
                p.base = p.base or (columns[0].metadata if columns else None)
                view.pairings.append(p)
            if es.oracle:
                view.rounds.append({"label": label, "oracle": es.oracle.get("overall"), "judge": es.judge})
            columns.append(Column(label, es.metadata))
    if curve_rows:
        view.curves.append(("self-reward fine-tuning loss per round (train/train_log.jsonl)", curve_rows))
    if len(columns) > 1:
        view.galleries.append(("base beside each round (held-out prompts, same seeds)", columns))
    view.summary = _json(path / "summary.json")
    if not (path / "summary.json").is_file() or (rounds_total and not _scale_dirs(path / f"round_{rounds_total}")):
        done = sum(1 for i in range(1, rounds_total + 1) if (path / f"round_{i}" / "train" / "lora" / "lora.safetensors").is_file())
        view.status = f"in progress: {done} of {rounds_total} rounds trained, no summary.json yet"
    return view


def _view_demo(path: Path) -> RunView:
    view = RunView(path, "demo", None, _config_text(path))
    cfg = _config(path)
    base_cols: list[Column] = []
    if (path / "base" / "metadata.jsonl").is_file():
        es = _eval_set(path / "base", "base")
        view.sets.append(es)
        base_cols.append(Column("base", es.metadata))
    for key in ("best_of", "best_lora"):
        if (path / key / "metadata.jsonl").is_file():
            es, p = _generate_parts(path / key, key.replace("_", "-"))
            view.sets.append(es)
            if p is not None:
                view.pairings.append(p)
                base_cols.append(Column(es.label, es.metadata))
    sr = path / "self_reward"
    if sr.is_dir():
        sub = _view_self_reward(sr, path / "base")
        view.sets += [s for s in sub.sets if s.label != "base"]
        view.pairings += sub.pairings
        view.curves += sub.curves
        view.rounds = sub.rounds
        base_cols += [c for c in (sub.galleries[0][1] if sub.galleries else []) if c.name != "base"]
        if sub.status:
            view.status = f"self-reward round {sub.status}"
    elif cfg.get("self_reward_round", True):
        view.status = "in progress: the self-reward round has not started"
    if len(base_cols) > 1:
        view.galleries.append(("base beside best-of-N / the tuned model (held-out prompts, same seeds)", base_cols))
    if not view.sets:
        view.status = "in progress: the base set is not generated yet"
    return view


def collect_run(path: str | Path) -> RunView:
    """What the report shows of one run folder; refuses a folder that is not a run."""
    path = Path(path)
    if path.is_file() and path.name in ("metadata.jsonl", "compare.json", "train_log.jsonl"):
        path = path.parent
    if not path.is_dir():
        raise RewardiffError(f"report: {path} is not a folder (give a run folder)")
    cfg = _config(path)
    if "self_reward_round" in cfg or ((path / "base").is_dir() and (path / "self_reward").is_dir()):
        return _view_demo(path)
    if (path / "round_1").is_dir() or ("candidates" in cfg and "rounds" in cfg):
        return _view_self_reward(path)
    if (path / "train_log.jsonl").is_file():
        return _view_train(path)
    if (path / "metadata.jsonl").is_file():
        return _view_generate(path)
    if (path / "compare.json").is_file():
        return _view_compare(path)
    raise RewardiffError(f"report: {path} is not a rewardiff run (no metadata.jsonl, compare.json, train_log.jsonl, round_1/ or demo base/)")


# ---- figures -------------------------------------------------------------------------------------


def _figures(view: RunView, out: Path, prefix: str) -> dict[str, list[tuple[str, Path]]]:
    """Build and save the run's figures; returns section -> [(caption, png path)]."""
    from rewardiff.eval.plots import RATE, bar_figure, curves_figure, line_figure, proxy_oracle_figure, save_figure

    figs: dict[str, list[tuple[str, Path]]] = {"curves": [], "bars": [], "proxy": []}
    folder = out / FIGURES
    for n, (title, rows) in enumerate(view.curves):
        fig = curves_figure(rows, title)
        if fig is not None:
            figs["curves"].append((title, save_figure(fig, folder / f"{prefix}_curves_{n}.png")))
    if len(view.rounds) > 1:
        series = {"oracle overall": [r["oracle"] for r in view.rounds]}
        fig = line_figure(series, "held-out oracle overall per model (0 = base)", "model (0 = base, then each round)", "pass rate", ylim=RATE)
        figs["curves"].append(("oracle per round", save_figure(fig, folder / f"{prefix}_rounds.png")))
    bars = {}
    for p in view.pairings:
        if p.winrate:
            bars[p.label] = {"win": p.winrate["wins"], "tie": p.winrate["ties"], "loss": p.winrate["losses"]}
    if bars:
        reward = next(p.winrate["reward"] for p in view.pairings if p.winrate)
        fig = bar_figure(bars, f"tuned vs base by {reward}: wins / ties / losses", "pairs")
        figs["bars"].append(("win / tie / loss", save_figure(fig, folder / f"{prefix}_winrate.png")))
    points, proxy = _proxy_points(view)
    if len(points) > 1:
        fig = proxy_oracle_figure(points, proxy)
        figs["proxy"].append((f"{proxy} vs oracle", save_figure(fig, folder / f"{prefix}_proxy_oracle.png")))
    return figs


def _proxy_points(view: RunView) -> tuple[list[tuple[str, float, float]], str]:
    """(model, proxy reward, oracle overall) per model: the self-judge per round, or a pairing's
    first reward comparison (base and tuned) beside its oracle comparison."""
    pts = [(r["label"], r["judge"], r["oracle"]) for r in view.rounds if r.get("judge") is not None and r.get("oracle") is not None]
    if len(pts) > 1:
        return pts, "self-judge mean score"
    for p in view.pairings:
        oracle = next((c for c in p.comparisons if c.metric == ORACLE), None)
        reward = next((c for c in p.comparisons if c.metric != ORACLE), None)
        if oracle and reward:
            return [("base", reward.overall.base, oracle.overall.base), (p.label.removesuffix(" vs base"), reward.overall.tuned, oracle.overall.tuned)], reward.metric
    return [], ""


# ---- images --------------------------------------------------------------------------------------


def _data_uri(path: Path) -> str:
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        if max(im.size) > THUMBNAIL:
            im.thumbnail((THUMBNAIL, THUMBNAIL))
        buf = io.BytesIO()
        im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _scores_files(column: Column, pairings: list[Pairing]) -> None:
    """Per-image scores written beside a set: compare/<reward>/{base,tuned}/scores.jsonl,
    winrate/{base,tuned}/scores.jsonl, scores.jsonl of `rewardiff score`."""
    def add(path: Path, names: list[str] | None = None) -> None:
        for row in read_jsonl(path):
            for key, value in row.items():
                if key in ("image", "prompt") or (key == "total" and names is None) or not isinstance(value, (int, float)):
                    continue
                name = names[0] if (names and key == "total") else key
                if names and key != "total":
                    continue
                column.scores.setdefault(name, {})[row["image"]] = float(value)

    root = column.metadata.parent
    if (root / "scores.jsonl").is_file():
        add(root / "scores.jsonl")
    for p in pairings:
        side = "tuned" if p.tuned is not None and p.tuned.resolve() == column.metadata.resolve() else (
            "base" if p.base is not None and p.base.resolve() == column.metadata.resolve() else None)
        if side is None:
            continue
        for c in p.comparisons:
            if c.metric != ORACLE and p.compare_dir is not None:
                f = p.compare_dir / _safe(c.metric) / side / "scores.jsonl"
                if f.is_file():
                    add(f, [c.metric])
        if p.winrate_dir is not None and (p.winrate_dir / side / "scores.jsonl").is_file():
            add(p.winrate_dir / side / "scores.jsonl", [p.winrate["reward"]])


def _safe(spec: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in spec)


def _verdicts(meta: Path, rows: list[dict]) -> dict[str, tuple[bool, str]]:
    """image -> (passed, reason): oracle_verdicts.jsonl if written, else the oracle on the shown rows
    (shapes prompts only; evaluation, never fed back)."""
    path = meta.parent / "oracle_verdicts.jsonl"
    if path.is_file():
        return {r["image"]: (bool(r["passed"]), r["reason"]) for r in read_jsonl(path)}
    from rewardiff.io_utils import load_image
    from rewardiff.shapes.oracle import judge
    from rewardiff.shapes.prompts import UnsupportedPromptError

    out = {}
    for r in rows:
        try:
            v = judge(load_image(meta.parent / r["image"]), r["prompt"])
        except (UnsupportedPromptError, FileNotFoundError, ValueError):
            continue
        out[r["image"]] = (v.passed, v.reason)
    return out


def _gallery_prompts(rows: list[dict]) -> list[str]:
    from rewardiff.eval.compare import category_of

    by_cat: dict[str, list[str]] = {}
    for r in rows:
        lst = by_cat.setdefault(category_of(r["prompt"]), [])
        if r["prompt"] not in lst and len(lst) < MAX_PROMPTS_PER_CATEGORY:
            lst.append(r["prompt"])
    order = [c for c in CATEGORY_ORDER if c in by_cat] + [c for c in by_cat if c not in CATEGORY_ORDER]
    return [p for c in order for p in by_cat[c]][:MAX_GALLERY_PROMPTS]


# ---- HTML ----------------------------------------------------------------------------------------


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _num(v: float | None, fmt: str = ".3f") -> str:
    return "-" if v is None else format(v, fmt)


def _rel(path: Path, out: Path) -> str:
    return Path(os.path.relpath(path, out)).as_posix()


def _comparison_table(c: Comparison, source: Path | None) -> str:
    src = f' data-source="{_e(source)}"' if source else ""
    head = ("<tr><th>category</th><th>images</th><th>prompts</th><th>base</th><th>tuned</th><th>change</th>"
            "<th>95% CI</th><th>verdict</th></tr>")
    body = []
    for cat, d in [*c.categories.items(), ("overall", c.overall)]:
        cls = ' class="overall"' if cat == "overall" else ""
        verdict_cls = {"gain": "gain", "loss": "loss"}.get(d.verdict, "")
        body.append(f'<tr{cls} data-category="{_e(cat)}"><td>{_e(cat)}</td><td class="num images">{d.images}</td>'
                    f'<td class="num prompts">{d.prompts}</td><td class="num base">{d.base:.3f}</td><td class="num tuned">{d.tuned:.3f}</td>'
                    f'<td class="num change">{d.change:+.3f}</td><td class="ci">[<span class="ci_low">{d.ci_low:+.3f}</span>, '
                    f'<span class="ci_high">{d.ci_high:+.3f}</span>]</td><td class="verdict {verdict_cls}">{_e(d.verdict)}</td></tr>')
    caption = "oracle pass rate (evaluation only)" if c.metric == ORACLE else f"reward {c.metric}"
    return (f'<table class="compare" data-metric="{_e(c.metric)}"{src}><caption>{_e(caption)}: paired change, 95% CI from '
            f"a bootstrap over prompts then images</caption>{head}{''.join(body)}</table>")


def _winrate_table(w: dict) -> str:
    return (f'<table class="winrate" data-reward="{_e(w["reward"])}"><caption>win rate by {_e(w["reward"])} (tie if |d| &le; '
            f'{_e(w.get("tie_margin", 0.01))})</caption><tr><th>wins</th><th>ties</th><th>losses</th><th>win rate (non-tied)</th>'
            f'<th>95% CI</th><th>mean base</th><th>mean tuned</th></tr><tr><td class="num wins">{w["wins"]}</td>'
            f'<td class="num ties">{w["ties"]}</td><td class="num losses">{w["losses"]}</td><td class="num win_rate">{w["win_rate"]:.3f}</td>'
            f'<td>[{w["ci_low"]:.3f}, {w["ci_high"]:.3f}]</td><td class="num mean_base">{w["mean_base"]:.3f}</td>'
            f'<td class="num mean_tuned">{w["mean_tuned"]:.3f}</td></tr></table>')


def _sets_table(sets: list[EvalSet]) -> str:
    sets = [s for s in sets if s.oracle or s.judge is not None]
    if not sets:
        return ""
    cats = [c for c in CATEGORY_ORDER if any(c in (s.oracle or {}).get("categories", {}) for s in sets)]
    head = "<tr><th>set</th>" + "".join(f"<th>{c}</th>" for c in cats) + "<th>overall</th><th>judge score</th></tr>"
    body = []
    for s in sets:
        oc = (s.oracle or {}).get("categories", {})
        cells = "".join(f'<td class="num rate" data-category="{c}">{_num(oc.get(c, {}).get("rate"))}</td>' for c in cats)
        overall = (s.oracle or {}).get("overall")
        body.append(f'<tr data-set="{_e(s.label)}"><td>{_e(s.label)}</td>{cells}<td class="num overall">{_num(overall)}</td>'
                    f'<td class="num judge">{_num(s.judge)}</td></tr>')
    return (f'<table class="sets"><caption>oracle pass rate per category (evaluation only) and the self-judge\'s mean score'
            f"</caption>{head}{''.join(body)}</table>")


def _gallery(title: str, columns: list[Column], pairings: list[Pairing]) -> str:
    loaded = []
    for col in columns:
        if not col.metadata.is_file():
            continue
        _scores_files(col, pairings)
        rows = _rows(col.metadata)
        loaded.append((col, {(r["prompt"], int(r.get("index", 0))): r for r in rows}))
    if not loaded:
        return ""
    prompts = _gallery_prompts(list(loaded[0][1].values()))
    head = "<tr><th>prompt</th>" + "".join(f"<th>{_e(c.name)}</th>" for c, _ in loaded) + "</tr>"
    body = []
    for prompt in prompts:
        cells = []
        for col, by_key in loaded:
            shown = sorted((k for k in by_key if k[0] == prompt), key=lambda k: k[1])[:MAX_IMAGES_PER_CELL]
            rows = [by_key[k] for k in shown]
            verdicts = _verdicts(col.metadata, rows)
            figs = []
            for r in rows:
                v = verdicts.get(r["image"])
                cls = "" if v is None else (" pass" if v[0] else " fail")
                lines = ["oracle: -" if v is None else ("oracle: pass" if v[0] else f"oracle: fail: {v[1]}")]
                scores = [(name, vals[r["image"]]) for name, vals in col.scores.items() if r["image"] in vals]
                if "judge_score" in r and not any(abs(v - r["judge_score"]) < 1e-6 for _, v in scores):
                    lines.append(f"best-of judge: {r['judge_score']:.3f}")
                lines += [f"{name}: {v:.3f}" for name, v in scores]
                alt = f"{prompt} #{r.get('index', 0)} ({col.name})"
                figs.append(f'<figure class="sample{cls}"><img src="{_data_uri(col.metadata.parent / r["image"])}" alt="{_e(alt)}" '
                            f'title="{_e(r["image"])}"><figcaption>{"<br>".join(_e(x) for x in lines)}</figcaption></figure>')
            cells.append(f"<td>{''.join(figs)}</td>")
        body.append(f"<tr><td>{_e(prompt)}</td>{''.join(cells)}</tr>")
    return f'<h3>{_e(title)}</h3><table class="gallery">{head}{"".join(body)}</table>'


def _img(caption: str, path: Path, out: Path) -> str:
    return f'<p><img class="figure" src="{_e(_rel(path, out))}" alt="{_e(caption)}"></p>'


def _run_section(n: int, view: RunView, out: Path) -> str:
    figs = _figures(view, out, f"run{n}")
    parts = [f'<section class="run" id="run{n}"><h2>{_e(view.path)} <span class="kind">{_e(view.kind)}</span></h2>']
    if view.status:
        parts.append(f'<p class="status">{_e(view.status)}: reported as far as it got.</p>')
    if view.summary:
        keys = {k: v for k, v in view.summary.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
        if keys:
            parts.append('<table class="summary"><caption>summary.json</caption>' + "".join(
                f"<tr><th>{_e(k)}</th><td>{_e(f'{v:.4g}' if isinstance(v, float) else v)}</td></tr>" for k, v in keys.items()) + "</table>")
    table = _sets_table(view.sets)
    if table:
        parts.append("<h3>Evaluation</h3>" + table)
    for p in view.pairings:
        parts.append(f"<h3>{_e(p.label)}</h3>")
        parts += [_comparison_table(c, p.source) for c in p.comparisons]
        if p.winrate:
            parts.append(_winrate_table(p.winrate))
    parts += [_img(c, path, out) for c, path in figs["bars"]]
    if figs["curves"]:
        parts.append("<h3>Learning curves</h3>")
        parts += [_img(c, path, out) for c, path in figs["curves"]]
    if figs["proxy"]:
        parts.append("<h3>Proxy reward vs oracle</h3><p>Each point is a model (base first). A path that moves right (the judges "
                     "score higher) without moving up (the oracle does not) is reward hacking.</p>")
        parts += [_img(c, path, out) for c, path in figs["proxy"]]
    galleries = list(view.galleries)
    if not galleries:
        for p in view.pairings:
            if p.base is not None and p.tuned is not None:
                galleries.append((f"{p.label}: base beside tuned (same prompts and seeds)", [Column("base", p.base), Column(p.label.removesuffix(" vs base"), p.tuned)]))
        if not galleries and view.sets:
            galleries.append(("samples", [Column(s.label, s.metadata) for s in view.sets[:1]]))
    for title, columns in galleries:
        parts.append(_gallery(title, columns, view.pairings))
    if view.config:
        parts.append(f"<details><summary>config.yaml</summary><pre>{_e(view.config)}</pre></details>")
    parts.append("</section>")
    return "\n".join(x for x in parts if x)


def _overview(views: list[RunView]) -> str:
    """Several runs: one row each with the first oracle comparison's overall change."""
    rows = []
    for n, v in enumerate(views):
        d = next((c.overall for p in v.pairings for c in p.comparisons if c.metric == ORACLE), None)
        cells = ("<td>-</td>" * 4) if d is None else (f'<td class="num base">{d.base:.3f}</td><td class="num tuned">{d.tuned:.3f}</td>'
                                                      f'<td class="num change">{d.change:+.3f}</td><td>[{d.ci_low:+.3f}, {d.ci_high:+.3f}] {_e(d.verdict)}</td>')
        rows.append(f'<tr><td><a href="#run{n}">{_e(v.path)}</a></td><td>{_e(v.kind)}</td><td>{_e(v.status or "complete")}</td>{cells}</tr>')
    return ('<table class="overview"><caption>runs in this report: oracle overall, base -> tuned (first comparison)</caption>'
            "<tr><th>run</th><th>kind</th><th>status</th><th>base</th><th>tuned</th><th>change</th><th>95% CI</th></tr>" + "".join(rows) + "</table>")


def _check_out(out: Path, runs: list[Path]) -> None:
    page = out / REPORT_HTML
    if page.is_file() and GENERATOR_TAG not in page.read_text(errors="replace")[:2000]:
        raise RewardiffError(f"report: {page} exists and is not a rewardiff report; choose another --out")
    if out.exists() and not out.is_dir():
        raise RewardiffError(f"report: --out {out} is a file; give a folder")


def write_report(runs: list[Path], out: Path, on_note: Callable[[str], None] | None = None) -> Path:
    """Write OUT/index.html (+ OUT/figures/*.png) for one or several runs; returns the page's path.

    Every run is read before anything is written, so a folder that is not a run refuses the
    whole report with one clear line. A run still in progress is reported as far as it got,
    marked so on the page and through `on_note`."""
    if not runs:
        raise RewardiffError("report: give at least one run folder")
    out = Path(out)
    views = [collect_run(r) for r in runs]
    _check_out(out, [v.path for v in views])
    for v in views:
        if v.status and on_note is not None:
            on_note(f"{v.path}: {v.status}; reported as far as it got")
    body = ([_overview(views)] if len(views) > 1 else []) + [_run_section(n, v, out) for n, v in enumerate(views)]
    title = "rewardiff report: " + ", ".join(v.path.name or str(v.path) for v in views)
    subtitle = f"written {time.strftime('%Y-%m-%d %H:%M:%S')} from " + ", ".join(_e(v.path) for v in views)
    page = Template(TEMPLATE.read_text()).substitute(title=_e(title), subtitle=subtitle, body="\n".join(body))
    return atomic_write_text(out / REPORT_HTML, page)
