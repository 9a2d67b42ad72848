"""Content safety: rule matching, the streaming output guard fed in every split, and the HTTP
classifier against a real local server."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fastapi import FastAPI, Request

from seekserve.moderation import Moderator, OutputGuard, RuleSet
from seekserve.protocol.errors import ContentFilterError, ServiceUnavailableError
from seekserve.settings import (
    ModerationRuleSettings,
    ModerationSettings,
    RegexRuleSettings,
    Settings,
    SettingsError,
)
from tests.api.conftest import live_server
from tests.ports import free_port


class RecordedEvents:
    def __init__(self) -> None:
        self.filtered: Counter[str] = Counter()
        self.errors = 0

    def count_content_filtered(self, stage: str) -> None:
        self.filtered[stage] += 1

    def count_moderation_error(self) -> None:
        self.errors += 1


def rules(*words: str, patterns: tuple[tuple[str, int], ...] = ()) -> RuleSet:
    return RuleSet.from_settings(ModerationRuleSettings(
        words=list(words),
        patterns=[RegexRuleSettings(pattern=p, max_length=n) for p, n in patterns]))


@pytest.mark.parametrize(("text", "flagged"), [
    ("this is bad.", True),
    ("BAD", True),
    ("Bad, very bad", True),
    ("badge", False),
    ("abad", False),
    ("bad_name", False),  # _ is a word character
    ("a very bad thing", True),
    ("a very  bad thing", True),  # "bad" alone still matches
    ("nothing here", False),
])
def test_words_match_whole_words_case_insensitively(text: str, flagged: bool) -> None:
    assert (rules("bad", "very bad thing").search(text) is not None) is flagged


def test_a_match_reports_where_it_starts_and_which_rule() -> None:
    ruleset = rules("bad", patterns=((r"\d{4}-\d{4}", 9),))
    word = ruleset.search("it was bad")
    card = ruleset.search("card 1234-5678 then bad")
    assert word is not None and (word.rule, word.start) == ("words", 7)
    assert card is not None and (card.rule, card.start) == ("pattern[0]", 5)


def test_regex_case_follows_its_setting() -> None:
    sensitive = RuleSet.from_settings(ModerationRuleSettings(patterns=[
        RegexRuleSettings(pattern="SECRET", max_length=6, ignore_case=False)]))
    assert sensitive.search("a SECRET") is not None
    assert sensitive.search("a secret") is None


def test_the_guard_holds_back_only_what_the_longest_rule_needs() -> None:
    guard = OutputGuard(rules("bad"))  # span 4: "bad" and the character after it
    released = [guard.feed(c) for c in "hello world"]
    assert released == ["", "", "", "h", "e", "l", "l", "o", " ", "w", "o"]
    assert guard.held_back == "rld"
    assert guard.finish() == "rld"
    assert not guard.flagged


def test_the_guard_stops_before_a_word_fed_one_character_at_a_time() -> None:
    guard = OutputGuard(rules("bad"))
    out = "".join(guard.feed(c) for c in "it is bad news, more text")
    assert out == "it is "
    assert guard.flagged and guard.flag is not None and guard.flag.start == 6
    assert guard.feed("anything") == "" and guard.finish() == ""


def test_a_word_at_the_very_end_is_caught_by_finish() -> None:
    guard = OutputGuard(rules("bad"))
    out = "".join(guard.feed(c) for c in "that was bad")
    assert out == "that was " and not guard.flagged  # "bad" could still become "badge"
    assert guard.finish() == ""
    assert guard.flagged


def test_a_longer_word_that_starts_like_a_rule_is_released() -> None:
    guard = OutputGuard(rules("bad"))
    out = "".join(guard.feed(c) for c in "a badge") + guard.finish()
    assert out == "a badge" and not guard.flagged


def test_a_regex_rule_holds_back_its_declared_length() -> None:
    guard = OutputGuard(rules(patterns=((r"\d{4}-\d{4}", 9),)))
    assert guard.feed("card: 1234-56") == "card:"
    assert guard.held_back == " 1234-56"
    assert guard.feed("78 ok") == " "
    assert guard.flagged and guard.flag is not None and guard.flag.rule == "pattern[0]"


def test_without_rules_text_passes_at_once() -> None:
    guard = OutputGuard(RuleSet([]))
    assert [guard.feed(c) for c in "abc"] == ["a", "b", "c"]
    assert guard.finish() == ""


WORDS = ("bad", "evil", "nope")
# Rule words, their fragments and neighbours, so that matches (and near misses) are common.
PIECES = ("bad", "ba", "d", "evil", "ev", "il", "nope", "no", "pe", "x", " ", " ", ".", "_")


def random_text(rng: random.Random) -> str:
    return "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 15)))


def feed_in_parts(guard: OutputGuard, text: str, rng: random.Random) -> str:
    out, i = [], 0
    while i < len(text):
        step = rng.randint(1, 6)
        out.append(guard.feed(text[i:i + step]))
        i += step
    out.append(guard.finish())
    return "".join(out)


@pytest.mark.parametrize("seed", range(5))
def test_random_splits_release_exactly_the_text_before_the_first_match(seed: int) -> None:
    rng = random.Random(seed)
    ruleset = rules(*WORDS)
    flagged_cases = 0
    for _ in range(400):
        text = random_text(rng)
        first = ruleset.search(text)
        for splitter in ("chars", "random"):
            guard = OutputGuard(ruleset)
            if splitter == "chars":
                out = "".join(guard.feed(c) for c in text) + guard.finish()
            else:
                out = feed_in_parts(guard, text, rng)
            if first is None:
                assert out == text and not guard.flagged
            else:
                assert out == text[:first.start] and guard.flagged
                assert guard.flag is not None and guard.flag.start == first.start
                flagged_cases += 1
    assert flagged_cases > 50  # the generator really produces matches


@pytest.mark.parametrize("seed", range(3))
def test_random_splits_with_phrases_and_regexes_never_release_a_match(seed: int) -> None:
    rng = random.Random(100 + seed)
    ruleset = rules("bad", "no no", patterns=((r"e[vil]{2,4}", 5),))
    for _ in range(400):
        text = random_text(rng)
        guard = OutputGuard(ruleset)
        out = feed_in_parts(guard, text, rng)
        assert text.startswith(out)
        assert guard.flagged is (ruleset.search(text) is not None)
        if guard.flagged:
            assert ruleset.search(out) is None
        else:
            assert out == text


def moderation(**fields: Any) -> ModerationSettings:
    return ModerationSettings.model_validate(fields)


async def test_a_flagged_prompt_is_a_400_content_filter() -> None:
    events = RecordedEvents()
    moderator = Moderator.from_settings(moderation(rules={"words": ["forbidden"]}), events)
    await moderator.check_prompt(["a fine prompt"], deployment=None, user_id="u1")
    with pytest.raises(ContentFilterError) as refused:
        await moderator.check_prompt(["fine", "this is Forbidden!"], deployment=None,
                                     user_id="u1")
    err = refused.value
    assert (err.status_code, err.error_type, err.code) == (400, "invalid_request_error",
                                                           "content_filter")
    assert "forbidden" not in err.message.lower()  # the rule list is not told to clients
    assert events.filtered == Counter({"prompt": 1})


async def test_deployment_rules_add_to_the_global_ones() -> None:
    moderator = Moderator.from_settings(moderation(
        rules={"words": ["global"]}, deployments={"strict": {"words": ["local"]}}))
    await moderator.check_prompt(["local words"], deployment="other", user_id=None)
    await moderator.check_prompt(["local words"], deployment=None, user_id=None)
    for deployment in ("strict", None):
        with pytest.raises(ContentFilterError):
            await moderator.check_prompt(["global words"], deployment=deployment, user_id=None)
    with pytest.raises(ContentFilterError):
        await moderator.check_prompt(["local words"], deployment="strict", user_id=None)
    guard = moderator.output_guard("strict")
    assert guard is not None
    assert guard.feed("say local now") == "say " and guard.flagged


def test_output_guards_are_only_handed_out_when_needed() -> None:
    assert Moderator.from_settings(moderation()).output_guard(None) is None
    off = moderation(rules={"words": ["x"]}, check_output=False)
    assert Moderator.from_settings(off).output_guard(None) is None
    assert Moderator.from_settings(moderation(rules={"words": ["x"]})).output_guard(None)


def test_bad_moderation_settings_are_refused_at_load() -> None:
    with pytest.raises(SettingsError, match="not a valid regular expression"):
        Settings.load(None, moderation={"rules": {"patterns": [
            {"pattern": "(unclosed", "max_length": 5}]}})
    with pytest.raises(SettingsError, match="unknown deployment 'nope'"):
        Settings.load(None, moderation={"deployments": {"nope": {"words": ["x"]}}})


class ClassifierServer:
    """A tiny OpenAI-compatible /v1/moderations endpoint, its answers set by the test."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, Any], str | None]] = []
        self.delay = 0.0
        self.status = 200
        self.answer: Any = None
        self.app = FastAPI()

        @self.app.post("/v1/moderations")
        async def moderations(request: Request) -> Any:
            body = await request.json()
            self.received.append((body, request.headers.get("authorization")))
            await asyncio.sleep(self.delay)
            if self.status != 200:
                from fastapi.responses import JSONResponse
                return JSONResponse({"error": "down"}, status_code=self.status)
            if self.answer is not None:
                return self.answer
            return {"id": "modr-1", "model": body.get("model", "m"),
                    "results": [{"flagged": "attack" in body["input"], "categories": {}}]}


