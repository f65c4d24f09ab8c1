"""The browser console at `GET /`, driven in headless Chromium (Debian's chromium and chromium-driver,
through selenium) against `sluice serve` on its simulator, over the cleartext port as a browser user
reaches it (HTTP/1.1).

The simulator's `text` field scripts the answer (markdown, HTML, numbered words), so each test knows
exactly what the page must show. Screenshots go to Tests/Interop/artifacts/ (git-ignored); the longest
frame of the 100 KB test is printed and written to artifacts/console-performance.json.
"""

from __future__ import annotations

import http.client
import json
import re
import selectors
import socket
import threading
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from sluice_testlib import IO_TIMEOUT, REPO_ROOT

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
# Safety net for streams that take seconds by design (paced scenarios); never a speed assertion.
STREAM_TIMEOUT = 30.0

EXPECTED_CSP = {
    "default-src": "'none'", "script-src": "'self'", "style-src": "'self'", "connect-src": "'self'",
    "img-src": "'self' data:", "base-uri": "'none'", "form-action": "'none'", "frame-ancestors": "'none'",
}
CONSOLE_FILES = {
    "/": "text/html; charset=utf-8",
    "/console/console.js": "text/javascript; charset=utf-8",
    "/console/console.css": "text/css; charset=utf-8",
    "/console/favicon.svg": "image/svg+xml",
    "/console/vendor/marked.min.js": "text/javascript; charset=utf-8",
    "/console/vendor/purify.min.js": "text/javascript; charset=utf-8",
    "/console/vendor/highlight.min.js": "text/javascript; charset=utf-8",
    "/console/vendor/highlight.css": "text/css; charset=utf-8",
}


NOTES = "Release checklist\n1. Run make test.\n2. Tag the release.\n3. Build the image.\n"
ANSWER = """# Release notes

## What the checklist says

The file lists **three steps**, in this order:

- run the tests
- tag the release
- build the image

```swift
let steps = ["test", "tag", "build"]
for step in steps { print("make \\(step)") }
```

Done."""


# MARK: Fixtures


@pytest.fixture(scope="module")
def browser():
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail(f"{CHROMIUM} and {CHROMEDRIVER} are needed: apt-get install chromium chromium-driver (make test-deps does)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,1000"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(IO_TIMEOUT)
    yield driver
    driver.quit()


@pytest.fixture
def tool_root(tmp_path) -> Path:
    root = tmp_path / "tool-root"
    root.mkdir()
    (root / "notes.txt").write_text(NOTES)
    return root


@pytest.fixture
def console(start_server, tool_root):
    """A server with a tool root, on the simulator."""
    return start_server("--tool-root", str(tool_root))


def screenshot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")
    return path


# MARK: Driving the page


class ConsolePage:
    def __init__(self, driver, port: int):
        self.driver = driver
        self.url = f"http://127.0.0.1:{port}/"
        driver.get(self.url)
        self.wait_for(lambda d: d.find_element(By.ID, "connection").text == "idle", "the page script to start")

    def wait_for(self, condition, what: str, timeout: float = STREAM_TIMEOUT):
        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.05).until(condition)
        except TimeoutException:
            screenshot(self.driver, "console-timeout")
            raise AssertionError(f"timed out waiting for {what}; status: {self.status!r}, connection: {self.connection!r}") from None

    def send(self, prompt: str, simulation: dict, tools=(), max_tokens: int = 4096, thinking_budget: int | None = None,
             client_tools: list | None = None) -> None:
        driver = self.driver
        if not driver.find_element(By.ID, "settings").get_attribute("open"):
            driver.find_element(By.CSS_SELECTOR, "#settings summary").click()  # so that screenshots show the scenario
        self._set("prompt", prompt)
        self._set("simulation", json.dumps(simulation))
        self._set("max-tokens", str(max_tokens))
        self._set("thinking-budget", "" if thinking_budget is None else str(thinking_budget))
        self._set("tool-defs", json.dumps(client_tools) if client_tools else "")
        for box in driver.find_elements(By.CSS_SELECTOR, "input.tool"):
            if box.is_selected() != (box.get_attribute("value") in tools):
                box.click()
        driver.find_element(By.ID, "send").click()

    def _set(self, element_id: str, value: str) -> None:
        # Through the DOM: send_keys would take seconds for long scenarios.
        self.driver.execute_script("document.getElementById(arguments[0]).value = arguments[1]", element_id, value)

    def wait_until_finished(self, timeout: float = STREAM_TIMEOUT) -> str:
        self.wait_for(lambda d: d.find_element(By.ID, "status").get_attribute("data-kind") in ("done", "error"),
                      "the stream to end", timeout)
        return self.status

    @property
    def status(self) -> str:
        return self.driver.find_element(By.ID, "status").text

    @property
    def connection(self) -> str:
        return self.driver.find_element(By.ID, "connection").get_attribute("data-state")

    @property
    def transcript(self):
        return self.driver.find_element(By.ID, "transcript")

    def csp_violations(self) -> list[str]:
        return [entry["message"] for entry in self.driver.get_log("browser") if "Content Security Policy" in entry["message"]]


