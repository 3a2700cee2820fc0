"""scripts/experiments/train_on_judgements.py: a LoRA from finished rounds' judgements, with the
selection given on the command line (the loop's own select / training_examples / train_lora)."""

import json
import runpy
import sys
from pathlib import Path

from PIL import Image

from rewardiff.shapes.render import render

SCRIPT = Path(__file__).parent.parent / "scripts" / "experiments" / "train_on_judgements.py"


def _round(folder: Path) -> None:
    (folder / "candidates" / "images").mkdir(parents=True)
    rows = []
    for i, (score, kept) in enumerate([(3.0, True), (2.5, True), (1.0, False)]):
        name = f"images/{i}.png"
        Image.fromarray(render("a red circle", i).image).save(folder / "candidates" / name)
        rows.append({"prompt": "a red circle", "image": name, "seed": i, "score": score, "kept": kept})
    (folder / "judgements.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_script_trains_dpo_on_kept_vs_dropped_pairs(tmp_path, monkeypatch, capsys):
    _round(tmp_path / "round_1")
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--rounds", str(tmp_path / "round_1"), "--pairing", "kept_vs_dropped",
                                      "--set", "loss=dpo", "--set", "steps=1", "--set", "batch_size=2", "--out", str(out)])
    runpy.run_path(str(SCRIPT), run_name="__main__")
    first = capsys.readouterr().out.splitlines()[0]
    assert json.loads(first) == {"examples": 2, "loss": "dpo"}  # 2 kept x 1 dropped
    assert (out / "lora" / "lora.safetensors").is_file()
