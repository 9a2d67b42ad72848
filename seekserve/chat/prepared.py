"""A request bound to its model and token engine: the prompt, the generation request with its
constraint, and how the output is read back. Immutable; what one run of it holds is in
chat.backend.Run."""

from __future__ import annotations

from dataclasses import dataclass

from seekserve.chat.output import OutputParser
from seekserve.engines.base import Engine, GenerationRequest
from seekserve.registry import ServedModel


@dataclass(frozen=True)
class PreparedChat:
    """A validated request bound to its model and engine, with its prompt tokens."""

    model: ServedModel
    engine: Engine
    generation: GenerationRequest
    stops: tuple[str, ...]
    user_id: str | None = None
    # How the output text is parsed: a chat answer's reasoning and tool calls (`parsed`); a
    # text completion's output is all content.
    parsed: bool = False
    parses_tools: bool = False
    thinking: bool = False  # the answer carries reasoning_content (maybe empty)
    # Token-level output (vLLM's return_token_ids): every generated token id reaches exactly
    # one Delta, in order, each with its own logprob entry.
    want_token_ids: bool = False
    # A matched stop string stays at the end of the text (include_stop_str_in_output).
    include_stop: bool = False
    # Token ids that end the sequence once generated (stop_token_ids; the constraint ends
    # it): their text is dropped unless include_stop, and Finished names the one that came.
    stop_tokens: frozenset[int] = frozenset()

    @property
    def prompt_tokens(self) -> int:
        return len(self.generation.prompt)

    @property
    def prompt_ids(self) -> list[int]:
        return self.generation.prompt

    @property
    def request_id(self) -> str:
        return self.generation.request_id

    @property
    def model_id(self) -> str:
        return self.model.id

    @property
    def max_tokens(self) -> int:
        return self.generation.max_tokens

    def parser(self) -> OutputParser | None:
        if not self.parsed:
            return None
        return OutputParser(thinking=self.thinking, tools=self.parses_tools)
