"""The web console in a real Chromium (Debian's, driven by Playwright) against a real server on
the real model: streaming, reasoning, tool calls, JSON mode, keys made and revoked in the page
and used from the openai SDK, usage matching the ledger, the engines page during a stream, and
no console error in the browser's log. Screenshots of every page at 1280 and 390 px are taken
at the end (into $SEEKSERVE_CONSOLE_SCREENSHOTS when set: scripts/console_screenshots.sh)."""

from __future__ import annotations

import json
import os
import shutil
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from seekserve.engines.default_model import DEFAULT_MODEL, ensure_model
from seekserve.settings import default_data_dir
from tests.e2e.conftest import Server, start_server, stop_server

INSTALL = ("install it with `apt-get update && apt-get install -y chromium chromium-driver` "
           "(Debian/Ubuntu, as root; .ci/run does this), or point SEEKSERVE_CHROMIUM at a "
           "Chromium binary")
CHROMIUM = (os.environ.get("SEEKSERVE_CHROMIUM") or shutil.which("chromium")
            or shutil.which("chromium-browser"))
if CHROMIUM is None:
    pytest.skip(f"the console's browser tests need Chromium, which is not installed: {INSTALL}",
                allow_module_level=True)
try:
    from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright
except ImportError:
    pytest.skip("the console's browser tests need Playwright for Python: "
                "pip install -e '.[test]' (no browser download is needed)",
                allow_module_level=True)

pytestmark = pytest.mark.model

MODEL = "deepseek-v4-pro"
ADMIN = "sk-console-e2e-admin"
PRICING = {"input": "0.27", "cached_input": "0.07", "output": "1.10"}
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"]
WIDTHS = {1280: 900, 390: 844}
LONG = 300_000  # ms: a generation on a 2-core machine that other test runs load too


