"""StopMatcher: stop strings found across arbitrary text splits, partial tails held back."""

from __future__ import annotations

import pytest

from seekserve.chat.stops import StopMatcher


def feed_chars(matcher: StopMatcher, text: str) -> str:
    out = "".join(matcher.feed(ch) for ch in text)
    return out + matcher.flush()


@pytest.mark.parametrize(
    ("stops", "text", "shown", "matched"),
    [
        ([], "hello world", "hello world", None),
        (["world"], "hello world!", "hello ", "world"),
        (["\n\n"], "line one\nline two\n\nrest", "line one\nline two", "\n\n"),
        (["abc"], "ababab abd", "ababab abd", None),
        (["xyz", "wor"], "hello world", "hello ", "wor"),
        (["lo w", "hello"], "hello world", "", "hello"),
        (["o", "ow"], "now", "n", "o"),  # the first stop to complete wins
        (["end"], "the en", "the en", None),
        (["ééé"], "café ééé!", "café ", "ééé"),
    ],
)
def test_matches_one_character_at_a_time(stops: list[str], text: str, shown: str,
                                         matched: str | None) -> None:
    matcher = StopMatcher(stops)
    assert feed_chars(matcher, text) == shown
    assert matcher.matched == matched


def test_tail_that_could_start_a_stop_is_held_back() -> None:
    matcher = StopMatcher(["STOP"])
    assert matcher.feed("abc ST") == "abc "
    assert matcher.feed("O") == ""
    assert matcher.feed("P and more") == ""
    assert matcher.matched == "STOP"
    assert matcher.feed("ignored") == ""


def test_held_tail_is_released_when_it_does_not_complete() -> None:
    matcher = StopMatcher(["STOP"])
    assert matcher.feed("ST") == ""
    assert matcher.feed("AR") == "STAR"
    assert matcher.flush() == ""


def test_whole_chunks_with_the_stop_inside() -> None:
    matcher = StopMatcher(["</answer>"])
    assert matcher.feed("yes</ans") == "yes"
    assert matcher.feed("wer> trailing") == ""
    assert matcher.matched == "</answer>"