def numbered_words(count: int) -> list[str]:
    return [f"w{index:04d}" for index in range(1, count + 1)]


def paragraphs(words: list[str], per_paragraph: int = 25) -> str:
    return "\n\n".join(" ".join(words[start:start + per_paragraph]) for start in range(0, len(words), per_paragraph))


def words_of(text: str) -> list[str]:
    return re.findall(r"\w+", text)


def words_shown(page: ConsolePage) -> list[str]:
    return re.findall(r"\bw\d{4}\b", page.transcript.text)


# MARK: Rendering


def test_markdown_code_and_tool_card_render(browser, console):
    page = ConsolePage(browser, console.port)
    browser.get_log("browser")  # start the CSP check from a clean log
    page.send("What does notes.txt say?", {
        "text": ANSWER, "token_interval_ms": 2,
        "tool_calls": [{"name": "read_file", "input": {"path": "notes.txt"}}],
    }, tools=("read_file",))
    assert page.wait_until_finished() == "complete"

    transcript = page.transcript
    assert [h.text for h in transcript.find_elements(By.CSS_SELECTOR, "h1")] == ["Release notes"]
    assert [h.text for h in transcript.find_elements(By.CSS_SELECTOR, "h2")] == ["What the checklist says"]
    assert transcript.find_element(By.CSS_SELECTOR, "strong").text == "three steps"
    assert len(transcript.find_elements(By.CSS_SELECTOR, "ul > li")) == 3
    code = transcript.find_element(By.CSS_SELECTOR, "pre code")
    assert "hljs" in code.get_attribute("class").split()
    keywords = [span.text for span in code.find_elements(By.CSS_SELECTOR, "span.hljs-keyword")]
    assert {"let", "for", "in"} <= set(keywords), keywords
    assert code.text == 'let steps = ["test", "tag", "build"]\nfor step in steps { print("make \\(step)") }'

    card = transcript.find_element(By.CSS_SELECTOR, ".tool-card")
    assert card.get_attribute("data-state") == "complete"
    assert card.find_element(By.CSS_SELECTOR, ".tool-name").text == "read_file"
    assert json.loads(card.find_element(By.CSS_SELECTOR, ".tool-input").text) == {"path": "notes.txt"}
    assert browser.execute_script("return arguments[0].value", card.find_element(By.TAG_NAME, "progress")) == 100
    assert card.find_element(By.CSS_SELECTOR, ".tool-output").text == NOTES.strip()
    assert f"bytes: {len(NOTES)}" in card.find_element(By.CSS_SELECTOR, ".tool-summary").text
    # The card sits between the preamble (first turn) and the answer (second turn).
    order = browser.execute_script(
        "return [...document.getElementById('transcript').children].map(e => e.className)")
    assert order == ["message", "tool-card", "message"]

    stats = browser.find_element(By.ID, "stats").text
    assert re.search(r"\d+ input \+ \d+ output tokens · first token \d+ ms · total \d+ ms · st_[0-9a-f]{16}", stats), stats
    assert page.connection == "closed"
    assert page.csp_violations() == []
    # The picture in the README (docs/console.png): settings folded, the whole transcript in view.
    browser.find_element(By.CSS_SELECTOR, "#settings summary").click()
    browser.set_window_size(1100, 1350)
    try:
        browser.execute_script("window.scrollTo(0, 0)")
        screenshot(browser, "console-render")
    finally:
        browser.set_window_size(1100, 1000)


