"""Best-of-N distillation (`rewardiff train sft`): LoRA SFT on a generated set the judges picked.

`generate --best-of N --judge SPEC` buys a better image with N samples at every inference; RAFT
(Dong et al. 2023) and the CCSR selection pay that price once: fine-tune on the judges' picks and
sample once afterwards. This module is that second half, for any generated set:

  1. data      the rows of one or more `metadata.jsonl` folders (e.g. best-of-N on training prompts)
  2. filter    the self-judge (captioner + detector) re-judges every image; an image is kept only
               if its components pass `judge.thresholds` (the CCSR image filter: exact counts, the
               asked relation) and its score is at least `judge.min_score`
  3. balance   each shapes category gets the same weight in the training draws (replicated
               indices), so a category with many kept images (single objects pass most often)
               cannot teach every prompt to draw one object; prompts outside the shapes world
               form one group
  4. train     `algorithms.sft.train_lora` (resumable) -> OUT/lora/lora.safetensors

With `train.loss: dpo` the data must hold pairs (`generate --best-of N --keep-worst`: each pick
with its lowest-scored candidate) and Diffusion-DPO trains on (pick, worst): a pair is kept when
the pick passes the filter and out-scores the worst by `judge.min_pair_gap`. SFT on a model's own
picks also fits the texture of its own samples (the loss on fresh picks falls as much as on the
training picks while the oracle falls); in DPO's loss what the pick and the worst share cancels,
so only what the judges told apart (counts, colours, relations) drives the update.

The oracle is never read: what is kept is decided by the judges alone. OUT/data.json records how
many images each category had and kept.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from rewardiff.algorithms.sft import SFTConfig, TrainExample, train_lora, validate_sft_config
from rewardiff.errors import RewardiffError
from rewardiff.generation import check_prompts_for_model, is_finite_number, load_metadata
from rewardiff.io_utils import load_image, write_json
from rewardiff.judges.self_judge import JudgeConfig, SelfJudge, judge_rows
from rewardiff.runtime import Runtime


RESUME_FREE_FIELDS = ("out", "device", "train.steps", "train.checkpoint_every")
"""Settings a resumed run may change (run longer, elsewhere)."""


@dataclass
class DistillConfig:
    model: str = "shapes"  # the generator the LoRA is trained on: 'shapes', a pipeline folder or a hub id
    data: list[str] = field(default_factory=list)  # generated-set folders (each with metadata.jsonl), e.g. best-of-N picks
    filter: bool = True  # re-judge every image and keep those passing judge.thresholds / judge.min_score
    balance: bool = True  # equal weight per shapes category in the training draws
    device: str = "cpu"
    out: str = "runs/distill"
    judge: JudgeConfig = field(default_factory=JudgeConfig)  # the image filter (the CCSR loop's judge settings)
    train: SFTConfig = field(default_factory=SFTConfig)
    init_lora: str | None = None  # continue this LoRA (an online round: data generated with it); DPO's reference stays the base model


@dataclass
class DistillData:
    examples: list[TrainExample]  # kept images, replicated per category when balancing
    counts: dict[str, dict[str, int]]  # category -> {"images": n, "kept": k, "draw_weight": replicas}


def _category(prompt: str) -> str:
    from rewardiff.eval.compare import category_of

    return category_of(prompt)


def balanced_order(categories: list[str]) -> tuple[list[int], dict[str, int]]:
    """Indices into `categories` in which each category appears about equally often: every item
    of category c is repeated round(max_count / count_c) times. Returns (indices, replicas)."""
    counts = Counter(categories)
    if not counts:
        return [], {}
    top = max(counts.values())
    replicas = {c: max(1, round(top / n)) for c, n in counts.items()}
    return [i for i, c in enumerate(categories) for _ in range(replicas[c])], replicas


def load_distill_data(cfg: DistillConfig, judge: SelfJudge | None, progress: bool = True, runtime: Runtime | None = None) -> DistillData:
    """The kept (prompt, image) examples of cfg.data, judged by `judge` when cfg.filter is set.
    With a `runtime` (accelerate launch) each process judges its part of the batches and every
    process gets every judgement, so all keep the same examples; without one, this process judges all."""
    if not cfg.data:
        raise RewardiffError("train sft: no data; give --data FOLDER (a generated set with metadata.jsonl), repeatable")
    if cfg.filter and judge is None:
        raise RewardiffError("train sft: filter is on but no judge was given")
    pairs = cfg.train.loss == "dpo"
    rows: list[dict] = []
    roots: list[Path] = []
    kept_flags: list[bool] = []
    for folder in cfg.data:
        found, root = load_metadata(folder)
        rows.extend(found)
        roots.extend([root] * len(found))
        if not cfg.filter:
            kept_flags.extend([True] * len(found))
            continue
        chosen = judge_rows(judge, found, root, cfg.judge.batch_size, progress, "judge data", runtime)
        if not pairs:
            kept_flags.extend(bool(j["kept"]) for j in chosen)
            continue
        worst = judge_rows(judge, [{**r, "image": r["rejected_image"]} for r in found], root, cfg.judge.batch_size, progress, "judge worst", runtime)
        kept_flags.extend(bool(c["kept"]) and c["score"] - w["score"] >= cfg.judge.min_pair_gap for c, w in zip(chosen, worst))
    categories = [_category(r["prompt"]) for r in rows]
    kept = [i for i, k in enumerate(kept_flags) if k]
    if not kept:
        what = "pair (pick passing the filter and beating its worst by judge.min_pair_gap)" if pairs else "image"
        raise RewardiffError(f"train sft: the judge kept no {what} of the data (lower judge.thresholds or generate more)")
    kept_categories = [categories[i] for i in kept]
    order, replicas = balanced_order(kept_categories) if cfg.balance else (list(range(len(kept))), Counter())
    images = {i: load_image(roots[i] / rows[i]["image"]) for i in kept}
    rejected = {i: load_image(roots[i] / rows[i]["rejected_image"]) for i in kept} if pairs else {}
    examples = [TrainExample(rows[kept[j]]["prompt"], images[kept[j]], rejected.get(kept[j])) for j in order]
    total = Counter(categories)
    kept_count = Counter(kept_categories)
    counts = {c: {"images": total[c], "kept": kept_count[c], "draw_weight": int(replicas.get(c, 1)) if cfg.balance else 1}
              for c in sorted(total)}
    return DistillData(examples, counts)


def check_distill_config(cfg: DistillConfig) -> None:
    """Refuse, before a model is loaded or anything written, data that is missing or drawn for
    another world, an output folder inside a data folder, and bad training or filter settings
    (the folder's owner and lock are `run_folder`'s, checked when the run claims it)."""
    if not cfg.data:
        raise RewardiffError("train sft: no data; give --data FOLDER (a generated set with metadata.jsonl), repeatable")
    out = Path(cfg.out).resolve()
    for folder in cfg.data:
        rows, root = load_metadata(folder)
        if out == root.resolve() or root.resolve() in out.parents:
            raise RewardiffError(f"train sft: --out {cfg.out} lies inside the data folder {folder}; choose another --out")
        check_prompts_for_model(sorted({r["prompt"] for r in rows}), cfg.model)
        if cfg.train.loss == "dpo":
            unpaired = next((r for r in rows if "rejected_image" not in r), None)
            if unpaired is not None:
                raise RewardiffError(f"train sft: train.loss=dpo needs pairs, but {folder} has none for {unpaired['image']} "
                                     "(generate it with --best-of N --keep-worst)")
    validate_sft_config(cfg.train)
    if cfg.init_lora is not None and not Path(cfg.init_lora).is_file():
        raise RewardiffError(f"train sft: init_lora {cfg.init_lora} is not a file (a LoRA .safetensors to continue)")
    bad = {k: v for k, v in cfg.judge.thresholds.items() if not is_finite_number(v)}
    if bad:
        raise RewardiffError(f"judge.thresholds must be finite numbers, got {bad}")


def run_distill(cfg: DistillConfig, pipe, progress: bool = True, runtime: Runtime | None = None) -> Path:
    """Filter, balance and fine-tune; returns OUT/lora/lora.safetensors (resumes a killed run).

    Under `accelerate launch` (`runtime`, default from cfg) each process judges its part of the
    data (every process then holds every judgement) and trains on its shard of each batch; the
    main process owns and writes the run folder."""
    from rewardiff.run_folder import claim_run_folder_main, settings_of

    check_distill_config(cfg)
    runtime = runtime or Runtime(cfg.device, cfg.train.mixed_precision, cfg.train.allow_tf32)
    main = runtime.is_main
    with claim_run_folder_main(cfg.out, "train sft", settings_of(cfg, RESUME_FREE_FIELDS), cfg, main) as folder:
        judge = SelfJudge(cfg.judge, device=str(runtime.device)) if cfg.filter else None
        data = load_distill_data(cfg, judge, progress and main, runtime)
        folder.commit()
        runtime.wait()  # the main process has checked the folder's owner and recovered its writes
        out = folder.path
        if main:
            write_json(out / "data.json", {"sources": cfg.data, "filter": cfg.filter, "balance": cfg.balance, "categories": data.counts,
                                           "examples": len(data.examples)})
            lines = ", ".join(f"{c} {v['kept']}/{v['images']} (x{v['draw_weight']})" for c, v in data.counts.items())
            print(f"[train sft] kept images by category: {lines}", flush=True)
        pipe.to(runtime.device)
        return train_lora(pipe, data.examples, cfg.train, out, init_lora=cfg.init_lora, progress=progress, runtime=runtime)
