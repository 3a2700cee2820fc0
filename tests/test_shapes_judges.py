"""The shapes world's judges: tiny training runs load through the real rewards; resume is exact;
NMS is exact; the judges never touch the oracle; the evaluation runs end to end."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

from rewardiff.rewards.detection import DetectionConfidence  # noqa: E402
from rewardiff.shapes.judges import captioner as cap_mod  # noqa: E402
from rewardiff.shapes.judges import common, detector as det_mod  # noqa: E402
from rewardiff.shapes.judges.captioner import CaptionerArch, CaptionerJudgeConfig  # noqa: E402
from rewardiff.shapes.judges.clip import ClipArch, ClipJudgeConfig, train_clip_judge  # noqa: E402
from rewardiff.shapes.judges.common import LoopConfig  # noqa: E402
from rewardiff.shapes.judges.detector import DetectorArch, DetectorJudgeConfig, box_iou, nms  # noqa: E402
from rewardiff.shapes.judges.negatives import hard_negatives, semantic_key  # noqa: E402
from rewardiff.shapes.judges.train import TrainJudgesConfig, train_judges  # noqa: E402
from rewardiff.shapes.prompts import parse_prompt  # noqa: E402

JUDGES_DIR = Path(__file__).resolve().parent.parent / "src" / "rewardiff" / "shapes" / "judges"
TINY = dict(patch_size=8, vision_width=16, vision_layers=1, text_width=16, text_layers=1, heads=2, mlp_ratio=2)


def _tiny_loop(steps: int = 2, batch: int = 8) -> LoopConfig:
    return LoopConfig(steps=steps, batch_size=batch, warmup_steps=1, checkpoint_every=1, log_every=1)


def tiny_config(out: Path, steps: int = 2) -> TrainJudgesConfig:
    return TrainJudgesConfig(
        out=str(out), seed=0,
        clip=ClipJudgeConfig(arch=ClipArch(**TINY, projection_dim=16), loop=_tiny_loop(steps), negatives_per_image=2),
        detector=DetectorJudgeConfig(arch=DetectorArch(**TINY), loop=_tiny_loop(steps)),
        captioner=CaptionerJudgeConfig(arch=CaptionerArch(**TINY), loop=_tiny_loop(steps)),
    )


@pytest.fixture(scope="module")
def tiny_judges(tmp_path_factory) -> dict[str, Path]:
    return train_judges(tiny_config(tmp_path_factory.mktemp("judges")), progress=False)


# ---- the oracle stays out ---------------------------------------------------------------------


def test_judges_modules_never_import_the_oracle():
    for path in JUDGES_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, (ast.Import, ast.ImportFrom)) else []
            module = node.module if isinstance(node, ast.ImportFrom) else ""
            assert "oracle" not in (module or "") and not any("oracle" in n for n in names), f"{path.name} imports the oracle"
    code = ("import sys, rewardiff.shapes.judges.train, rewardiff.shapes.judges.negatives;"
            "assert 'rewardiff.shapes.oracle' not in sys.modules, 'oracle imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- tiny training runs load through the real rewards -------------------------------------------


def test_tiny_runs_write_the_three_folders(tiny_judges):
    assert set(tiny_judges) == {"clip", "detector", "captioner"}
    for name, path in tiny_judges.items():
        assert (path / "config.json").is_file() and (path / "model.safetensors").is_file(), name
        assert (path.parent / "train_log.jsonl").is_file() and (path.parent / "checkpoint" / "state.json").is_file()


def test_clip_judge_loads_as_clip_reward(tiny_judges):
    from rewardiff.rewards.registry import build_reward

    reward = build_reward(f"clip@{tiny_judges['clip']}")
    out = reward(torch.rand(2, 3, 32, 32), ["a red circle", "a blue square left of a red triangle"])
    assert out.scores.shape == (2,)
    assert type(reward.embedder.model).__name__ == "CLIPModel"


def test_detector_judge_loads_as_detection_reward(tiny_judges):
    from rewardiff.shapes.judges.detector import detect, prompt_classes

    reward = DetectionConfidence(str(tiny_judges["detector"]), parse_classes=prompt_classes)
    out = reward(torch.rand(2, 3, 32, 32), ["two red circles", "a blue square and a red triangle"])
    assert out.details["classes"] == [["red circle"], ["blue square", "red triangle"]]
    assert type(reward.detector.model).__name__ == "Owlv2ForObjectDetection"
    dets = detect(reward.detector, torch.rand(1, 3, 32, 32), threshold=0.0)
    assert dets[0] and all(0.0 <= d.score <= 1.0 for d in dets[0])


def test_captioner_judge_loads_as_caption_reward(tiny_judges):
    from rewardiff.rewards.caption import CaptionSimilarity

    reward = CaptionSimilarity(str(tiny_judges["captioner"]), text_encoder=str(tiny_judges["clip"]))
    out = reward(torch.rand(2, 3, 32, 32), ["a red circle", "three green squares"])
    assert out.scores.shape == (2,) and all(isinstance(c, str) for c in out.details["caption"])
    assert type(reward.captioner.model).__name__ == "BlipForConditionalGeneration"


def test_shapes_name_resolves_to_the_shipped_judges(tiny_judges, monkeypatch, tmp_path):
    from rewardiff.errors import RewardiffError
    from rewardiff.rewards import loading
    from rewardiff.rewards.registry import build_reward

    monkeypatch.setattr(loading, "shipped_judge_dir", lambda judge: tiny_judges[judge])
    assert build_reward("clip@shapes").embedder.model is not None
    assert build_reward("caption@shapes").text_encoder.model.config.model_type == "clip"
    detection = build_reward("detection@shapes")
    assert detection.classes_for("four purple triangles") == ["purple triangle"]
    monkeypatch.setattr(loading, "shipped_judge_dir", lambda judge: tmp_path / "missing")
    with pytest.raises(RewardiffError, match="train-judges"):
        build_reward("clip@shapes")


# ---- resume is exact ----------------------------------------------------------------------------


def test_resumed_clip_run_equals_uninterrupted(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    cfg = tiny_config(tmp_path).clip
    cfg.loop = _tiny_loop(steps=4)
    straight = train_clip_judge(cfg, 0, tmp_path / "a", progress=False)

    real_save = common._save_state

    def save_then_die(directory, tensors, optim, meta):
        real_save(directory, tensors, optim, meta)
        if meta["step"] == 2:  # killed right after the step-2 checkpoint
            raise KeyboardInterrupt

    monkeypatch.setattr(common, "_save_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_clip_judge(cfg, 0, tmp_path / "b", progress=False)
    monkeypatch.setattr(common, "_save_state", real_save)
    resumed = train_clip_judge(cfg, 0, tmp_path / "b", progress=False)
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ---- NMS, targets, tokens, negatives --------------------------------------------------------------


def test_box_iou_exact():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [5.0, 5.0, 6.0, 6.0]])
    assert torch.equal(box_iou(a, b), torch.tensor([[1 / 7, 1.0, 0.0]]))


def test_nms_exact():
    boxes = torch.tensor([
        [0.0, 0.0, 10.0, 10.0],   # 0: best of cluster A
        [1.0, 0.0, 11.0, 10.0],   # 1: IoU 9/11 with 0 -> suppressed
        [20.0, 20.0, 30.0, 30.0], # 2: alone
        [0.0, 5.0, 10.0, 15.0],   # 3: IoU 5/15 = 1/3 with 0 -> kept at threshold 0.4, dropped at 0.3
        [20.0, 20.0, 30.0, 30.0], # 4: same box as 2, same score: the lower index (2) wins
    ])
    scores = torch.tensor([0.9, 0.95, 0.5, 0.6, 0.5])
    assert nms(boxes, scores, 0.4).tolist() == [1, 3, 2]
    # 1 suppresses 0 (IoU 9/11); 3 vs 1: IoU 45/155 < 0.3 -> kept; 2 then 4 (IoU 1) suppressed
    assert nms(boxes, scores, 0.3).tolist() == [1, 3, 2]
    assert nms(boxes, scores, 0.25).tolist() == [1, 2]
    assert nms(boxes[:0], scores[:0], 0.5).tolist() == []


def test_patch_targets_mark_the_patch_holding_each_centre():
    from rewardiff.shapes.render import ObjectTruth

    objs = (ObjectTruth("red", "circle", (2, 3, 11, 12)), ObjectTruth("blue", "square", (20, 20, 27, 27)))
    labels, boxes, pos = det_mod.patch_targets([objs], patch_size=4)
    assert pos.sum() == 2
    p0 = int(7.5 // 4) * 8 + int(6.5 // 4)  # centre (6.5, 7.5) -> row 1, column 1
    assert pos[0, p0] and labels[0, p0, det_mod.CLASS_NAMES.index("red circle")] == 1 and labels.sum() == 2
    assert torch.allclose(boxes[0, p0], torch.tensor([6.5, 7.5, 9.0, 9.0]) / 32)


def test_caption_tokens_start_with_dec_and_end_with_sep(tmp_path):
    _, tok, _ = cap_mod.build_captioner(CaptionerArch(**TINY), tmp_path)
    ids, mask, labels = cap_mod.caption_tokens(tok, ["a red circle", "a blue square left of a green triangle"])
    assert ids[0, 0] == tok.bos_token_id and tok.convert_ids_to_tokens(ids[0, :5].tolist()) == ["[DEC]", "a", "red", "circle", "[SEP]"]
    assert labels[0, 5:].eq(-100).all() and mask[1].all()
    assert tok.unk_token_id not in ids.tolist()[1]


@pytest.mark.parametrize("prompt, must_have, must_not_have", [
    ("a red circle left of a blue square", ["a blue circle left of a red square", "a red circle above a blue square", "a blue square left of a red circle"],
     ["a blue square right of a red circle", "a red circle and a blue square"]),
    ("a red circle and a blue square", ["a blue circle and a red square", "a red circle"], ["a blue square and a red circle"]),
    ("three green triangles", ["two green triangles", "a green triangle", "three red triangles"], ["three green triangles"]),
])
def test_hard_negatives_differ_in_meaning(prompt, must_have, must_not_have):
    negs = hard_negatives(prompt)
    assert all(n in negs for n in must_have)
    assert not any(n in negs for n in must_not_have)
    key = semantic_key(parse_prompt(prompt))
    assert all(semantic_key(parse_prompt(n)) != key for n in negs)


# ---- evaluation -----------------------------------------------------------------------------------


def test_caption_fields_and_detector_verdict():
    from rewardiff.eval.judges_eval import caption_fields, caption_matches, detector_verdict
    from rewardiff.shapes.judges.detector import Detection

    assert caption_matches("a blue square right of a red circle", "a red circle left of a blue square")
    f = caption_fields("a red circle above a blue square", "a red circle left of a blue square")
    assert f == {"category": True, "colors": True, "shapes": True, "count": True, "relation": False}
    assert not any(caption_fields("a big dog", "two red circles").values())
    left = Detection("red circle", 0.9, (0, 0, 8, 8))
    right = Detection("blue square", 0.9, (20, 0, 28, 8))
    assert detector_verdict([left, right], "a red circle left of a blue square")
    assert not detector_verdict([left, right], "a red circle right of a blue square")
    assert not detector_verdict([left], "two red circles")


def test_eval_judges_end_to_end(tiny_judges, tmp_path):
    from rewardiff.eval.judges_eval import evaluate_judges
    from rewardiff.shapes.dataset import render_dataset
    from rewardiff.shapes.prompts import heldout_eval_prompts

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\ntwo blue squares\n")
    meta = render_dataset(str(prompts), 2, 0, tmp_path / "gen")
    result, out = evaluate_judges(tiny_judges["clip"].parent.parent, tmp_path / "eval", generated=meta, per_prompt=1)
    assert (out / "judges_eval.md").is_file()
    r = result["rendered_heldout"]
    assert r["num_images"] == len(heldout_eval_prompts()) and 0 <= r["clip_top1_among_hard_negatives"]["all"] <= 1
    assert set(result["oracle_agreement"]["judges"]) == {"clip", "detector", "captioner"}
    assert result["oracle_agreement"]["oracle_pass_rate"] == 1.0  # rendered images pass the oracle


def test_shipped_judges_recipe_matches_defaults():
    from rewardiff.config import load_config

    preset = load_config(TrainJudgesConfig, Path(__file__).resolve().parent.parent / "configs" / "shapes_judges.yaml")
    default = TrainJudgesConfig()
    assert (preset.clip, preset.detector, preset.captioner, preset.seed) == (default.clip, default.detector, default.captioner, default.seed)


@pytest.mark.parametrize("judge", ["clip", "detector", "captioner"])
def test_shipped_judge_loads_when_present(judge):
    """The shipped weights (when this checkout has them) load through the registry by name."""
    from rewardiff.rewards.loading import shipped_judge_dir
    from rewardiff.rewards.registry import build_reward

    if not (shipped_judge_dir(judge) / "config.json").is_file():
        pytest.skip(f"no shipped {judge} judge in this checkout")
    reward = build_reward({"clip": "clip@shapes", "detector": "detection@shapes", "captioner": "caption@shapes"}[judge])
    assert reward(torch.rand(1, 3, 32, 32), ["a red circle"]).scores.shape == (1,)


def test_train_judges_refuses_a_folder_another_run_owns(tmp_path):
    from rewardiff.errors import RewardiffError

    other = tmp_path / "generated"
    other.mkdir()
    (other / "metadata.jsonl").write_text('{"prompt": "a red circle", "image": "images/0.png"}\n')
    with pytest.raises(RewardiffError, match="another run"):
        train_judges(tiny_config(other), progress=False)
    assert sorted(p.name for p in other.iterdir()) == ["metadata.jsonl"]  # nothing written, config.yaml included