def test_thinking_client_tool_call_and_web_search_citations_render(browser, console):
    page = ConsolePage(browser, console.port)
    weather = {"name": "get_weather", "input_schema": {"type": "object"}}
    page.send("Weather?", {"seed": 4, "output_tokens": 12, "thinking_tokens": 20,
                           "tool_calls": [{"name": "get_weather", "input": {"city": "Zürich"}}]},
              thinking_budget=1024, client_tools=[weather])
    assert page.wait_until_finished() == "complete"
    transcript = page.transcript
    thinking = transcript.find_element(By.CSS_SELECTOR, "details.thinking")
    assert thinking.get_attribute("open") is None, "thinking starts collapsed"
    assert thinking.find_element(By.TAG_NAME, "summary").text == "Thinking"
    assert browser.execute_script("return arguments[0].textContent", thinking.find_element(By.TAG_NAME, "pre"))
    card = transcript.find_element(By.CSS_SELECTOR, ".tool-card")
    assert card.get_attribute("data-state") == "client"
    assert card.find_element(By.CSS_SELECTOR, ".tool-name").text == "get_weather"
    assert json.loads(card.find_element(By.CSS_SELECTOR, ".tool-input").text) == {"city": "Zürich"}
    assert not card.find_element(By.TAG_NAME, "progress").is_displayed()
    order = browser.execute_script("return [...document.getElementById('transcript').children].map(e => e.className)")
    assert order == ["message", "thinking", "footnotes", "tool-card"]

    page = ConsolePage(browser, console.port)
    page.send("Streams?", {"seed": 5, "output_tokens": 12},
              client_tools=[{"type": "web_search_20250305", "name": "web_search"}])
    assert page.wait_until_finished() == "complete"
    footnotes = page.transcript.find_elements(By.CSS_SELECTOR, "ol.footnotes li")
    assert len(footnotes) == 1 and "Result for Streams?" in footnotes[0].text
    assert "[1]" in page.transcript.find_element(By.CSS_SELECTOR, "article.message").text
    assert [c.find_element(By.CSS_SELECTOR, ".tool-state").text for c in
            page.transcript.find_elements(By.CSS_SELECTOR, ".tool-card")] == ["server_tool_use", "web_search_tool_result"]
    assert page.csp_violations() == []


