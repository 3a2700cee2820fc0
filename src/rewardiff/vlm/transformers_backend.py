"""Ask a transformers image-text-to-text model (LLaVA, Qwen2-VL, Idefics, BLIP and kin) about images,
through `AutoModelForImageTextToText` + `AutoProcessor`, as their model cards do.

A processor with a chat template gets one user turn [image, question] and the generation prompt;
one without (BLIP-style captioners) gets the question as a text prefix, or nothing when the
question is empty (unconditional captioning). Greedy decoding, so answers are reproducible; the
first generated token's top log-probabilities come from `generate(output_scores=True)`. Loading
goes through rewards.loading's error wrapping (no remote code; offline -> one clear line).
"""

from __future__ import annotations

import numpy as np
import torch

from rewardiff.errors import RewardiffError
from rewardiff.vlm.answers import Answer
from rewardiff.vlm.config import VLMConfig


class TransformersVLM:
    def __init__(self, cfg: VLMConfig):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from rewardiff.rewards.loading import _load_error, load_model, offline, resolve_model_ref

        cfg.check()
        ref = resolve_model_ref(cfg.model, "vision-language model")
        self.model = load_model(AutoModelForImageTextToText, ref, "vision-language model", device=cfg.device)
        try:
            self.processor = AutoProcessor.from_pretrained(ref.location, local_files_only=ref.is_local or offline())
        except Exception as e:  # hub / format errors come in many classes
            raise _load_error(ref, "vision-language model processor", e) from None
        tokenizer = getattr(self.processor, "tokenizer", None)
        if tokenizer is None:
            raise RewardiffError(f"{cfg.model}: its processor has no tokenizer; not an image-text-to-text model")
        self.tokenizer = tokenizer
        self.chat = bool(getattr(self.processor, "chat_template", None))
        self.cfg = cfg

    def _inputs(self, images: list[np.ndarray], questions: list[str]) -> dict:
        from PIL import Image

        pil = [Image.fromarray(np.asarray(im, dtype=np.uint8)) for im in images]
        if self.chat:
            texts = [self.processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}], add_generation_prompt=True, tokenize=False)
                for q in questions]
            inputs = self.processor(images=pil, text=texts, return_tensors="pt", padding=True)
        elif any(questions):
            inputs = self.processor(images=pil, text=list(questions), return_tensors="pt", padding=True)
        else:
            inputs = self.processor(images=pil, return_tensors="pt")
        return {k: v.to(self.model.device) for k, v in inputs.items()}

    @torch.no_grad()
    def ask(self, images: list[np.ndarray], questions: list[str]) -> list[Answer]:
        if self.tokenizer.padding_side != "left" and self.chat:
            self.tokenizer.padding_side = "left"  # decoder-only models continue the last position
        inputs = self._inputs(images, questions)
        extra = {}
        if self.chat:  # decoder-only models need a pad id; BLIP-style generate sets its own
            extra["pad_token_id"] = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        out = self.model.generate(**inputs, max_new_tokens=self.cfg.max_new_tokens, do_sample=False, num_beams=1,
                                  output_scores=True, return_dict_in_generate=True, **extra)
        prompt_len = inputs["input_ids"].shape[1] if "input_ids" in inputs and self.chat else 0
        new = out.sequences[:, prompt_len:]
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        answers = []
        first = torch.log_softmax(out.scores[0].float(), dim=-1) if out.scores else None
        for b, text in enumerate(texts):
            logprobs = None
            if first is not None and self.cfg.top_logprobs > 0:
                values, ids = first[b].topk(min(self.cfg.top_logprobs, first.shape[-1]))
                logprobs = {}
                for v, i in zip(values.tolist(), ids.tolist()):
                    token = self.tokenizer.convert_ids_to_tokens(i)
                    logprobs[token] = max(logprobs.get(token, -1e9), v)
            answers.append(Answer(text.strip(), logprobs))
        return answers
