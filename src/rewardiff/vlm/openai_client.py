"""Ask an OpenAI-compatible chat endpoint (vLLM, Ollama, llama.cpp server, ...) about images.

POST {url}/chat/completions with one user message: the question text and the image as a PNG data
URL (the OpenAI vision message format), temperature 0, and `logprobs` / `top_logprobs` for the
first answer token when asked (VQAScore needs them; a server that rejects them is asked again
without, once, and remembered). Requests of a batch run concurrently (`batch_size` at a time).

Failures: a server that is down, slow past `timeout_s`, answers HTTP 5xx / 429 or non-JSON is asked
again up to `retries` times (waiting retry_wait_s, doubled each time), then a RewardiffError names
the endpoint and the last reason. A 4xx that says images are not accepted fails at once (retrying
cannot help). A JSON reply without a message is an Answer with `error` set: a counted failure of
that image, not of the run. urllib only: no client dependency.
"""

from __future__ import annotations

import base64
import io
import json
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from rewardiff.errors import RewardiffError
from rewardiff.vlm.answers import Answer
from rewardiff.vlm.config import VLMConfig

_IMAGE_WORDS = ("image", "vision", "multimodal", "multi-modal")


def png_data_url(image: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def parse_completion(reply: object) -> Answer:
    """An OpenAI chat completion -> Answer (text + first token's top logprobs when present)."""
    try:
        choice = reply["choices"][0]  # type: ignore[index]
        content = choice["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return Answer("", None, f"reply is not a chat completion: {str(reply)[:120]}")
    if not isinstance(content, str) or not content.strip():
        return Answer("", None, "empty answer")
    logprobs = None
    try:
        first = choice["logprobs"]["content"][0]
        logprobs = {str(t["token"]): float(t["logprob"]) for t in first.get("top_logprobs") or [first]}
    except (KeyError, IndexError, TypeError, ValueError):
        logprobs = None
    return Answer(content.strip(), logprobs or None)


class _Refused(Exception):
    """A 4xx reply: the request itself is wrong; retrying does not help."""


class OpenAIVisionClient:
    """One endpoint and model; `ask` answers one question per image."""

    def __init__(self, cfg: VLMConfig):
        cfg.check()
        self.cfg = cfg
        self.url = cfg.url.rstrip("/")
        self.send_logprobs = cfg.top_logprobs > 0
        self.model = cfg.model or self._first_model()

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.cfg.api_key_env, "")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _request(self, path: str, body: dict | None) -> object:
        """One HTTP exchange -> parsed JSON; transient failures raise OSError / ValueError, a 4xx _Refused."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, headers=self._headers(), method="POST" if data else "GET")
        try:
            with urllib.request.urlopen(request, timeout=self.cfg.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as e:
            text = e.read().decode("utf-8", "replace")[:300]
            if 400 <= e.code < 500 and e.code != 429:
                raise _Refused(f"HTTP {e.code}: {text}") from None
            raise OSError(f"HTTP {e.code}: {text}") from None
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ValueError(f"reply is not JSON: {raw[:80]!r}") from None

    def _with_retries(self, path: str, body: dict | None) -> object:
        wait, last = self.cfg.retry_wait_s, ""
        for attempt in range(self.cfg.retries + 1):
            try:
                return self._request(path, body)
            except _Refused:
                raise
            except (OSError, ValueError) as e:  # URLError, timeouts, resets, 5xx, non-JSON
                last = f"{type(e).__name__}: {e}"
                if attempt < self.cfg.retries:
                    time.sleep(wait)
                    wait *= 2
        raise RewardiffError(f"vlm endpoint {self.url}: no usable reply after {self.cfg.retries + 1} attempts ({last}); "
                             "answers received so far are cached, so running again resumes")

    def _first_model(self) -> str:
        try:
            reply = self._with_retries("/models", None)
            return str(reply["data"][0]["id"])  # type: ignore[index]
        except _Refused as e:
            raise RewardiffError(f"vlm endpoint {self.url}/models: {e}; name the model (URL#MODEL or vlm.model)") from None
        except (KeyError, IndexError, TypeError):
            raise RewardiffError(f"vlm endpoint {self.url}/models lists no model; name it (URL#MODEL or vlm.model)") from None

    def _body(self, image: np.ndarray, question: str) -> dict:
        body = {"model": self.model, "temperature": 0.0, "max_tokens": self.cfg.max_new_tokens,
                "messages": [{"role": "user", "content": [{"type": "text", "text": question},
                                                          {"type": "image_url", "image_url": {"url": png_data_url(image)}}]}]}
        if self.send_logprobs:
            body.update(logprobs=True, top_logprobs=self.cfg.top_logprobs)
        return body

    def ask_one(self, image: np.ndarray, question: str) -> Answer:
        body = self._body(image, question)
        try:
            return parse_completion(self._with_retries("/chat/completions", body))
        except _Refused as e:
            message = str(e).lower()
            if body.get("logprobs") and "logprob" in message:
                self.send_logprobs = False  # this server has no logprobs: parse the answers instead
                return self.ask_one(image, question)
            if any(w in message for w in _IMAGE_WORDS):
                raise RewardiffError(f"vlm endpoint {self.url} refuses images for model {self.model!r} ({e}); serve a vision model") from None
            raise RewardiffError(f"vlm endpoint {self.url} refused the request: {e}") from None

    def ask(self, images: list[np.ndarray], questions: list[str]) -> list[Answer]:
        with ThreadPoolExecutor(max_workers=self.cfg.batch_size) as pool:
            return list(pool.map(self.ask_one, images, questions))
