"""A loaded GGUF model on llama.cpp's C API: weights, vocabulary, tokenizer and metadata."""

from __future__ import annotations

import ctypes
import logging
import threading
from pathlib import Path
from typing import Any

import llama_cpp as lc
import llguidance

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
        self._end_tokens: tuple[int, ...] | None = None
        self._grammar_vocabulary: llguidance.LLTokenizer | None = None
        self._grammar_lock = threading.Lock()
        self._special_texts: tuple[str, ...] | None = None

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

    def special_texts(self) -> tuple[str, ...]:
        # llama.cpp skips exactly these (control and unknown tokens) when it encodes without
        # parse_special; user-defined tokens are read either way.
        if self._special_texts is None:
            skipped = lc.LLAMA_TOKEN_ATTR_CONTROL | lc.LLAMA_TOKEN_ATTR_UNKNOWN
            texts = {self._piece(t).decode("utf-8", errors="replace")
                     for t in range(self.n_vocab)
                     if lc.llama_vocab_get_attr(self._vocab, t) & skipped}
            self._special_texts = tuple(sorted(texts - {""}, key=lambda t: (-len(t), t)))
        return self._special_texts

    def end_tokens(self) -> list[int]:
        # Found once: a scan of the vocabulary is 152k calls into llama.cpp (~0.1 s), and
        # every request with a constraint (thinking, tools, JSON) asks for them.
        if self._end_tokens is None:
            self._end_tokens = tuple(
                t for t in range(self.n_vocab) if lc.llama_vocab_is_eog(self._vocab, t))
        return list(self._end_tokens)

    def grammar_vocabulary(self) -> llguidance.LLTokenizer:
        """The vocabulary as llguidance sees it (built once, about a second)."""
        with self._grammar_lock:
            if self._grammar_vocabulary is None:
                self._grammar_vocabulary = self._build_grammar_vocabulary()
            return self._grammar_vocabulary

    def _build_grammar_vocabulary(self) -> llguidance.LLTokenizer:
        # What llguidance.llamacpp.lltokenizer_from_vocab does, on the vocab API: that helper
        # reads attributes with the deprecated llama_token_get_attr (a DeprecationWarning per
        # token). A special token's bytes start with 0xff, which is how llguidance tells a
        # control token (or a user-defined one that looks like markup) from text.
        tokens: list[bytes] = []
        for token_id in range(self.n_vocab):
            piece = self._piece(token_id)
            attr = lc.llama_vocab_get_attr(self._vocab, token_id)
            if attr & lc.LLAMA_TOKEN_ATTR_CONTROL or (
                    attr & lc.LLAMA_TOKEN_ATTR_USER_DEFINED
                    and piece.startswith(b"<") and piece.endswith(b">")):
                piece = b"\xff" + piece
            tokens.append(piece)
        tokenize = ctypes.cast(lc.llama_cpp._lib.llama_tokenize, ctypes.c_void_p).value
        build = llguidance.LLTokenizer.from_llamacpp  # type: ignore[attr-defined]
        vocabulary: llguidance.LLTokenizer = build(
            tokens=tokens, vocab_ptr=self._vocab, tokenize_fptr=tokenize,
            # The model's own end of turn first: what a grammar's forced ending writes.
            eos_token=sorted(self.end_tokens(), key=lambda t: t != self._eos), slices=None)
        return vocabulary

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

    def __init__(self, path: Path, *, vocab_only: bool = False, gpu_layers: int = 0,
                 main_gpu: int = 0, split_mode: int = lc.LLAMA_SPLIT_MODE_LAYER) -> None:
        """`gpu_layers` is llama.cpp's n_gpu_layers (negative: all); it only matters on a
        build with a GPU backend. Load it on a thread with a deep stack (see engine.py)."""
        lc.llama_backend_init()  # idempotent: sets up timers and CPU features
        lc.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))
        if not path.is_file():
            raise ModelLoadError(f"model file {path} does not exist")
        params = lc.llama_model_default_params()
        # Only the vocabulary and metadata (chat template): a tokenizer for a remote engine.
        params.vocab_only = vocab_only
        params.n_gpu_layers = 0 if vocab_only else gpu_layers
        params.main_gpu = main_gpu
        params.split_mode = split_mode
        model = lc.llama_model_load_from_file(str(path).encode(), params)
        if not model:
            raise ModelLoadError(f"llama.cpp could not load {path} (is it a GGUF model, and "
                                 "do its offloaded layers fit the GPU?)")
        self.path = path
        self.ptr = model
        self.vocab = lc.llama_model_get_vocab(model)
        self.tokenizer = LlamaTokenizer(self.vocab)
        self.n_ctx_train: int = lc.llama_model_n_ctx_train(model)
        self.n_layer: int = lc.llama_model_n_layer(model)
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
