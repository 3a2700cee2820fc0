"""The CCSR self-rewarding loop, in rounds (`rewardiff self-reward`).

Round k (folder RUN/round_k):
  1. prompts      a writer conditioned on the classes -> prompts.txt (+ prompts.json: counts of
                  written / rejected lines by reason)
  2. candidates   N images per prompt through `run_generation` (the code of `rewardiff generate`;
                  seeds recorded), with round k-1's LoRA (round 1: the base model)
  3. judge        captioner + detector (+ CLIP) -> judgements.jsonl, selected.jsonl (best per
                  prompt), pairs.jsonl (best vs worst), judge.json (counts)
  4. train        LoRA SFT on the selected set, or Diffusion-DPO on the pairs, starting from round
                  k-1's LoRA -> train/lora/lora.safetensors (the model of round k)
  5. evaluate     held-out prompts at each LoRA scale: images, oracle table (shapes world;
                  EVALUATION ONLY, never fed back), CLIP win rate against the base, and the
                  judge's own mean score (to see a round where the judge rises and the oracle falls)
RUN/base_eval holds the base model's evaluation; RUN/summary.{json,md} and RUN/plots/*.png the
per-round tables. Every phase writes its outputs atomically and its last file marks it done, so a
killed run started again continues where it stopped without redoing finished work.

Under `accelerate launch` (N processes) the main process claims the run folder and writes every
file; each phase ends with a barrier before the others read what it wrote. The candidates and the
evaluation images are `generate`'s multi-process run, the judging (round and evaluation) gives
each process its part of the batches, training shards every batch (`train_lora`); the prompt
writer, the selection, the oracle, the comparisons and the win rate run on the main process. The
batches are one process's throughout, so N processes select, pair and train on what one does.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from rewardiff.algorithms.sft import SFTConfig, TrainExample, train_lora
from rewardiff.errors import RewardiffError
from rewardiff.generation import METADATA, GenerateConfig, SamplingSettings, is_finite_number, load_metadata, run_generation, validate_sampling
from rewardiff.io_utils import atomic_write_text, load_image, read_jsonl, write_json
from rewardiff.judges.prompt_writer import PromptWriterConfig, build_writer, check_shapes_classes, shapes_validator, write_prompts
from rewardiff.judges.self_judge import JudgeConfig, SelfJudge, check_pairing, judge_rows, mean_components, select
from rewardiff.models.lora_formats import check_lora_format
from rewardiff.runtime import Runtime, is_main_process


@dataclass
class EvalSettings:
    prompts: str = "shapes:eval"  # held-out prompts the loop never writes (the evaluation protocol: >= 320 images per category)
    num_images: int = 4  # images per prompt for sources other than the protocol sets (per-(prompt, image) seeds)
    seed: int = 0
    scales: list[float] = field(default_factory=lambda: [0.4, 0.7, 1.0])  # LoRA scales evaluated after the last round (the paper: 0.4, 0.7)
    round_scales: list[float] = field(default_factory=lambda: [1.0])  # LoRA scales evaluated after the other rounds
    winrate_reward: str = "clip@shapes"  # reward of the win rate ('' = skip)
    oracle: bool = True  # shapes world: the oracle's per-category table (evaluation only)
    judge: bool = True  # the self-judge's mean score on the evaluation images
    base_dir: str = ""  # folder of the base model's evaluation ('' = RUN/base_eval); the demo shares its own


@dataclass
class SelfRewardConfig:
    model: str = "shapes"  # generator: 'shapes', a pipeline folder or a hub id
    classes: list[str] = field(default_factory=lambda: ["circle", "square", "triangle"])  # conditioned classes
    rounds: int = 2  # self-reward rounds
    prompts_per_round: int = 64  # valid prompts asked of the writer per round
    candidates: int = 10  # images per prompt (the paper: 10)
    seed: int = 0  # seeds prompts, candidates (round k: seed + 1000 k) and training
    generation_scale: float = 1.0  # LoRA scale of round k's model when it generates round k+1's candidates
    candidate_guidance: float | None = None  # CFG scale of the candidates (None = sampling.guidance); fine-tuning on
    # strongly guided samples and sampling them with guidance again compounds it, so a lower value can help
    batch_size: int = 64  # images per pipeline call
    device: str = "cpu"
    out: str = "runs/self-reward"
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    writer: PromptWriterConfig = field(default_factory=PromptWriterConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    train: SFTConfig = field(default_factory=SFTConfig)
    eval: EvalSettings = field(default_factory=EvalSettings)


class _Stop(Exception):
    """Raised by `stop_after` (tests simulate a kill between phases)."""


@dataclass
class _Context:
    cfg: SelfRewardConfig
    run: Path
    progress: bool
    runtime: Runtime  # the run's processes (one without accelerate launch)
    judge: SelfJudge | None = None
    scorer: object | None = None

    def self_judge(self) -> SelfJudge:
        if self.judge is None:
            self.judge = SelfJudge(self.cfg.judge, device=str(self.runtime.device))
        return self.judge

    def judge_rows(self, rows: list[dict], root: Path, desc: str) -> list[dict]:
        """Every row judged by the run's judge, shared out over the run's processes."""
        return judge_rows(self.self_judge(), rows, root, self.cfg.judge.batch_size, self.progress and self.runtime.is_main, desc, self.runtime)


def _say(text: str) -> None:
    if is_main_process():  # one line per event, not one per process
        print(f"[self-reward] {text}", flush=True)


def _progress_line(text: str) -> None:
    if is_main_process():
        print(text, flush=True)


def _timed(record: dict, name: str):
    """Context manager adding wall and CPU seconds of a phase to `record`."""

    class _T:
        def __enter__(self):
            self.w, self.c = time.perf_counter(), time.process_time()

        def __exit__(self, *exc):
            record[name] = {"wall_s": round(time.perf_counter() - self.w, 1), "cpu_s": round(time.process_time() - self.c, 1)}

    return _T()


def _gen(ctx: _Context, prompts: str, num_images: int, seed: int, out: Path, lora: str | None, guidance: float | None = None) -> Path:
    cfg = ctx.cfg
    sampling = cfg.sampling if guidance is None else replace(cfg.sampling, guidance=guidance)
    gen = GenerateConfig(model=cfg.model, prompts=prompts, num_images=num_images, seed=seed, batch_size=cfg.batch_size,
                         out=str(out), loras=[lora] if lora else [], device=cfg.device, sampling=sampling)
    meta = run_generation(gen, progress=ctx.progress, runtime=ctx.runtime)
    ctx.runtime.wait()  # the main process has let go of the folder's lock (readers refuse a locked folder)
    return meta


# ---- phases ------------------------------------------------------------------------------------


def phase_prompts(ctx: _Context, k: int, folder: Path) -> list[str]:
    """Round k's prompts, written by the main process (one writer: one prompt set)."""
    done = folder / "prompts.json"
    if ctx.runtime.is_main and not done.is_file():
        _write_prompts(ctx, k, folder)
    ctx.runtime.wait()  # prompts.txt and prompts.json are written
    return json.loads(done.read_text())["prompts"]


