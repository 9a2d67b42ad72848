"""The stages of the local chat backend's answer, each alone: token ids to parsed text, what
stops and output moderation release, log-probabilities kept in step with shown text, and the
Finished that ends an answer."""

from __future__ import annotations

import pytest

from seekserve.chat.answer import LogprobWindow, OutputText, Release, finished
from seekserve.chat.output import OutputParser, Parsed
from seekserve.engines.base import FinishEvent
from seekserve.moderation import OutputGuard, RuleSet
from seekserve.protocol.errors import EngineError
from seekserve.protocol.neutral import Usage
from seekserve.settings import ModerationRuleSettings
from tests.fakes import SPECIALS, ByteTokenizer


def ids(text: str) -> list[int]:
    return ByteTokenizer().encode(text)


def feed_all(output: OutputText, text: str) -> Parsed:
    total = Parsed()
    for token in ids(text):
        _, part = output.feed(token)
        total.reasoning += part.reasoning
        total.content += part.content
        total.calls.extend(part.calls)
    rest = output.finish()
    total.reasoning += rest.reasoning
    total.content += rest.content
    total.calls.extend(rest.calls)
    return total


def test_output_text_decodes_characters_split_across_tokens() -> None:
    output = OutputText(ByteTokenizer(), None, stop_tokens=(), include_stop=False)
    first, second = ids("é")  # two bytes, two tokens
    assert output.feed(first) == ("", Parsed())
    text, parsed = output.feed(second)
    assert (text, parsed.content) == ("é", "é")


def test_output_text_parses_reasoning_and_tool_calls() -> None:
    parser = OutputParser(thinking=True, tools=True)
    output = OutputText(ByteTokenizer(), parser, stop_tokens=(), include_stop=False)
    parsed = feed_all(output, 'plan it</think>\n\nok <tool_call>\n{"name": "f", '
                              '"arguments": {"x": 1}}\n</tool_call>')
    assert parsed.reasoning == "plan it"
    assert parsed.content.strip() == "ok"
    assert [(c.name, c.arguments) for c in parsed.calls if c.id] == [("f", "")]
    assert "".join(c.arguments for c in parsed.calls) == '{"x": 1}'


@pytest.mark.parametrize("include_stop, shown", [(False, "ab"), (True, "abc")])
def test_a_stop_token_is_dropped_unless_kept(include_stop: bool, shown: str) -> None:
    stop = ord("c") + SPECIALS
    output = OutputText(ByteTokenizer(), None, stop_tokens=(stop,), include_stop=include_stop)
    assert feed_all(output, "abc").content == shown


def test_release_holds_a_possible_stop_and_cuts_at_it() -> None:
    release = Release(["END"], include_stop=False, guard=None, thinking=False)
    assert release.show(Parsed(content="one E"), final=False).text == "one "
    assert not release.ended
    assert release.show(Parsed(content="N"), final=False).text == ""
    assert release.show(Parsed(content="D two"), final=False).text == ""
    assert (release.matched, release.ended) == ("END", True)


def test_release_lets_a_held_tail_go_at_the_end() -> None:
    release = Release(["END"], include_stop=False, guard=None, thinking=False)
    assert release.show(Parsed(content="one EN"), final=False).text == "one "
    assert release.show(Parsed(), final=True).text == "EN"


def test_release_stops_flagged_reasoning_and_answer() -> None:
    rules = RuleSet.from_settings(ModerationRuleSettings(words=["secret"]))
    release = Release([], include_stop=False, guard=OutputGuard(rules), thinking=True)
    delta = release.show(Parsed(reasoning="the secret plan"), final=False)
    assert "secret" not in delta.reasoning
    assert release.flagged and release.ended


def test_logprobs_wait_for_their_text_to_be_shown() -> None:
    window = LogprobWindow()
    window.add({"token": "a"}, "ab", "ab")
    window.add({"token": "c"}, "c", "c")
    assert window.release(1, partial=False) == []
    assert window.release(2, partial=False) == [{"token": "a"}]
    # Cut by the end before its text began: the entry is dropped with it.
    assert window.release(2, partial=True) == []
    assert window.release(3, partial=False) == []


def test_logprobs_of_text_cut_short_go_with_what_was_shown() -> None:
    window = LogprobWindow()
    window.add({"token": "abc"}, "abc", "abc")
    assert window.release(1, partial=True) == [{"token": "abc"}]


def test_logprobs_of_a_split_character_go_with_the_token_that_ends_it() -> None:
    window = LogprobWindow()
    window.add({"token": "half"}, "", "")
    window.add({"token": "rest"}, "é", "é")
    assert window.release(1, partial=False) == [{"token": "half"}, {"token": "rest"}]


def test_logprobs_of_reasoning_tokens_are_not_kept() -> None:
    window = LogprobWindow()
    window.add({"token": "think"}, "hmm", "")
    window.add({"token": "answer"}, "ok", "ok")
    assert window.release(2, partial=True) == [{"token": "answer"}]


def usage() -> Usage:
    return Usage(prompt_tokens=5, completion_tokens=0)


def test_finished_names_the_engine_reason_and_tool_calls() -> None:
    release = Release([], include_stop=False, guard=None, thinking=False)
    eos = FinishEvent("eos", prompt_tokens=5, completion_tokens=3, cached_tokens=2)
    done = finished(release, eos, usage(), calls=0, last_token=None, stop_tokens=())
    assert (done.finish_reason, done.usage.completion_tokens, done.usage.cached_tokens) == (
        "stop", 3, 2)
    assert finished(release, eos, usage(), calls=1, last_token=None,
                    stop_tokens=()).finish_reason == "tool_calls"
    length = FinishEvent("length", prompt_tokens=5, completion_tokens=9)
    assert finished(release, length, usage(), calls=1, last_token=None,
                    stop_tokens=()).finish_reason == "length"
    assert finished(release, eos, usage(), calls=0, last_token=7,
                    stop_tokens=(7,)).stop_token == 7


def test_finished_prefers_a_matched_stop_and_needs_an_engine_end_otherwise() -> None:
    release = Release(["x"], include_stop=False, guard=None, thinking=False)
    with pytest.raises(EngineError):
        finished(release, None, usage(), calls=0, last_token=None, stop_tokens=())
    release.show(Parsed(content="ax"), final=False)
    done = finished(release, None, usage(), calls=0, last_token=None, stop_tokens=())
    assert (done.finish_reason, done.matched_stop) == ("stop", "x")
