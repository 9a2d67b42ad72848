"""Content safety: prompt checks (rule lists, an optional HTTP classifier) and a streaming
output guard that holds back only the characters a rule could still need.

`user_id` is the identity for content safety: every flag is logged with it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import httpx

from seekserve.protocol.errors import ContentFilterError, ServiceUnavailableError
from seekserve.settings import ClassifierSettings, ModerationRuleSettings, ModerationSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rule:
    """One compiled rule. `span` is the most characters a match, with whatever it looks at
    past its end, can cover: a word needs the character after it to know the word ended."""

    name: str
    regex: re.Pattern[str]
    span: int


@dataclass(frozen=True)
class Flag:
    rule: str
    # Where the match starts in the text checked (for the guard: in the whole output).
    start: int


class RuleSet:
    """Words (whole-word, case-insensitive) and regexes; `search` finds the first match."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(rules)
        self.span = max((r.span for r in self.rules), default=0)

    @classmethod
    def from_settings(cls, *sections: ModerationRuleSettings) -> RuleSet:
        words = sorted({w for s in sections for w in s.words if w.strip()}, key=len, reverse=True)
        rules = []
        if words:
            alternatives = "|".join(re.escape(w) for w in words)
            rules.append(Rule("words", re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)",
                                                  re.IGNORECASE), len(words[0]) + 1))
        for i, pattern in enumerate(p for s in sections for p in s.patterns):
            flags = re.IGNORECASE if pattern.ignore_case else 0
            rules.append(Rule(f"pattern[{i}]", re.compile(pattern.pattern, flags),
                              pattern.max_length))
        return cls(rules)

    def __bool__(self) -> bool:
        return bool(self.rules)

    def search(self, text: str, pos: int = 0, *, complete: bool = True) -> Flag | None:
        """The earliest match at or after `pos`. Unless `complete`, a match is only reported
        once the text holds its rule's whole span, since more text could still undo it."""
        found: Flag | None = None
        for rule in self.rules:
            for match in rule.regex.finditer(text, pos):
                if match.end() == match.start():
                    continue  # an empty match flags nothing
                if complete or match.start() + rule.span <= len(text):
                    if found is None or match.start() < found.start:
                        found = Flag(rule.name, match.start())
                break  # only the leftmost match of a rule can be the earliest
        return found


class OutputGuard:
    """Fed generated text deltas; releases text once no rule can match across the boundary.

    It holds back `span - 1` characters of the longest rule (a word's length; a regex's
    declared max_length minus one). Once a rule matches, `flagged` is set, the text before the
    match is the last released, and generation should stop with finish_reason content_filter.
    """

    def __init__(self, rules: RuleSet) -> None:
        self.rules = rules
        self._hold = max(0, rules.span - 1)
        self._context = ""  # the end of what was released: lookbehinds look into it
        self._pending = ""
        self._released = 0
        self.flag: Flag | None = None

    @property
    def flagged(self) -> bool:
        return self.flag is not None

    @property
    def held_back(self) -> str:
        return self._pending

    def feed(self, delta: str) -> str:
        """The text that is safe to send now ("" while held back or once flagged)."""
        if self.flag is not None:
            return ""
        self._pending += delta
        return self._release(final=False)

    def finish(self) -> str:
        """At the end of generation: the rest, unless it holds a match."""
        if self.flag is not None:
            return ""
        return self._release(final=True)

    def _release(self, *, final: bool) -> str:
        text = self._context + self._pending
        base = len(self._context)
        flag = self.rules.search(text, base, complete=final)
        if flag is not None:
            # Stop before any match, even one that more text could still have undone.
            earliest = self.rules.search(text, base)
            end = earliest.start if earliest is not None else flag.start
        else:
            end = len(text) if final else max(base, len(text) - self._hold)
        # Never cut where the cut itself ends a match: "bad|ge" would show "bad". Such a match
        # may start in text already released; the context's first character is lookbehind only.
        lookback = max(0, base - self.rules.span)
        while (inside := self.rules.search(text[:end], lookback)) is not None:
            end = max(base, inside.start)
            if end == base:
                break
        out = text[base:end]
        if flag is not None:
            self.flag = Flag(flag.rule, self._released + flag.start - base)
            self._pending = ""
        else:
            self._pending = text[end:]
            self._context = (self._context + out)[-(self.rules.span + 1):]
        self._released += len(out)
        return out


class ModerationEvents(Protocol):
    def count_content_filtered(self, stage: str) -> None: ...

    def count_moderation_error(self) -> None: ...


class _NoEvents:
    def count_content_filtered(self, stage: str) -> None:
        pass

    def count_moderation_error(self) -> None:
        pass


class ClassifierError(Exception):
    """The classifier could not give an answer (down, slow, or an answer of the wrong shape)."""


class PromptPolicy(Protocol):
    """One check of a prompt; returns the name of what flagged it, or None."""

    async def check(self, texts: Sequence[str], deployment: str | None) -> str | None: ...

    async def aclose(self) -> None: ...