def _write_prompts(ctx: _Context, k: int, folder: Path) -> None:
    cfg = ctx.cfg
    validate = None
    from rewardiff.models.pipeline import resolve_model

    if resolve_model(cfg.model).is_shapes:
        from rewardiff.shapes.prompts import CATEGORIES, split_prompts

        validate = shapes_validator({p for c in CATEGORIES for p in split_prompts(c)[1]})
    parsed = write_prompts(build_writer(cfg.writer), list(cfg.classes), cfg.prompts_per_round, cfg.seed * 100 + k, cfg.writer, validate)
    if not parsed.prompts:
        raise RewardiffError(f"round {k}: the prompt writer produced no valid prompt for classes {cfg.classes} (rejected: {dict(parsed.rejected)})")
    atomic_write_text(folder / "prompts.txt", "\n".join(parsed.prompts) + "\n")
    write_json(folder / "prompts.json", {"classes": list(cfg.classes), "written": len(parsed.prompts), "rejected": dict(parsed.rejected),
                                         "prompts": parsed.prompts})
    _say(f"round {k}: prompts written {len(parsed.prompts)}, rejected {parsed.num_rejected} {dict(parsed.rejected)}")


def phase_judge(ctx: _Context, k: int, folder: Path, meta: Path) -> dict:
    """Judge round k's candidates (every process its part), select and pair them (main process)."""
    done = folder / "judge.json"
    if not done.is_file():  # every process looks before the main one can write it: that waits for the judging, which all share
        rows, root = load_metadata(meta)
        judged = ctx.judge_rows(rows, root, f"judge r{k}")
        if ctx.runtime.is_main:
            _write_selection(ctx, k, folder, judged)
    ctx.runtime.wait()  # judgements, selection, pairs and judge.json are written
    return json.loads(done.read_text())


