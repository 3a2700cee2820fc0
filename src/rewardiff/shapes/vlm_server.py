"""A local OpenAI-compatible chat server that answers with the shapes world's VLM (`shapes.vlm`),
so the `openai` VLM back-end runs end to end without a network: tests start it on 127.0.0.1.

Serves GET /v1/models and POST /v1/chat/completions (images as data URLs, `logprobs` /
`top_logprobs` honoured as vLLM does). `behaviour` makes it misbehave the ways real endpoints do,
to test the client's errors and retries:
    ok          answer
    slow        sleep `delay_s` before answering (client timeouts)
    garbage     reply 200 with a body that is not JSON
    no_images   reply 400 "this model does not support image input" (a text-only model)
    no_logprobs reply 400 to requests that ask for logprobs (servers without them)
    flaky       fail the first `failures` requests with HTTP 503, then answer
    empty       reply with an empty message (a missing answer)

    >>> with ShapesVLMServer() as server:                                  # doctest: +SKIP
    ...     print(server.url)                                              # http://127.0.0.1:PORT/v1
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

MODEL_NAME = "shapes-vlm"
BEHAVIOURS = ("ok", "slow", "garbage", "no_images", "no_logprobs", "flaky", "empty")


def _decode_image(url: str) -> np.ndarray:
    from PIL import Image

    head, _, data = url.partition(",")
    if not head.startswith("data:image/") or ";base64" not in head:
        raise ValueError("only base64 data URLs are served here")
    with Image.open(io.BytesIO(base64.b64decode(data))) as im:
        return np.asarray(im.convert("RGB"))


def _split_message(messages: list) -> tuple[str, list[np.ndarray]]:
    text, images = [], []
    for m in messages:
        content = m.get("content")
        parts = content if isinstance(content, list) else [{"type": "text", "text": str(content or "")}]
        for part in parts:
            if part.get("type") == "text":
                text.append(str(part.get("text", "")))
            elif part.get("type") == "image_url":
                images.append(_decode_image(part["image_url"]["url"]))
    return "\n".join(text), images


class ShapesVLMServer:
    """Context manager: starts the server on a free port of 127.0.0.1 in a thread."""

    def __init__(self, behaviour: str = "ok", delay_s: float = 0.0, failures: int = 0, vlm=None, port: int = 0):
        if behaviour not in BEHAVIOURS:
            raise ValueError(f"behaviour must be one of {BEHAVIOURS}")
        self.behaviour, self.delay_s, self.failures, self.port = behaviour, delay_s, failures, port  # port 0: any free one
        self.requests = 0  # chat completion requests received
        self.images_seen = 0
        self._vlm = vlm
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None

    @property
    def vlm(self):
        with self._lock:
            if self._vlm is None:
                from rewardiff.shapes.vlm import ShapesVLM

                self._vlm = ShapesVLM()
            return self._vlm

    @property
    def url(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def completion(self, body: dict) -> dict:
        question, images = _split_message(body.get("messages", []))
        if not images:
            answer = {"text": "I see no image.", "first_token_logprobs": None}
        else:
            a = self.vlm.ask(images[:1], [question])[0]
            answer = a.to_dict()
        message = {"role": "assistant", "content": "" if self.behaviour == "empty" else answer["text"]}
        choice: dict = {"index": 0, "message": message, "finish_reason": "stop"}
        if body.get("logprobs") and answer["first_token_logprobs"]:
            top = sorted(answer["first_token_logprobs"].items(), key=lambda kv: -kv[1])[: int(body.get("top_logprobs") or 1)]
            choice["logprobs"] = {"content": [{"token": top[0][0], "logprob": top[0][1],
                                               "top_logprobs": [{"token": t, "logprob": v} for t, v in top]}]}
        return {"id": "chatcmpl-shapes", "object": "chat.completion", "model": MODEL_NAME, "choices": [choice]}

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet in tests
                pass

            def _send(self, code: int, payload: bytes, kind: str = "application/json") -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self) -> None:
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, json.dumps({"object": "list", "data": [{"id": MODEL_NAME, "object": "model"}]}).encode())
                else:
                    self._send(404, b'{"error": "not found"}')

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with server._lock:
                    server.requests += 1
                    n = server.requests
                b = server.behaviour
                if b == "slow":
                    time.sleep(server.delay_s)
                if b == "garbage":
                    return self._send(200, b"<html>502 Bad Gateway</html>", "text/html")
                if b == "no_images":
                    return self._send(400, b'{"error": {"message": "this model does not support image input"}}')
                if b == "no_logprobs" and body.get("logprobs"):
                    return self._send(400, b'{"error": {"message": "logprobs are not supported"}}')
                if b == "flaky" and n <= server.failures:
                    return self._send(503, b'{"error": {"message": "loading model"}}')
                _, images = _split_message(body.get("messages", []))
                with server._lock:
                    server.images_seen += len(images)
                self._send(200, json.dumps(server.completion(body)).encode())

        return Handler

    def __enter__(self) -> "ShapesVLMServer":
        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
