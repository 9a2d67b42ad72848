"""Content as text: special-token texts written in a message (`<|im_end|>`, `<|im_start|>`...)
stay text in the prompt; only the chat template's own markup becomes special tokens.

The template renders content that has been escaped (each special text replaced by a marker the
template passes through untouched); the rendered prompt is then split at the special texts left,
which are all the template's, and the text between them is un-escaped and encoded with
special-token parsing off. This is how llama.cpp itself encodes with parse_special: special
texts cut the prompt into fragments, and each fragment is encoded as text.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from seekserve.engines.base import Tokenizer

# Supplementary Private Use Area-A/B: characters no template transforms (no case, no space).
_ESCAPE = "\U000f0000"
_FIRST_MARKER = 0xF0001
_MARKERS = 0x10FFFD - _FIRST_MARKER + 1


def map_strings(value: Any, fn: Callable[[str], str]) -> Any:
    """`fn` applied to every string of a JSON-like value, keys included."""
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, dict):
        return {map_strings(k, fn): map_strings(v, fn) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [map_strings(v, fn) for v in value]
    return value


class LiteralText:
    """Escapes content for one tokenizer's special texts and encodes a prompt rendered from it.

    `escaped` tells whether any content needed escaping; while it is False the rendered prompt
    is exactly the unescaped one and is encoded in one call, as before."""

    def __init__(self, special_texts: Sequence[str]) -> None:
        texts = sorted(set(special_texts) - {""}, key=len, reverse=True)[:_MARKERS]
        self._index = {text: i for i, text in enumerate(texts)}
        self._texts = texts
        # Longest first, so a special text that contains another is matched whole.
        self._specials = re.compile("|".join(map(re.escape, texts))) if texts else None
        self._in_content = re.compile("|".join(map(re.escape, [_ESCAPE, *texts])))
        self._markers = re.compile(re.escape(_ESCAPE) + "(.)", re.DOTALL)
        self.escaped = False

    def escape(self, text: str) -> str:
        """`text` with every special text (and the escape character itself) replaced."""
        if self._specials is None and _ESCAPE not in text:
            return text
        escaped = self._in_content.sub(self._marker, text)
        if escaped != text:
            self.escaped = True
        return escaped

    def _marker(self, match: re.Match[str]) -> str:
        found = match.group()
        if found == _ESCAPE:
            return _ESCAPE + _ESCAPE
        return _ESCAPE + chr(_FIRST_MARKER + self._index[found])

    def unescape(self, text: str) -> str:
        return self._markers.sub(self._original, text)

    def _original(self, match: re.Match[str]) -> str:
        code = match.group(1)
        if code == _ESCAPE:
            return _ESCAPE
        index = ord(code) - _FIRST_MARKER
        return self._texts[index] if 0 <= index < len(self._texts) else match.group()

    def encode(self, rendered: str, tokenizer: Tokenizer, *, add_bos: bool) -> list[int]:
        """The prompt's tokens: special texts in `rendered` (the template's) as special tokens,
        everything between them, escaped content restored, as text."""
        if not self.escaped or self._specials is None:
            return tokenizer.encode(self.unescape(rendered) if self.escaped else rendered,
                                    add_special=add_bos, parse_special=True)
        ids = tokenizer.encode("", add_special=True, parse_special=False) if add_bos else []
        at = 0
        for match in self._specials.finditer(rendered):
            if match.start() > at:
                ids += tokenizer.encode(self.unescape(rendered[at:match.start()]),
                                        add_special=False, parse_special=False)
            ids += tokenizer.encode(match.group(), add_special=False, parse_special=True)
            at = match.end()
        if at < len(rendered):
            ids += tokenizer.encode(self.unescape(rendered[at:]), add_special=False,
                                    parse_special=False)
        return ids
