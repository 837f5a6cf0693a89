"""What the inferer takes as input: strings of valid Unicode, anything else refused with an error naming it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def validate_text(text: Any, name: str = "text") -> str:
    """`text` when it is a string of valid Unicode; else a TypeError or ValueError that calls it `name`."""
    if text is None:
        raise ValueError(f"{name} is None; pass a string (an empty string is allowed)")
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a string, got {type(text).__name__}")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:  # lone surrogates, which the tokenizer cannot take
            raise ValueError(f"{name} is not valid Unicode ({error.reason} at character {error.start})") from None
    return text


def validate_texts(texts: Any) -> list[str]:
    """The texts as a list; anything but a sequence of valid Unicode strings is refused, naming the culprit."""
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TypeError(f"texts must be a list of strings, got {type(texts).__name__}")
    return [validate_text(text, f"text {i}") for i, text in enumerate(texts)]
