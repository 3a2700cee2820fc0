"""Which vision-language back-end to ask, and how (one dataclass shared by captioners and the
`vlm` reward; YAML presets and --set overrides fill it like every config)."""

from __future__ import annotations

from dataclasses import dataclass

from rewardiff.errors import RewardiffError

BACKENDS = ("transformers", "openai", "shapes")


@dataclass
class VLMConfig:
    backend: str = "transformers"  # transformers (AutoModelForImageTextToText) | openai (chat endpoint) | shapes (the shapes world's stand-in)
    model: str = ""  # transformers: hub id or folder; openai: the served model's name ('' = the endpoint's first /models entry)
    url: str = ""  # openai: endpoint base, e.g. http://localhost:8000/v1 (vLLM, Ollama, llama.cpp server)
    api_key_env: str = "OPENAI_API_KEY"  # openai: env var holding the key (sent only if set)
    timeout_s: float = 60.0  # openai: seconds per request before it counts as failed
    retries: int = 2  # openai: further attempts after a failed request (down, slow, non-JSON, HTTP 5xx)
    retry_wait_s: float = 1.0  # openai: seconds before the first retry, doubled after each
    batch_size: int = 8  # images per model call (transformers) or concurrent requests (openai)
    max_new_tokens: int = 64  # answer length cap, in tokens
    top_logprobs: int = 20  # log-probabilities asked for the first answer token (0 = do not ask)
    cache: str = ""  # JSONL file of answers keyed by image hash + model + question ('' = no cache)
    device: str = "cpu"  # transformers: where the model runs

    def check(self) -> None:
        if self.backend not in BACKENDS:
            raise RewardiffError(f"vlm backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.backend == "openai" and not self.url:
            raise RewardiffError("vlm backend 'openai' needs a url (e.g. http://localhost:8000/v1)")
        if self.backend == "transformers" and not self.model:
            raise RewardiffError("vlm backend 'transformers' needs a model (a hub id or folder)")
        if self.retries < 0 or self.batch_size < 1 or self.max_new_tokens < 1 or self.top_logprobs < 0 or not self.timeout_s > 0:
            raise RewardiffError("vlm: retries and top_logprobs must be >= 0, batch_size and max_new_tokens >= 1, timeout_s > 0")

    @property
    def model_id(self) -> str:
        """What the answers came from, in cache keys: url + model for endpoints, else the model."""
        return f"{self.url.rstrip('/')}#{self.model}" if self.backend == "openai" else f"{self.backend}:{self.model}"


def vlm_config_from_spec(model: str | None, device: str = "cpu") -> VLMConfig:
    """The MODEL part of 'vlm@MODEL' / a captioner spec: 'shapes'; an http(s) URL (OpenAI-compatible,
    optionally URL#MODEL_NAME); else a transformers hub id or folder."""
    if not model:
        raise RewardiffError("vlm needs a model: vlm@shapes, vlm@http://HOST:PORT/v1[#MODEL] or vlm@HUB_ID_OR_FOLDER")
    if model == "shapes":
        return VLMConfig(backend="shapes", model="shapes", device=device)
    if model.startswith(("http://", "https://")):
        url, _, name = model.partition("#")
        return VLMConfig(backend="openai", url=url, model=name)
    return VLMConfig(backend="transformers", model=model, device=device)
