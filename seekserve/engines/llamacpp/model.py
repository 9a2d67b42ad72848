"""A loaded GGUF model on llama.cpp's C API: weights, vocabulary, tokenizer and metadata."""

from __future__ import annotations

import ctypes
import logging
import threading
from pathlib import Path
from typing import Any

import llama_cpp as lc
import llguidance
import llguidance.llamacpp

_llama_log = logging.getLogger("seekserve.llamacpp")
# ggml's log levels: 1 debug, 2 info, 3 warn, 4 error, 5 continues the previous line.
# llama.cpp's info is loading chatter, so it goes to our debug level.
_GGML_LEVELS = {1: logging.DEBUG, 2: logging.DEBUG, 3: logging.WARNING, 4: logging.ERROR}


def _forward_llama_log(level: int, text: bytes | None, _user_data: ctypes.c_void_p) -> None:
    if not text or level == 5:
        return
    message = text.decode("utf-8", errors="replace").rstrip()
    if message:
        _llama_log.log(_GGML_LEVELS.get(level, logging.DEBUG), "%s", message)


# Kept at module level so the C side never calls a collected function; it holds no state.
_LOG_CALLBACK = lc.llama_log_callback(_forward_llama_log)


class ModelLoadError(Exception):
    """The GGUF file could not be loaded."""


class LlamaTokenizer:
    """Tokenizer over a llama.cpp vocabulary (implements engines.base.Tokenizer)."""

    def __init__(self, vocab: Any) -> None:
        self._vocab = vocab
        self.n_vocab: int = lc.llama_vocab_n_tokens(vocab)
        self._bos = lc.llama_vocab_bos(vocab)
        self._eos = lc.llama_vocab_eos(vocab)
        self._add_bos = bool(lc.llama_vocab_get_add_bos(vocab))
        self._pieces: dict[int, bytes] = {}
        self._grammar_vocabulary: llguidance.LLTokenizer | None = None
        self._grammar_lock = threading.Lock()

    def encode(self, text: str, *, add_special: bool = False, parse_special: bool = True
               ) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 8
        buf = (lc.llama_token * capacity)()
        n = lc.llama_tokenize(self._vocab, data, len(data), buf, capacity, add_special,
                              parse_special)
        if n < 0:
            capacity = -n
            buf = (lc.llama_token * capacity)()
            n = lc.llama_tokenize(self._vocab, data, len(data), buf, capacity, add_special,
                                  parse_special)
        return list(buf[:n])

    def _piece(self, token_id: int) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = lc.llama_token_to_piece(self._vocab, token_id, buf, 64, 0, True)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = lc.llama_token_to_piece(self._vocab, token_id, buf, -n, 0, True)
        return buf.raw[:n]

    def piece(self, token_id: int) -> bytes:
        cached = self._pieces.get(token_id)
        if cached is None:
            cached = self._pieces[token_id] = self._piece(token_id)
        return cached

    def is_end_of_generation(self, token_id: int) -> bool:
        return bool(lc.llama_vocab_is_eog(self._vocab, token_id))

    def end_tokens(self) -> list[int]:
        return [t for t in range(self.n_vocab) if lc.llama_vocab_is_eog(self._vocab, t)]

    def grammar_vocabulary(self) -> llguidance.LLTokenizer:
        """The vocabulary as llguidance sees it (built once, about a second)."""
        with self._grammar_lock:
            if self._grammar_vocabulary is None:
                self._grammar_vocabulary = llguidance.llamacpp.lltokenizer_from_vocab(
                    self._vocab, eos_token=self.end_tokens())
            return self._grammar_vocabulary

    def _text(self, token_id: int) -> str:
        if token_id < 0:
            return ""
        return self._piece(token_id).decode("utf-8", errors="replace")

    @property
    def vocab_size(self) -> int:
        return self.n_vocab

    @property
    def bos_text(self) -> str:
        return self._text(self._bos)

    @property
    def eos_text(self) -> str:
        return self._text(self._eos)

    @property
    def add_bos(self) -> bool:
        return self._add_bos


class LlamaModel:
    """Owns the llama_model pointer; free it with close()."""

    def __init__(self, path: Path, *, vocab_only: bool = False) -> None:
        lc.llama_backend_init()  # idempotent: sets up timers and CPU features
        lc.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))
        if not path.is_file():
            raise ModelLoadError(f"model file {path} does not exist")
        params = lc.llama_model_default_params()
        # Only the vocabulary and metadata (chat template): a tokenizer for a remote engine.
        params.vocab_only = vocab_only
        model = lc.llama_model_load_from_file(str(path).encode(), params)
        if not model:
            raise ModelLoadError(f"llama.cpp could not load {path} (is it a GGUF model?)")
        self.path = path
        self.ptr = model
        self.vocab = lc.llama_model_get_vocab(model)
        self.tokenizer = LlamaTokenizer(self.vocab)
        self.n_ctx_train: int = lc.llama_model_n_ctx_train(model)
        template = lc.llama_model_chat_template(model, None)
        self.chat_template: str | None = template.decode("utf-8") if template else None
        self.name = self.meta("general.name") or path.stem

    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(4096)
        n = lc.llama_model_meta_val_str(self.ptr, key.encode(), buf, 4096)
        if n < 0:
            return None
        return buf.value.decode("utf-8", errors="replace")

    def close(self) -> None:
        if self.ptr:
            lc.llama_model_free(self.ptr)
            self.ptr = None