def test_model_html_runs_nothing(browser, console):
    page = ConsolePage(browser, console.port)
    browser.execute_script("window.__pwned = undefined")
    answer = (
        "Harmless start <img src=x onerror=\"window.__pwned='img'\"> and <script>window.__pwned='script'</script>\n\n"
        "<svg><script>window.__pwned='svg'</script></svg>\n\n"
        "<iframe src=\"javascript:window.__pwned='iframe'\"></iframe>\n\n"
        "[a link](javascript:window.__pwned='link') <a href=x onclick=\"window.__pwned='click'\">click me</a>\n\n"
        "<p id=\"status\" style=\"color:red\">fake status</p> harmless end"
    )
    page.send("Say something dangerous.", {"text": answer})
    assert page.wait_until_finished() == "complete"

    transcript = page.transcript
    # The sanitized img still loads (and fails: /x is not a route); wait for that, then check nothing ran.
    page.wait_for(lambda d: d.execute_script(
        "return [...document.querySelectorAll('#transcript img')].every(i => i.complete)"), "the images to settle")
    console_window = browser.current_window_handle
    for link in transcript.find_elements(By.TAG_NAME, "a"):
        link.click()  # a sanitized link opens in a new tab (target=_blank), or does nothing
    for handle in browser.window_handles:
        if handle != console_window:
            browser.switch_to.window(handle)
            browser.close()
    browser.switch_to.window(console_window)
    assert browser.execute_script("return window.__pwned") is None
    assert transcript.find_elements(By.CSS_SELECTOR, "script, iframe") == []
    handlers = browser.execute_script(
        "return [...document.querySelectorAll('#transcript *')].flatMap(e => [...e.attributes]"
        ".filter(a => a.name.startsWith('on') || a.name === 'style' || a.name === 'id'"
        " || /^\\s*javascript:/i.test(a.value)).map(a => e.tagName + ' ' + a.name))")
    assert handlers == []
    assert "Harmless start" in transcript.text and "harmless end" in transcript.text
    assert browser.find_element(By.ID, "status").text == "complete"  # the page's own #status, not the model's
    screenshot(browser, "console-sanitized")


def test_fallback_without_vendor_libraries_shows_escaped_text(browser, console):
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd("Network.setBlockedURLs", {"urls": ["*/console/vendor/*"]})
    try:
        page = ConsolePage(browser, console.port)
        notice = browser.find_element(By.ID, "notice")
        assert notice.is_displayed()
        assert "libjs-marked" in notice.text and "plain, escaped text" in notice.text
        page.send("Hi", {"text": "# Not a heading <b>nor bold</b>"})
        assert page.wait_until_finished() == "complete"
        assert page.transcript.find_elements(By.CSS_SELECTOR, "h1, b") == []
        assert page.transcript.text == "# Not a heading <b>nor bold</b>"
        screenshot(browser, "console-fallback")
    finally:
        browser.execute_cdp_cmd("Network.setBlockedURLs", {"urls": []})


# MARK: Connection