@pytest.fixture
async def classifier() -> AsyncIterator[tuple[ClassifierServer, str]]:
    server = ClassifierServer()
    async with live_server(server.app) as url:
        yield server, f"{url}/v1/moderations"


async def test_the_classifier_is_asked_and_its_flag_refuses_the_prompt(
        classifier: tuple[ClassifierServer, str]) -> None:
    server, url = classifier
    events = RecordedEvents()
    moderator = Moderator.from_settings(moderation(classifier={
        "url": url, "api_key": "mod-key", "model": "omni-moderation-latest"}), events)
    try:
        await moderator.check_prompt(["hello", "there"], deployment=None, user_id="u")
        with pytest.raises(ContentFilterError):
            await moderator.check_prompt(["plan an attack"], deployment=None, user_id="u")
    finally:
        await moderator.aclose()
    assert server.received == [
        ({"input": "hello\n\nthere", "model": "omni-moderation-latest"}, "Bearer mod-key"),
        ({"input": "plan an attack", "model": "omni-moderation-latest"}, "Bearer mod-key"),
    ]
    assert events.filtered == Counter({"prompt": 1}) and events.errors == 0


async def test_rules_are_checked_before_the_classifier(
        classifier: tuple[ClassifierServer, str]) -> None:
    server, url = classifier
    moderator = Moderator.from_settings(moderation(rules={"words": ["banned"]},
                                                   classifier={"url": url}))
    try:
        with pytest.raises(ContentFilterError):
            await moderator.check_prompt(["banned"], deployment=None, user_id=None)
    finally:
        await moderator.aclose()
    assert server.received == []