def _write_selection(ctx: _Context, k: int, folder: Path, judged: list[dict]) -> None:
    jc = ctx.cfg.judge
    selected, pairs = select(judged, jc.keep_per_prompt, jc.min_pair_gap, jc.pairing, jc.max_pairs_per_prompt)
    for name, items in (("judgements", judged), ("selected", selected), ("pairs", pairs)):
        atomic_write_text(folder / f"{name}.jsonl", "".join(json.dumps(r) + "\n" for r in items))
    summary = {"candidates": len(judged), "kept": sum(j["kept"] for j in judged), "selected": len(selected), "pairs": len(pairs),
               "candidates_mean": mean_components(judged), "selected_mean": mean_components(selected)}
    write_json(folder / "judge.json", summary)
    _say(f"round {k}: candidates {len(judged)}, kept by thresholds {summary['kept']}, selected {len(selected)}, pairs {len(pairs)}; "
         f"judged score mean {summary['candidates_mean'].get('score', 0):.3f} -> selected {summary['selected_mean'].get('score', 0):.3f}")


def training_examples(loss: str, rows: list[dict], root: Path) -> list[TrainExample]:
    """A round's fine-tuning data: `rows` are the selected images (SFT) or the chosen/rejected
    pairs (DPO) of `select`, image paths relative to the candidates folder `root`."""
    if loss == "dpo":
        return [TrainExample(p["prompt"], load_image(root / p["chosen"]), load_image(root / p["rejected"])) for p in rows]
    return [TrainExample(s["prompt"], load_image(root / s["image"])) for s in rows]


def phase_train(ctx: _Context, k: int, folder: Path, root: Path, prev_lora: str | None) -> str:
    from rewardiff.models.pipeline import load_pipeline, resolve_dtype

    cfg = ctx.cfg
    final = folder / "train" / "lora" / "lora.safetensors"
    if final.is_file():  # written by the main process at the end of train_lora, after every process looked
        return str(final)
    rows = read_jsonl(folder / ("pairs.jsonl" if cfg.train.loss == "dpo" else "selected.jsonl"))
    examples = training_examples(cfg.train.loss, list(rows), root)
    pipe, _ = load_pipeline(cfg.model, device=str(ctx.runtime.device), dtype=resolve_dtype("float32", cfg.device))
    train = SFTConfig(**{**asdict(cfg.train), "seed": cfg.train.seed + k})
    # the run's processes with training's precision, and a fresh fp16 loss scale every round
    runtime = Runtime(cfg.device, train.mixed_precision, train.allow_tf32)
    return str(train_lora(pipe, examples, train, folder / "train", init_lora=prev_lora, progress=ctx.progress, runtime=runtime))


def evaluate_model(ctx: _Context, folder: Path, lora: str | None, base_meta: Path | None) -> dict:
    """Generate the evaluation set (with `lora`, 'path:scale'), then oracle table, win rate vs
    base and the judge's mean score; FOLDER/eval.json marks it done."""
    done = folder / "eval.json"
    if done.is_file():  # written by the main process after the generation all processes share: every one looked before
        return json.loads(done.read_text())
    ev = ctx.cfg.eval
    meta = _gen(ctx, ev.prompts, ev.num_images, ev.seed, folder, lora)
    judged = mean_components(ctx.judge_rows(*load_metadata(meta), "judge eval")) if ev.judge else None
    if ctx.runtime.is_main:
        _write_eval(ctx, folder, lora, base_meta, meta, judged)
    ctx.runtime.wait()  # eval.json is written
    return json.loads(done.read_text())