class RuleListPolicy:
    """The configured words and regexes, global plus those of the request's deployment."""

    def __init__(self, settings: ModerationSettings) -> None:
        self.global_rules = RuleSet.from_settings(settings.rules)
        self.by_deployment = {name: RuleSet.from_settings(settings.rules, extra)
                              for name, extra in settings.deployments.items()}

    def rules_for(self, deployment: str | None) -> RuleSet:
        if deployment is None:
            return self.global_rules
        return self.by_deployment.get(deployment, self.global_rules)

    async def check(self, texts: Sequence[str], deployment: str | None) -> str | None:
        rules = self.rules_for(deployment)
        for text in texts:
            flag = rules.search(text)
            if flag is not None:
                return flag.rule
        return None

    async def aclose(self) -> None:
        pass


class HttpClassifier:
    """An OpenAI-compatible moderation endpoint: `{"input": text}` -> `results[0].flagged`."""

    def __init__(self, settings: ClassifierSettings,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.settings = settings
        headers = {}
        if settings.api_key is not None:
            headers["Authorization"] = f"Bearer {settings.api_key.get_secret_value()}"
        self._client = httpx.AsyncClient(timeout=settings.timeout_s, headers=headers,
                                         transport=transport)

    async def flagged(self, text: str) -> bool:
        body: dict[str, str] = {"input": text}
        if self.settings.model is not None:
            body["model"] = self.settings.model
        try:
            response = await self._client.post(self.settings.url, json=body)
            response.raise_for_status()
            verdict = response.json()["results"][0]["flagged"]
        except httpx.HTTPError as exc:
            raise ClassifierError(f"{type(exc).__name__}: {exc}") from exc
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise ClassifierError(f"unexpected answer: {exc!r}") from exc
        if not isinstance(verdict, bool):
            raise ClassifierError(f"results[0].flagged is {verdict!r}, not a boolean")
        return verdict

    async def aclose(self) -> None:
        await self._client.aclose()


class ClassifierPolicy:
    """Asks the classifier about the prompt's texts joined; its on_error policy on failure."""

    def __init__(self, classifier: HttpClassifier, events: ModerationEvents) -> None:
        self.classifier = classifier
        self.events = events

    async def check(self, texts: Sequence[str], deployment: str | None) -> str | None:
        try:
            return "classifier" if await self.classifier.flagged("\n\n".join(texts)) else None
        except ClassifierError as exc:
            self.events.count_moderation_error()
            policy = self.classifier.settings.on_error
            log.warning("moderation classifier failed (%s): %s", exc,
                        "refusing the request" if policy == "fail_closed" else "allowing it")
            if policy == "fail_closed":
                raise ServiceUnavailableError(
                    "The content safety check is unavailable; try again shortly.",
                    code="moderation_unavailable") from None
            return None

    async def aclose(self) -> None:
        await self.classifier.aclose()


class Moderator:
    """Runs the prompt policies in order and hands out output guards."""

    def __init__(self, rules: RuleListPolicy, policies: Iterable[PromptPolicy] = (), *,
                 check_output: bool = True, events: ModerationEvents | None = None) -> None:
        self.rules = rules
        self.policies: list[PromptPolicy] = [rules, *policies]
        self.check_output = check_output
        self.events: ModerationEvents = events or _NoEvents()

    @classmethod
    def from_settings(cls, settings: ModerationSettings, events: ModerationEvents | None = None,
                      transport: httpx.AsyncBaseTransport | None = None) -> Moderator:
        events = events or _NoEvents()
        extra: list[PromptPolicy] = []
        if settings.classifier is not None:
            extra.append(ClassifierPolicy(HttpClassifier(settings.classifier, transport), events))
        return cls(RuleListPolicy(settings), extra, check_output=settings.check_output,
                   events=events)

    async def check_prompt(self, texts: Sequence[str], *, deployment: str | None,
                           user_id: str | None) -> None:
        """Raise ContentFilterError (400, code content_filter) when a policy flags the prompt."""
        for policy in self.policies:
            reason = await policy.check(texts, deployment)
            if reason is not None:
                self.events.count_content_filtered("prompt")
                log.info("prompt flagged by %s (deployment %s, user_id %r)", reason,
                         deployment, user_id)
                raise ContentFilterError(
                    "The request was rejected because it was flagged by the content filter.")

    def output_guard(self, deployment: str | None) -> OutputGuard | None:
        """A guard for one generation, or None when output is not checked (or has no rules)."""
        rules = self.rules.rules_for(deployment)
        if not self.check_output or not rules:
            return None
        return OutputGuard(rules)

    def output_flagged(self, guard: OutputGuard, *, deployment: str | None,
                       user_id: str | None) -> None:
        """Record that `guard` stopped a generation (call once, when it flags)."""
        self.events.count_content_filtered("output")
        log.info("output stopped by %s (deployment %s, user_id %r)",
                 guard.flag.rule if guard.flag else "?", deployment, user_id)

    async def aclose(self) -> None:
        for policy in self.policies:
            await policy.aclose()