@pytest.mark.parametrize("failure", ["slow", "status", "shape"])
async def test_a_failing_classifier_follows_its_policy(
        classifier: tuple[ClassifierServer, str], failure: str) -> None:
    server, url = classifier
    if failure == "slow":
        server.delay = 1.0
    elif failure == "status":
        server.status = 500
    else:
        server.answer = {"results": [{"flagged": "yes"}]}
    events = RecordedEvents()
    open_policy = Moderator.from_settings(moderation(classifier={
        "url": url, "timeout_s": 0.2, "on_error": "fail_open"}), events)
    closed_policy = Moderator.from_settings(moderation(classifier={
        "url": url, "timeout_s": 0.2, "on_error": "fail_closed"}), events)
    try:
        await open_policy.check_prompt(["plan an attack"], deployment=None, user_id=None)
        with pytest.raises(ServiceUnavailableError) as refused:
            await closed_policy.check_prompt(["hello"], deployment=None, user_id=None)
    finally:
        await open_policy.aclose()
        await closed_policy.aclose()
    assert refused.value.status_code == 503 and refused.value.code == "moderation_unavailable"
    assert events.errors == 2 and events.filtered == Counter()


async def test_an_unreachable_classifier_fails_open() -> None:
    events = RecordedEvents()
    moderator = Moderator.from_settings(moderation(classifier={
        "url": f"http://127.0.0.1:{free_port()}/v1/moderations"}), events)
    try:
        await moderator.check_prompt(["plan an attack"], deployment=None, user_id=None)
    finally:
        await moderator.aclose()
    assert events.errors == 1