def _write_eval(ctx: _Context, folder: Path, lora: str | None, base_meta: Path | None, meta: Path, judged: dict | None) -> None:
    """The main process's part of an evaluation: oracle table, comparison and win rate against
    the base, and eval.json with the judge's mean score."""
    ev = ctx.cfg.eval
    device = str(ctx.runtime.device)
    result: dict = {"lora": lora, "metadata": str(meta)}
    if ev.oracle:
        from rewardiff.eval.oracle_eval import evaluate_with_oracle  # evaluation only

        rep, _ = evaluate_with_oracle(meta)
        result["oracle"] = rep.to_dict()
        if base_meta is not None:
            from rewardiff.eval.compare import compare_runs

            comparisons, _ = compare_runs(base_meta, meta, out=folder / "compare", progress=ctx.progress)
            result["compare"] = comparisons[0].to_dict()
    if judged is not None:
        result["judge"] = judged
    if ev.winrate_reward and base_meta is not None:
        from rewardiff.eval.winrate import evaluate_winrate
        from rewardiff.rewards.registry import build_rewards

        if ctx.scorer is None:
            ctx.scorer = build_rewards([ev.winrate_reward], device=device)
        wr, _ = evaluate_winrate(base_meta, meta, ev.winrate_reward, out=folder / "winrate", device=device, progress=ctx.progress, scorer=ctx.scorer)
        result["winrate"] = wr.to_dict()
    write_json(folder / "eval.json", result)


def _base_dir(cfg: SelfRewardConfig) -> Path:
    return Path(cfg.eval.base_dir) if cfg.eval.base_dir else Path(cfg.out) / "base_eval"


def _scale_name(scale: float) -> str:
    return f"scale_{scale:g}"


# ---- the run -----------------------------------------------------------------------------------


def check_settings(cfg: SelfRewardConfig) -> None:
    """Refuse, before the first phase writes anything, classes the world cannot draw and sampling
    settings that cannot give images (each error names the field or the class)."""
    from rewardiff.models.pipeline import check_trainable, resolve_model

    check_trainable(cfg.model)  # the train phase comes after generating and judging: refuse now
    if not cfg.classes or not all(isinstance(c, str) and c.strip() for c in cfg.classes):
        raise RewardiffError(f"classes: give at least one non-empty class (e.g. --classes circle,triangle), got {cfg.classes}")
    if cfg.writer.backend == "shapes" or resolve_model(cfg.model).is_shapes:
        check_shapes_classes(list(cfg.classes))
    validate_sampling(cfg.sampling, "sampling")
    g = cfg.candidate_guidance
    if g is not None and not (is_finite_number(g) and g >= 0):
        raise RewardiffError(f"candidate_guidance must be empty (sampling.guidance) or a finite number >= 0, got {g!r}")


def run_self_reward(cfg: SelfRewardConfig, progress: bool = True, stop_after: str | None = None) -> dict:
    """Run (or resume) every round; returns the summary. `stop_after` 'K:PHASE' stops after that
    phase of round K (PHASE: prompts, candidates, judge, train, eval), as a kill would."""
    if cfg.rounds < 1 or cfg.candidates < 1 or cfg.prompts_per_round < 1:
        raise RewardiffError("rounds, candidates and prompts_per_round must be at least 1")
    if cfg.candidates < 2 and cfg.train.loss == "dpo":
        raise RewardiffError("DPO needs at least 2 candidates per prompt (best vs worst)")
    check_pairing(cfg.judge.pairing, cfg.judge.max_pairs_per_prompt)  # fails now, not after the candidates
    check_lora_format(cfg.train.lora_format)
    check_settings(cfg)
    from rewardiff.models.pipeline import resolve_model
    from rewardiff.run_folder import claim_run_folder_main, settings_of

    resolve_model(cfg.model)  # a missing model folder fails before the run folder is claimed
    runtime = Runtime(cfg.device)
    with claim_run_folder_main(cfg.out, "self-reward", settings_of(cfg, RESUME_FREE), cfg, runtime.is_main) as folder:
        folder.commit()
        runtime.wait()  # the main process owns the folder (owner checked, interrupted writes recovered)
        return _run_in(folder.path, cfg, progress, stop_after, runtime)