class BrowserLog:
    """Every console error and uncaught exception of the pages it watches."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def watch(self, page: Page) -> None:
        page.on("console", lambda m: self.errors.append(f"console.{m.type}: {m.text}")
                if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))

    def assert_clean(self) -> None:
        assert self.errors == []


class Ledger:
    """How many requests this module has made that leave a usage row."""

    def __init__(self) -> None:
        self.admitted = 0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    model_path = ensure_model(DEFAULT_MODEL, default_data_dir() / "models", progress=False)
    workdir = tmp_path_factory.mktemp("console")
    config = {
        "server": {"host": "127.0.0.1"},
        "admin_key": ADMIN,
        "engines": {"embedded": {"model_path": str(model_path), "n_ctx": 2048,
                                 "max_running": 2}},
        "models": [{"id": MODEL, "aliases": ["MaaS_Deepseek_V4_pro_20260424"],
                    "engine": "embedded", "pricing": PRICING}],
        "deployments": [{"name": "deepseek", "dialect": "openai"},
                        {"name": "maas-deepseek", "endpoint_path": "maas-deepseek",
                         "dialect": "maas"},
                        {"name": "backend", "hosts": ["backend", "backend:8000"],
                         "dialect": "output_text"}],
        "store": {"flush_interval_s": 0.1},
    }
    srv = start_server(config, workdir, env={"SEEKSERVE_DATA_DIR": str(workdir / "data")})
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        # A fresh profile in a temporary --user-data-dir, removed on close.
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def log() -> BrowserLog:
    return BrowserLog()


@pytest.fixture(scope="module")
def ledger() -> Ledger:
    return Ledger()


@pytest.fixture(scope="module")
def context(browser: Browser, server: Server, log: BrowserLog) -> Iterator[BrowserContext]:
    ctx = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=server.base_url,
                              permissions=["clipboard-read", "clipboard-write"])
    ctx.on("page", log.watch)
    yield ctx
    ctx.close()


@pytest.fixture(scope="module")
def page(context: BrowserContext, server: Server) -> Page:
    """One tab for the module, signed in with the static and the admin key."""
    tab = context.new_page()
    tab.goto("/")  # a browser at the root is sent to the console
    assert tab.url == f"{server.base_url}/console"
    tab.get_by_label("API key").fill(server.api_key)
    tab.get_by_label("Admin key").fill(ADMIN)
    tab.get_by_role("button", name="Save keys").click()
    expect(tab.get_by_label("Deployment")).to_be_visible()
    return tab


def fresh_playground(page: Page) -> None:
    page.goto("/console")  # the keys stay: sessionStorage lives as long as the tab
    expect(page.get_by_label("Deployment")).to_have_value("deepseek")


def send(page: Page, ledger: Ledger, text: str, *, max_tokens: int, wait: bool = True) -> None:
    page.get_by_label("Message 1 (user)").fill(text)
    page.get_by_label("max_tokens").fill(str(max_tokens))
    page.get_by_role("button", name="Send").click()
    ledger.admitted += 1
    if wait:
        expect(page.locator(".answer-head .badge")).to_have_text("Done", timeout=LONG)


def stat(page: Page, name: str) -> str:
    return page.locator(f".answer .stat-{name} dd").inner_text()


def test_a_streamed_answer_appears_token_by_token(page: Page, server: Server, ledger: Ledger,
                                                  log: BrowserLog) -> None:
    # Record every length the answer's text takes as the DOM changes.
    page.evaluate("""() => {
        window.lengths = [];
        new MutationObserver(() => {
            const el = document.querySelector('.answer-text');
            const n = el ? el.textContent.length : 0;
            if (n && n !== window.lengths[window.lengths.length - 1]) window.lengths.push(n);
        }).observe(document.body, {subtree: true, childList: true, characterData: true});
    }""")
    # Greedy and without thinking: the whole budget goes to the answer's text, the same on every
    # run (sampled at the default temperature with thinking on, one CI run got 7 tokens).
    page.get_by_label("Mode", exact=True).select_option("disabled")
    page.get_by_label("Temperature").fill("0")
    send(page, ledger, "Count from one to twenty in English words, separated by commas.",
         max_tokens=40)
    lengths: list[int] = page.evaluate("window.lengths")
    completion = int(stat(page, "completion"))
    assert completion > 10
    assert len(lengths) >= 8, lengths  # many steps, not one block at the end
    assert lengths == sorted(lengths)
    assert stat(page, "finish") in ("stop", "length")
    assert int(stat(page, "prompt")) > 0
    assert float(stat(page, "ttft").removesuffix(" s")) > 0
    assert float(stat(page, "rate")) > 0
    page.get_by_role("button", name="Show code").click()
    page.get_by_role("tab", name="Python · anthropic").click()
    code = page.locator(".code-view pre.code")
    expect(code).to_contain_text(f'anthropic.Anthropic(base_url="{server.base_url}/anthropic"')
    expect(code).to_contain_text("client.messages.stream(")
    expect(code).to_contain_text("max_tokens=40")
    expect(code).not_to_contain_text("not served by this server")  # the Messages API is
    log.assert_clean()


def test_the_reasoning_panel_holds_the_reasoning(page: Page, ledger: Ledger,
                                                 log: BrowserLog) -> None:
    fresh_playground(page)
    page.get_by_label("Mode", exact=True).select_option("enabled")
    page.get_by_label("Effort").select_option("low")
    page.get_by_label("Temperature").fill("0")
    send(page, ledger, "Is 17 a prime number? Answer yes or no.", max_tokens=64)
    panel = page.locator("details.reasoning")
    reasoning = panel.locator(".reasoning-text").inner_text()
    assert reasoning.strip()
    assert "<think>" not in reasoning and "</think>" not in reasoning
    assert int(stat(page, "reasoning")) > 0
    assert reasoning not in page.locator(".answer-text").inner_text()
    panel.locator("summary").click()  # it collapses and opens again
    assert panel.evaluate("el => el.open") is False
    panel.locator("summary").press("Enter")
    assert panel.evaluate("el => el.open") is True
    log.assert_clean()


def test_a_required_tool_call_shows_its_arguments_and_takes_a_result(
        page: Page, ledger: Ledger, log: BrowserLog) -> None:
    fresh_playground(page)
    page.get_by_role("button", name="Insert example").click()
    expect(page.get_by_label("Send tools")).to_be_checked()
    page.get_by_label("tool_choice").select_option("required")
    page.get_by_label("Parallel tool calls").uncheck()  # one call, so max_tokens can be small
    send(page, ledger, "What is the weather in Paris?", max_tokens=40)
    calls = page.locator(".answer .tool-call")
    count = calls.count()
    assert count == 1
    ids = []
    for i in range(count):
        call = calls.nth(i)
        assert call.locator(".fn").inner_text() == "get_weather"
        arguments = json.loads(call.locator(".args").inner_text())
        assert isinstance(arguments["city"], str) and arguments["city"]
        ids.append(call.locator(".call-id").inner_text())
    assert all(i.startswith("call_") for i in ids) and len(set(ids)) == count
    assert stat(page, "finish") == "tool_calls"

    page.get_by_role("button", name="Add tool result turn").click()
    expect(page.locator(".messages .role-assistant .tool-call")).to_have_count(count)
    for i, call_id in enumerate(ids):  # one tool turn per call, after the assistant's turn
        expect(page.get_by_label("tool_call_id").nth(i)).to_have_value(call_id)
        page.get_by_label(f"Message {3 + i} (tool)").fill('{"temperature_c": 21}')
    page.get_by_label("tool_choice").select_option("none")
    page.get_by_label("max_tokens").fill("16")
    page.get_by_role("button", name="Send").click()
    ledger.admitted += 1
    expect(page.locator(".answer-head .badge")).to_have_text("Done", timeout=LONG)
    assert page.locator(".answer-text").inner_text().strip()
    log.assert_clean()


def test_json_mode_output_is_shown_parsed(page: Page, server: Server, ledger: Ledger,
                                          log: BrowserLog) -> None:
    """On the MaaS deployment (the third seed's route), with its model alias."""
    fresh_playground(page)
    page.get_by_label("Deployment").select_option("maas-deepseek")
    page.get_by_label("Model", exact=True).select_option("MaaS_Deepseek_V4_pro_20260424")
    page.get_by_label("Response format").select_option("json_object")
    page.get_by_role("button", name="Show code").click()
    code = page.locator(".code-view pre.code")
    expect(code).to_contain_text(f"curl {server.base_url}/v1/ai/maas-deepseek/chat/completions")
    expect(code).to_contain_text('"type": "json_object"')
    expect(code).to_contain_text("Bearer $SEEKSERVE_API_KEY")
    page.get_by_role("tab", name="Python · openai").click()
    expect(code).to_contain_text(f'base_url="{server.base_url}/v1/ai/maas-deepseek"')
    expect(code).to_contain_text('model="MaaS_Deepseek_V4_pro_20260424"')
    expect(page.get_by_role("tab", name="Python · anthropic")).to_have_count(0)  # openai shape only
    assert server.api_key not in page.content()
    send(page, ledger, "Describe the city of Paris as a JSON object with the keys name and "
         "country.", max_tokens=48)
    expect(page.locator(".json-view .badge")).to_have_text("Parsed JSON")
    shown = page.locator(".json-view pre.json").inner_text()
    parsed = json.loads(shown)
    assert isinstance(parsed, dict)
    assert shown == json.dumps(parsed, indent=2, ensure_ascii=False)  # pretty-printed
    log.assert_clean()


def test_a_key_made_in_the_console_works_until_revoked_there(
        page: Page, server: Server, ledger: Ledger, log: BrowserLog) -> None:
    page.get_by_role("link", name="Keys").click()
    page.get_by_label("Name", exact=True).fill("browser-key")
    page.get_by_label("Requests / minute").fill("100")
    page.get_by_label("Concurrent requests").fill("2")
    page.get_by_label("Expires").fill("30d")
    page.get_by_label(MODEL, exact=True).check()
    page.get_by_role("button", name="Create key").click()
    secret = page.get_by_label("New API key")
    expect(secret).to_be_visible()
    plaintext = secret.input_value()
    assert plaintext.startswith("sk-")
    page.get_by_role("button", name="Copy").click()
    expect(page.get_by_role("button", name="Copied")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == plaintext
    row = page.locator("tr", has_text="browser-key")
    expect(row.locator(".badge")).to_have_text("Active")
    expect(row).to_contain_text("100 rpm · 2 concurrent")

    client = openai.OpenAI(base_url=server.v1, api_key=plaintext, max_retries=0, timeout=120)
    answer = client.chat.completions.create(
        model=MODEL, max_tokens=4, extra_body={"user_id": "sdk-user"},
        messages=[{"role": "user", "content": "Say hi."}])
    ledger.admitted += 1
    assert answer.usage is not None and answer.usage.completion_tokens > 0

    row.get_by_role("button", name="Revoke browser-key").click()
    row.get_by_role("button", name="Confirm revoke").click()
    expect(row.locator(".badge")).to_have_text("Revoked")
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model=MODEL, max_tokens=4,
                                       messages=[{"role": "user", "content": "Say hi."}])
    log.assert_clean()


def test_the_engines_page_shows_a_request_while_it_streams(
        page: Page, context: BrowserContext, ledger: Ledger, log: BrowserLog) -> None:
    engines = context.new_page()
    engines.goto("/console/engines")
    engines.get_by_role("button", name="Continue without a key").click()  # /ready needs none
    running = engines.locator('[data-engine="embedded"] .stat-running dd')
    expect(running).to_have_text("0")
    fresh_playground(page)
    # Greedy counting runs to max_tokens on this model: the stream is still going when Stop is
    # pressed however fast or slow the machine (a 200-token poem once ended first on CI).
    page.get_by_label("Temperature").fill("0")
    send(page, ledger, "Count from 1 to 5000, separated by commas.", max_tokens=1500, wait=False)
    expect(running).to_have_text("1", timeout=LONG)
    expect(engines.locator('[data-engine="embedded"] .badge')).to_have_text("serving")
    # By keyboard: the button re-renders with every token, and a pointer click waits for two
    # identical animation frames, which a starved renderer may not give it.
    page.get_by_role("button", name="Stop").press("Enter")
    expect(page.locator(".answer-head .badge")).to_have_text("Stopped")
    expect(running).to_have_text("0", timeout=LONG)
    engines.close()
    log.assert_clean()


def test_the_usage_page_shows_the_requests_just_made(page: Page, server: Server,
                                                     ledger: Ledger, log: BrowserLog) -> None:
    admin = httpx.Client(base_url=server.base_url, timeout=30,
                         headers={"Authorization": f"Bearer {ADMIN}"})
    deadline = time.monotonic() + 30
    while True:  # the ledger copies its journal to the store every 0.1 s
        rows: list[dict[str, Any]] = admin.get("/admin/requests").json()["data"]
        if len(rows) >= ledger.admitted or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(rows) == ledger.admitted
    page.get_by_role("link", name="Usage").click()
    table = page.locator("table.requests tbody tr")
    expect(table).to_have_count(len(rows))
    for row in rows:
        shown = page.locator(f'tr[data-request-id="{row["request_id"]}"]')
        for field in ("prompt", "cached", "completion", "reasoning"):
            assert shown.locator(f"td.{field}").inner_text().replace(",", "") == str(
                row[f"{field}_tokens"]), (row, field)
        expect(shown.locator(".badge")).to_have_text(row["status"])
    statuses = {row["status"] for row in rows}
    assert "cancelled" in statuses  # the stream stopped on the engines test
    sdk_row = next(row for row in rows if row["user_id"] == "sdk-user")
    expect(page.locator(f'tr[data-request-id="{sdk_row["request_id"]}"]')).to_contain_text(
        "browser-key")
    totals = admin.get("/admin/usage", params={"group_by": "model"}).json()["data"]
    [total] = totals
    requests_metric = page.locator(".summary .metric", has_text="Requests").locator("dd").first
    expect(requests_metric).to_have_text(str(total["requests"]))
    prompt_metric = page.locator(".summary .metric", has_text="Prompt tokens").locator("dd").first
    expect(prompt_metric).to_have_text(f"{total['prompt_tokens']:,}")
    per_key = page.locator("section", has=page.get_by_role("heading", name="Per key"))
    expect(per_key).to_contain_text("browser-key")
    expect(per_key).to_contain_text("static key / no key")
    expect(page.locator(".chart .uplot")).to_have_count(2)  # tokens and cost per day
    admin.close()
    log.assert_clean()


def _png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", header[16:24])
    return width, height


def test_screenshots_of_every_page(page: Page, server: Server, ledger: Ledger,
                                   log: BrowserLog, tmp_path: Path) -> None:
    out = Path(os.environ.get("SEEKSERVE_CONSOLE_SCREENSHOTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {ADMIN}"},
                      timeout=30) as admin:
        made = admin.post("/admin/keys", json={
            "name": "team-a", "rpm": 60, "tpm": 100000, "max_concurrency": 4,
            "max_user_concurrency": 1, "budget_usd": "5", "expires": "90d"})
        assert made.status_code == 201
    fresh_playground(page)
    page.get_by_label("Mode", exact=True).select_option("enabled")
    page.get_by_label("Effort").select_option("low")
    page.get_by_label("System prompt").fill("You are a concise assistant.")
    send(page, ledger, "In one sentence: why is the sea salty?", max_tokens=80)
    shots = {"playground": None, "keys": "Keys", "usage": "Usage", "engines": "Engines"}
    for width, height in WIDTHS.items():
        page.set_viewport_size({"width": width, "height": height})
        for name, link in shots.items():
            if link is not None:
                page.get_by_role("link", name=link).click()
                expect(page.get_by_role("heading", level=1)).to_have_text(link)
            if name == "usage":
                expect(page.locator(".chart canvas").first).to_be_visible()
            if name == "engines":
                expect(page.locator('[data-engine="embedded"]')).to_be_visible()
            page.evaluate("window.scrollTo(0, 0)")
            path = out / f"{name}-{width}.png"
            page.screenshot(path=str(path), full_page=True)
            assert _png_size(path)[0] == width
        page.get_by_role("link", name="Playground").click()
        if width == 1280:  # the answer is gone once the page is left: ask again at 390 px
            send(page, ledger, "In one sentence: why is the sea salty?", max_tokens=48)
    log.assert_clean()