class DroppingProxy:
    """A TCP proxy between the browser and the server that can kill every connection and stop listening
    (the browser then sees its connections reset and new ones refused) and listen again on the same port.
    It records what the browser sent, so the test can see the Last-Event-ID of the reconnect."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.sent = bytearray()
        self.lock = threading.Lock()
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.listener = None
        self.port = 0
        self.listen()

    def listen(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # stop() closed the listener
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            with self.lock:
                self.pairs.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        selector = selectors.DefaultSelector()
        selector.register(client, selectors.EVENT_READ, upstream)
        selector.register(upstream, selectors.EVENT_READ, client)
        try:
            while True:
                for key, _ in selector.select():
                    data = key.fileobj.recv(65536)
                    if not data:
                        return
                    if key.fileobj is client:
                        with self.lock:
                            self.sent += data
                    key.data.sendall(data)
        except OSError:
            return  # kill() closed the sockets under us
        finally:
            selector.close()
            client.close()
            upstream.close()

    def stop(self) -> None:
        """Stop listening and reset every open connection."""
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() that close() alone would leave blocked
        except OSError:
            pass  # already stopped
        self.listener.close()
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for client, upstream in pairs:
            # SO_LINGER 0: close sends RST, as a crashed proxy or a dropped NAT entry would.
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            client.close()
            upstream.close()

    def last_event_ids(self) -> list[int]:
        with self.lock:
            return [int(value) for value in re.findall(rb"(?im)^last-event-id: *(\d+)\r$", bytes(self.sent))]


def test_dropped_connection_resumes_with_the_full_unduplicated_answer(browser, console):
    proxy = DroppingProxy(console.port)
    try:
        page = ConsolePage(browser, proxy.port)
        words = numbered_words(240)
        page.send("Count slowly.", {"text": paragraphs(words), "token_interval_ms": 15})
        page.wait_for(lambda d: len(words_shown(page)) >= 40, "the first words")
        proxy.stop()
        page.wait_for(lambda d: page.connection == "reconnecting", "the page to notice the drop")
        shown_during_drop = len(words_shown(page))
        screenshot(browser, "console-reconnecting")
        proxy.listen()
        assert page.wait_until_finished() == "complete"
        assert words_shown(page) == words
        assert shown_during_drop < len(words), "the drop came too late to test anything"
        resumed_after = proxy.last_event_ids()
        assert resumed_after and resumed_after[-1] > 0, "the reconnect sent no Last-Event-ID"
    finally:
        proxy.stop()


def test_cancel_ends_the_stream(browser, console):
    page = ConsolePage(browser, console.port)
    page.send("Talk for a long time.", {"output_tokens": 2000, "token_interval_ms": 10})
    page.wait_for(lambda d: len(page.transcript.text) > 100, "some text")
    browser.find_element(By.ID, "cancel").click()
    status = page.wait_until_finished()
    assert status.startswith("cancelled (CANCELLED)"), status
    assert page.connection == "closed"
    assert browser.find_element(By.ID, "send").is_enabled()
    assert not browser.find_element(By.ID, "cancel").is_enabled()
    screenshot(browser, "console-cancelled")


def test_caller_token_goes_only_into_the_authorization_header(browser, start_server, tmp_path):
    token = "console-secret-7f3a"
    keys = tmp_path / "keys"
    keys.write_text(token + "\n")
    proxy = DroppingProxy(start_server("--keys-file", str(keys)).port)
    try:
        page = ConsolePage(browser, proxy.port)
        page.send("Hi", {"text": "Hello."})
        status = page.wait_until_finished()
        assert "UNAUTHENTICATED" in status, status

        token_input = browser.find_element(By.ID, "token")
        token_input.send_keys(token)
        browser.find_element(By.ID, "prompt").click()  # blur: the input's change event stores it
        page.send("Hi", {"text": "Hello."})
        assert page.wait_until_finished() == "complete"
        assert page.transcript.text == "Hello."
        assert browser.execute_script("return sessionStorage.getItem('sluice-console-token')") == token

        sent = bytes(proxy.sent).decode("latin-1")
        request_lines = re.findall(r"(?m)^(?:GET|POST|DELETE) \S+ HTTP/1\.1\r$", sent)
        assert any(line.startswith("POST /v1/streams ") for line in request_lines)
        assert all(token not in line for line in request_lines)
        assert token not in browser.current_url
        # Both requests of the stream carried it, and nothing but an authorization header ever did.
        assert sent.count(token) == sent.count(f"authorization: Bearer {token}\r\n") >= 2
    finally:
        proxy.stop()


# MARK: Headers


def test_console_responses_carry_security_headers(console):
    connection = http.client.HTTPConnection("127.0.0.1", console.port, timeout=IO_TIMEOUT)
    try:
        for path, content_type in CONSOLE_FILES.items():
            connection.request("GET", path)
            response = connection.getresponse()
            body = response.read()
            assert response.status == 200, (path, response.status, body[:200])
            assert response.getheader("content-type") == content_type
            assert_security_headers(response, path)
            assert response.getheader("cache-control") == "no-cache"
            etag = response.getheader("etag")
            assert body, path

            connection.request("GET", path, headers={"if-none-match": etag})
            revalidated = connection.getresponse()
            assert revalidated.status == 304 and revalidated.read() == b""
            assert_security_headers(revalidated, path)

        connection.request("POST", "/", body=b"{}")
        refused = connection.getresponse()
        refused.read()
        assert refused.status == 405 and refused.getheader("allow") == "GET, HEAD"
        assert_security_headers(refused, "POST /")
    finally:
        connection.close()
    # The page itself has no inline script or style for the policy to forbid.
    page = (REPO_ROOT / "Sources/SluiceService/Console/index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)|<style|\sstyle=|\son\w+=", page)


def assert_security_headers(response, what: str) -> None:
    policy = response.getheader("content-security-policy") or ""
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";") if part.strip())
    assert directives == EXPECTED_CSP, (what, policy)
    assert response.getheader("x-content-type-options") == "nosniff", what
    assert response.getheader("referrer-policy") == "no-referrer", what


# MARK: Responsiveness


PERFORMANCE_PROBE = """
window.__frames = { longestGap: 0, frames: 0, longTasks: [], last: performance.now(), running: true };
new PerformanceObserver((list) => {
  for (const entry of list.getEntries()) window.__frames.longTasks.push(entry.duration);
}).observe({ type: 'longtask' });
const tick = (now) => {
  const f = window.__frames;
  f.longestGap = Math.max(f.longestGap, now - f.last);
  f.last = now;
  f.frames += 1;
  if (f.running) requestAnimationFrame(tick);
};
requestAnimationFrame(tick);
"""


def streamed_answer(port: int, request: dict) -> str:
    """The answer's text as an SSE client without a browser reads it (the simulator is deterministic)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=STREAM_TIMEOUT)
    try:
        connection.request("POST", "/v1/streams", body=json.dumps(request), headers={"content-type": "application/json"})
        created = connection.getresponse()
        stream_id = json.loads(created.read())["stream_id"]
        connection.request("GET", f"/v1/streams/{stream_id}/events")
        events = [json.loads(line[len(b"data: "):]) for line in connection.getresponse().read().splitlines()
                  if line.startswith(b"data: ")]
    finally:
        connection.close()
    assert events[-1]["type"] == "stream_complete", events[-1]
    return "".join(event["delta"] for event in events if event["type"] == "message_delta")