RESUME_FREE = ("out", "rounds", "device", "batch_size")
"""Fields a resumed run may change (more rounds, another device or batch size)."""


def _run_in(run: Path, cfg: SelfRewardConfig, progress: bool, stop_after: str | None, runtime: Runtime) -> dict:
    """run_self_reward's rounds, in the claimed run folder (every process; the main one writes)."""
    ctx = _Context(cfg, run, progress, runtime)
    main = runtime.is_main
    timings_path = run / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}

    def stop(k: int, phase: str) -> None:
        if main:
            write_json(timings_path, timings)
        if stop_after == f"{k}:{phase}":
            raise _Stop(f"stopped after round {k} {phase}")

    def base_meta() -> Path:
        """The base model's evaluation, made the first time a round is evaluated."""
        if not (_base_dir(cfg) / "eval.json").is_file():
            _say("evaluating the base model")
        with _timed(timings, "base_eval") if "base_eval" not in timings else _NoTimer():
            evaluate_model(ctx, _base_dir(cfg), None, None)
        return _base_dir(cfg) / METADATA  # not the path recorded in eval.json: a run folder may be moved

    from rewardiff.progress import PhaseClock

    def has_eval(k: int) -> bool:
        return bool(cfg.eval.scales if k == cfg.rounds else cfg.eval.round_scales)

    clock = PhaseClock("self-reward", [f"round {k} {p}" for k in range(1, cfg.rounds + 1)
                                       for p in ("prompts", "candidates", "judge", "train", "eval") if p != "eval" or has_eval(k)], say=_progress_line)
    prev_lora: str | None = None
    try:
        for k in range(1, cfg.rounds + 1):
            folder = run / f"round_{k}"
            if main:
                folder.mkdir(exist_ok=True)
            t = timings.setdefault(f"round_{k}", {})
            clock.start(f"round {k} prompts")
            with _timed(t, "prompts") if "prompts" not in t else _NoTimer():
                phase_prompts(ctx, k, folder)
            stop(k, "prompts")
            clock.start(f"round {k} candidates")
            with _timed(t, "candidates") if "candidates" not in t else _NoTimer():
                lora = f"{prev_lora}:{cfg.generation_scale:g}" if prev_lora else None
                meta = _gen(ctx, str(folder / "prompts.txt"), cfg.candidates, cfg.seed + 1000 * k, folder / "candidates", lora, cfg.candidate_guidance)
            stop(k, "candidates")
            clock.start(f"round {k} judge")
            with _timed(t, "judge") if "judge" not in t else _NoTimer():
                phase_judge(ctx, k, folder, meta)
            stop(k, "judge")
            clock.start(f"round {k} train")
            with _timed(t, "train") if "train" not in t else _NoTimer():
                prev_lora = phase_train(ctx, k, folder, meta.parent, prev_lora)
            stop(k, "train")
            scales = cfg.eval.scales if k == cfg.rounds else cfg.eval.round_scales
            if scales:
                clock.start(f"round {k} eval")
                with _timed(t, "eval") if "eval" not in t else _NoTimer():
                    for scale in scales:
                        _say(f"round {k}: evaluating at LoRA scale {scale:g}")
                        evaluate_model(ctx, folder / "eval" / _scale_name(scale), f"{prev_lora}:{scale:g}", base_meta())
            stop(k, "eval")
    except _Stop as e:
        _say(str(e))
        return {}
    clock.done()
    if main:
        write_json(timings_path, timings)
    summary = summarize(run, cfg) if main else None
    runtime.wait()  # summary.json is written
    _say(f"summary: {run / 'summary.md'}")
    return summary if summary is not None else json.loads((run / "summary.json").read_text())


