"""A small client for `answer-trt serve`, standard library only (copy it anywhere).

    client = AnswerTrtClient("http://127.0.0.1:8000")
    png = client.generate("a red circle and a blue square", method="cfg", seed=3)
    print(client.stats()["rows_per_call"])
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from typing import Any

DEFAULT_TIMEOUT_S = 600.0


class ServerError(RuntimeError):
    """The server refused or failed a request (``status`` is its HTTP status, 0 when it could
    not be reached); ``message`` is its one-line reason; ``retry_after_s`` is set on a 503."""

    def __init__(self, status: int, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(f"HTTP {status}: {message}" if status else message)
        self.status = status
        self.message = message
        self.retry_after_s = retry_after_s


class AnswerTrtClient:
    """``url``: the server's base URL, e.g. ``http://127.0.0.1:8000``."""

    def __init__(self, url: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def generate(self, prompt: str, **fields: Any) -> bytes:
        """One image as PNG bytes (its text chunks carry the generation parameters). ``fields``
        are ``Pipeline.generate``'s keywords (method, steps, seed, ...) and ``timeout_s``."""
        body, _ = self._request("POST", "/v1/generate", {"prompt": prompt, **fields, "response": "png"})
        return body

    def generate_json(self, prompt: str, **fields: Any) -> tuple[bytes, dict[str, Any]]:
        """The PNG bytes and the generation parameters as a dict."""
        body = self._json("POST", "/v1/generate", {"prompt": prompt, **fields, "response": "json"})
        return base64.b64decode(body["image_png_base64"]), body["parameters"]

    def generate_image(self, prompt: str, **fields: Any) -> Any:
        """A PIL image (needs Pillow); ``image.info`` holds the parameters."""
        import io

        from PIL import Image

        image = Image.open(io.BytesIO(self.generate(prompt, **fields)))
        image.load()
        return image

    def health(self) -> dict[str, Any]:
        return self._json("GET", "/v1/health")

    def stats(self) -> dict[str, Any]:
        """The batcher's counters: queue_length, active, completed, calls, rows, rows_per_call, ..."""
        return self._json("GET", "/v1/stats")

    def _json(self, method: str, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        body, _ = self._request(method, path, payload)
        value = json.loads(body)
        if not isinstance(value, dict):
            raise ServerError(200, f"{path} answered {type(value).__name__}, not a JSON object")
        return value

    def _request(self, method: str, path: str, payload: dict[str, Any] | None) -> tuple[bytes, str]:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return response.read(), response.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            raise _server_error(exc) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ServerError(0, f"cannot reach {self.url}: {reason}") from None


def _server_error(exc: urllib.error.HTTPError) -> ServerError:
    raw = exc.read()
    try:
        message = json.loads(raw)["error"]
    except (ValueError, KeyError, TypeError):
        message = raw.decode("utf-8", "replace").strip() or exc.reason
    retry = exc.headers.get("Retry-After")
    try:
        retry_after_s = float(retry) if retry is not None else None
    except ValueError:
        retry_after_s = None
    return ServerError(exc.code, " ".join(str(message).split()), retry_after_s)