def test_a_100_kb_answer_keeps_the_page_responsive(browser, console):
    prompt, simulation, max_tokens = "Write a long answer.", {"output_tokens": 22000, "seed": 5}, 32000
    # Generated prose, lists and code, sent without pacing.
    answer = streamed_answer(console.port, {
        "model": "claude-sonnet-4-5", "max_tokens": max_tokens, "messages": [{"role": "user", "content": prompt}],
        "simulation": simulation,
    })
    answer_bytes = len(answer.encode())
    assert answer_bytes >= 100_000

    page = ConsolePage(browser, console.port)
    browser.execute_script(PERFORMANCE_PROBE)
    page.send(prompt, simulation, max_tokens=max_tokens)
    assert page.wait_until_finished(timeout=120) == "complete"
    frames = browser.execute_script("window.__frames.running = false; return window.__frames")
    rendered_bytes = browser.execute_script(
        "return new TextEncoder().encode(document.getElementById('transcript').textContent).length")
    renders = browser.execute_script(
        "return performance.getEntriesByName('console render').map(m => m.duration)")
    stats = browser.find_element(By.ID, "stats").text
    report = {
        "answer_bytes": answer_bytes, "rendered_text_bytes": rendered_bytes, "stats": stats,
        "animation_frames": frames["frames"], "renders": len(renders),
        "longest_frame_gap_ms": round(frames["longestGap"], 1),
        "longest_task_ms": round(max(frames["longTasks"], default=0.0), 1),
        "long_tasks_over_50ms": len(frames["longTasks"]),
        "longest_render_ms": round(max(renders), 1),
        "median_render_ms": round(sorted(renders)[len(renders) // 2], 1),
    }
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "console-performance.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"100 KB answer: {json.dumps(report)}")
    screenshot(browser, "console-long-answer")
    # Markdown syntax is gone from the rendered text; every word is there once, in order.
    rendered = browser.execute_script("return document.getElementById('transcript').textContent")
    assert words_of(rendered) == words_of(re.sub(r"(?m)^```\w*$", "", answer))
    assert page.transcript.find_elements(By.CSS_SELECTOR, "pre code.hljs"), "the long answer's code was not highlighted"
    # At most one render per animation frame, not one per delta (about 15,000 here).
    assert 0 < len(renders) <= frames["frames"]
    # Frames kept coming while the answer streamed; the bound only catches a page that froze outright.
    assert frames["frames"] > 2
    assert frames["longestGap"] < 10_000