class _NoTimer:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# ---- tables and plots --------------------------------------------------------------------------


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def summarize(run: Path, cfg: SelfRewardConfig) -> dict:
    """RUN/summary.json + summary.md (per round, per scale: oracle, win rate, judge) + plots."""
    from rewardiff.eval.plots import RATE, bar_plot, line_plot

    base = _read(_base_dir(cfg) / "eval.json")
    rounds = []
    for k in range(1, cfg.rounds + 1):
        folder = run / f"round_{k}"
        entry = {"round": k, "prompts": _read(folder / "prompts.json") or {}, "judge": _read(folder / "judge.json") or {}, "eval": {}}
        entry["prompts"] = {key: v for key, v in entry["prompts"].items() if key != "prompts"}
        for scale in dict.fromkeys([*cfg.eval.round_scales, *cfg.eval.scales]):
            ev = _read(folder / "eval" / _scale_name(scale) / "eval.json")
            if ev:
                entry["eval"][f"{scale:g}"] = ev
        rounds.append(entry)
    timings = _read(run / "timings.json") or {}
    summary = {"base": base, "rounds": rounds, "timings": timings}
    write_json(run / "summary.json", summary)
    atomic_write_text(run / "summary.md", summary_markdown(summary) + "\n")
    series: dict[str, list[float]] = {}
    if base and "oracle" in base:
        for scale in dict.fromkeys([*cfg.eval.round_scales, *cfg.eval.scales]):
            vals = [base["oracle"]["overall"]] + [r["eval"].get(f"{scale:g}", {}).get("oracle", {}).get("overall", float("nan")) for r in rounds]
            series[f"oracle @{scale:g}"] = vals
    if series:
        line_plot(series, run / "plots" / "rounds.png", "held-out oracle overall per round (round 0 = base)", "round", "oracle overall", ylim=RATE)
    if base and "judge" in base:
        judged = {f"judge @{s:g}": [base["judge"]["score"]] + [r["eval"].get(f"{s:g}", {}).get("judge", {}).get("score", float("nan")) for r in rounds]
                  for s in dict.fromkeys([*cfg.eval.round_scales, *cfg.eval.scales])}
        line_plot(judged, run / "plots" / "judge_rounds.png", "held-out mean judged score per round (round 0 = base)", "round", "judged score")
    last = rounds[-1]["eval"] if rounds else {}
    bars = {f"scale {s}": {"win": ev["winrate"]["wins"], "tie": ev["winrate"]["ties"], "loss": ev["winrate"]["losses"]} for s, ev in last.items() if "winrate" in ev}
    if bars:
        bar_plot(bars, run / "plots" / "winrate.png", f"round {len(rounds)} vs base: CLIP-score wins / ties / losses", "pairs")
    return summary


def _cat_cells(oracle: dict | None) -> list[str]:
    if not oracle:
        return ["-"] * 5
    cats = oracle.get("categories", {})
    return [f"{cats[c]['rate']:.3f}" if c in cats else "-" for c in ("single", "pair", "counting", "position")] + [f"**{oracle['overall']:.3f}**"]


def summary_markdown(summary: dict) -> str:
    base = summary["base"]
    lines = ["| model | LoRA scale | single | pair | counting | position | overall | judge score | CLIP win rate [95% CI] (W/T/L) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    if base:
        lines.append("| base | - | " + " | ".join(_cat_cells(base.get("oracle"))) + f" | {base.get('judge', {}).get('score', float('nan')):.3f} | - |")
    for r in summary["rounds"]:
        for scale, ev in r["eval"].items():
            wr = ev.get("winrate")
            wcell = f"{wr['win_rate']:.3f} [{wr['ci_low']:.3f}, {wr['ci_high']:.3f}] ({wr['wins']}/{wr['ties']}/{wr['losses']})" if wr else "-"
            lines.append(f"| round {r['round']} | {scale} | " + " | ".join(_cat_cells(ev.get("oracle"))) + f" | {ev.get('judge', {}).get('score', float('nan')):.3f} | {wcell} |")
    lines += ["", "| round | prompts written | rejected | candidates | kept | selected | pairs | judged score (all -> selected) |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in summary["rounds"]:
        p, j = r["prompts"], r["judge"]
        if j:
            lines.append(f"| {r['round']} | {p.get('written', '-')} | {sum(p.get('rejected', {}).values())} | {j['candidates']} | {j['kept']} | {j['selected']} | {j['pairs']} | "
                         f"{j['candidates_mean'].get('score', 0):.3f} -> {j['selected_mean'].get('score', 0):.3f} |")
    return "\n".join(lines)
