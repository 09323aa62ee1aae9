"""Check HTTP request bodies and headers against the limits; raise ApiError with a status."""

from __future__ import annotations

import json

try:  # the function hmac.compare_digest is, without hmac's import of OpenSSL (~4 MiB RSS)
    from _operator import _compare_digest as compare_digest
except ImportError:  # pragma: no cover - not CPython
    from hmac import compare_digest  # type: ignore[no-redef]

__all__ = ["ApiError", "parse_texts", "parse_qa", "check_length", "check_token"]


class ApiError(Exception):
    """An error answered as JSON with an HTTP status (and optional headers and fields)."""

    def __init__(self, status: int, message: str, headers=None, **extra):
        super().__init__(message)
        self.status, self.headers, self.extra = status, dict(headers or {}), extra


def check_length(header: str | None, max_body_bytes: int) -> int:
    """Return the declared body length; 411 when missing or not a number, 413 over the limit."""
    digits = (header or "").strip()
    if not (digits.isascii() and digits.isdigit()):  # isdigit() alone takes "²" and "٣"
        raise ApiError(411, "Content-Length required (a decimal number)")
    digits = digits.lstrip("0") or "0"
    if len(digits) > len(str(max_body_bytes)):  # before int(): it refuses 4,300+ digits
        raise ApiError(413, f"body larger than {max_body_bytes} bytes ({len(digits)} digits)")
    length = int(digits)
    if length > max_body_bytes:
        raise ApiError(413, f"body larger than {max_body_bytes} bytes ({length})")
    return length


def check_token(authorization: str | None, token: str | None) -> None:
    """Raise 401 unless a token is configured and the header carries it as a bearer token."""
    if not token:
        return
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not compare_digest(given.strip().encode(),
                                                             token.encode()):
        raise ApiError(401, "missing or wrong bearer token",
                       headers={"WWW-Authenticate": 'Bearer realm="edge_runtime"'})


def _json(body: bytes):
    try:
        return json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise ApiError(400, f"body is not valid UTF-8: {error}") from None
    except (ValueError, RecursionError) as error:  # ValueError: also a 4,300+ digit integer
        reason = str(error).split(";")[0]  # not int()'s advice about sys.set_int_max_str_digits
        raise ApiError(400, f"body is not valid JSON: {reason}") from None


def _check_strings(named: list[tuple[str, str]], limits) -> None:
    """413 when a string is over max_text_chars (the longest is named), 400 for a lone surrogate."""
    name, text = max(named, key=lambda pair: len(pair[1]))
    if len(text) > limits.max_text_chars:
        raise ApiError(413, f"{name} is longer than {limits.max_text_chars} characters "
                            f"({len(text)})")
    for name, text in named:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate from a \ud800 escape
            raise ApiError(400, f"{name} holds an unpaired surrogate (not valid Unicode)") \
                from None


def parse_texts(body: bytes, limits) -> list[str]:
    """Parse {"texts": [str, ...]} within limits; 400 for bad UTF-8, JSON or types, 413 for size."""
    data = _json(body)
    texts = data.get("texts") if isinstance(data, dict) else None
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise ApiError(400, 'expected {"texts": [string, ...]}')
    if not texts:
        raise ApiError(400, f"texts must hold 1..{limits.max_texts} strings, got 0")
    if len(texts) > limits.max_texts:
        raise ApiError(413, f"texts must hold 1..{limits.max_texts} strings, got {len(texts)}")
    _check_strings([("a text", text) for text in texts], limits)
    return texts


def parse_qa(body: bytes, limits) -> tuple[str, str]:
    """Parse {"question": str, "context": str} within limits (each at most max_text_chars)."""
    data = _json(body)
    if not isinstance(data, dict) or not isinstance(data.get("question"), str) \
            or not isinstance(data.get("context"), str):
        raise ApiError(400, 'expected {"question": string, "context": string}')
    question, context = data["question"], data["context"]
    if not question.strip() or not context.strip():
        raise ApiError(400, "question and context must not be empty")
    _check_strings([("question", question), ("context", context)], limits)
    return question, context
