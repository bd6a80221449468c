"""The web plugin against the real things it serves: headless Chromium driven by
Selenium (values pushed into the page, a write and a refusal from it, a screenshot
kept as an artefact) and a real Prometheus scraping /metrics."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import socket
import subprocess
import textwrap
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from plugboard.sdk import Change, Client

from .conftest import Processes
from .processes import (
    ROOT,
    BrokerProcess,
    ManagedProcess,
    bundled_plugin,
    cannot_run,
    free_port,
    short_tmpdir,
)

pytestmark = pytest.mark.integration
ARTIFACTS = Path(os.environ.get("PLUGBOARD_TEST_ARTIFACTS", ROOT / "test-artifacts"))


def needs(program: str, package: str) -> str:
    """The path of ``program``, else a skip naming the Debian package (a failure under
    CI=true, where .ci/run installs it)."""
    path = shutil.which(program)
    if path is None:
        cannot_run(f"{program} is not installed (Debian package {package})")
    return path


@dataclass
class Served:
    broker: BrokerProcess
    url: str
    panel: Client
    """Plugin ``panel`` (started by hand): owns panel/level, 0..10, writable by anyone."""


@pytest.fixture
async def served(processes: Processes) -> AsyncIterator[Served]:
    root, port = short_tmpdir(), free_port()
    bundled_plugin(root, "web", port=port, metrics=["panel/#"])
    broker = processes.broker(None, "--plugins", str(root))
    async with Client(broker.ipc, role="plugin", name="panel") as panel:
        await panel.declare("panel/level", "int", 1, min=0, max=10, writable_by=["*"],
                            unit="steps")
        async with Client(broker.ipc) as client:
            url = await client.subscribe("web/url")
            events = await processes.until(
                url, lambda e: isinstance(e, Change) and e.value.startswith("http"), 20)
        yield Served(broker, events[-1].value, panel)


@pytest.fixture
async def browser() -> AsyncIterator[WebDriver]:
    """Headless Chromium, started and quit in a thread: the event loop keeps running the
    test's own clients (their heartbeats) while the browser takes its seconds."""
    options = webdriver.ChromeOptions()
    options.binary_location = needs("chromium", "chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(argument)
    service = Service(needs("chromedriver", "chromium-driver"))
    driver = await asyncio.to_thread(webdriver.Chrome, options=options, service=service)
    try:
        yield driver
    finally:
        await asyncio.to_thread(driver.quit)


def text_in_page(driver: WebDriver, selector: str) -> str:
    """The rendered text of the first element matching ``selector``, "" if none, read in
    the page in one step: the tables are redrawn as figures change, so an element found
    in one call may be gone by the next."""
    text = driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';",
        selector)
    return str(text)


def value_in_page(driver: WebDriver, name: str) -> str:
    return text_in_page(driver, f'#props tr[data-name="{name}"] td.value')


def click_in_page(driver: WebDriver, selector: str) -> None:
    """Click the element matching ``selector`` in one step in the page (see text_in_page)."""
    driver.execute_script("document.querySelector(arguments[0]).click()", selector)


def wait_for(driver: WebDriver, condition: object, timeout: float = 10) -> None:
    WebDriverWait(driver, timeout, poll_frequency=0.05).until(condition)  # type: ignore[arg-type]


async def test_the_dashboard_in_a_real_browser(served: Served, browser: WebDriver) -> None:
    # Every wait runs in a thread: the test's own clients must keep their heartbeats.
    await asyncio.to_thread(browser.get, served.url)
    await asyncio.to_thread(wait_for, browser, lambda d: value_in_page(d, "panel/level") == "1")
    browser.execute_script("window.sameDocument = true")
    # A change is pushed into the open page: no reload, no polling by the page.
    await served.panel.set("panel/level", 7)
    await asyncio.to_thread(wait_for, browser, lambda d: value_in_page(d, "panel/level") == "7")
    assert browser.execute_script("return window.sameDocument") is True
    # A write from the page the broker refuses shows the broker's reason.
    click_in_page(browser, '#props tr[data-name="panel/level"]')
    browser.find_element(By.ID, "set-value").send_keys("42")
    browser.find_element(By.ID, "set-button").click()
    result = browser.find_element(By.ID, "set-result")
    await asyncio.to_thread(wait_for, browser, lambda d: "maximum" in result.text)
    assert "42" in result.text and result.get_attribute("class") == "bad", result.text
    # One it accepts reaches the property's owner.
    changes = await served.panel.subscribe("panel/level", current=False)
    value = browser.find_element(By.ID, "set-value")
    value.clear()
    value.send_keys("3")
    browser.find_element(By.ID, "set-button").click()
    async with asyncio.timeout(10):
        async for event in changes:
            if isinstance(event, Change) and event.value == 3:
                break
    await asyncio.to_thread(wait_for, browser, lambda d: result.text == "written")
    web_row = '#plugins tr[data-plugin="web"]'
    assert "ready" in text_in_page(browser, web_row)
    # A plugin's log tail, followed live (the plugin reads it with the admin token).
    click_in_page(browser, web_row)
    log = browser.find_element(By.ID, "log")
    await asyncio.to_thread(wait_for, browser, lambda d: "--- starting" in log.text)
    ARTIFACTS.mkdir(exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / "dashboard.png"))


async def test_the_page_and_metrics_need_the_token_off_loopback(
        processes: Processes) -> None:
    root, port = short_tmpdir(), free_port()
    bundled_plugin(root, "web", port=port, host="0.0.0.0", token="s3cret")
    broker = processes.broker(None, "--plugins", str(root))
    async with Client(broker.ipc) as client:
        url = await client.subscribe("web/url")
        events = await processes.until(
            url, lambda e: isinstance(e, Change) and e.value.startswith("http"), 20)
    assert events[-1].value.endswith("?token=s3cret")
    base = f"http://127.0.0.1:{port}"
    for path in ("/", "/metrics"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            await asyncio.to_thread(urllib.request.urlopen, base + path, timeout=5)
        refused.value.close()
        assert refused.value.code == 401
    with await asyncio.to_thread(urllib.request.urlopen, f"{base}/metrics?token=s3cret",
                                 timeout=5) as answer:
        metrics = answer.read()
    assert b"plugboard_broker_sessions" in metrics
    assert b"plugboard_broker_store_failing 0.0" in metrics


async def test_a_page_that_stops_reading_holds_no_other_page_back(served: Served) -> None:
    """A page whose connection takes nothing more (a suspended tab, a client that never
    reads) is dropped once a message waits PAGE_SEND_S for it; every other page keeps
    getting each change. The dashboard used to wait on it forever, for every page."""
    parts = urllib.parse.urlsplit(served.url)
    await served.panel.declare("panel/blob", "str", "")
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect((parts.hostname, parts.port))
    key = base64.b64encode(os.urandom(16))
    stalled.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                    b"Sec-WebSocket-Key: " + key + b"\r\n\r\n")  # and never reads
    ws_url = urllib.parse.urlunsplit(("ws", parts.netloc, "/ws", parts.query, ""))
    try:
        async with aiohttp.ClientSession() as session, session.ws_connect(ws_url) as page:
            for i in range(40):  # 10 MB for the stalled page, far past its buffers
                value = f"{i}:" + "x" * 256 * 1024
                await served.panel.set("panel/blob", value)
                async with asyncio.timeout(10):
                    while not any(item["n"] == "panel/blob" and item["v"] == value
                                  for item in (await page.receive_json()).get("items", [])):
                        pass
    finally:
        stalled.close()


async def test_a_page_s_malformed_message_is_answered_and_the_page_kept(
        served: Served) -> None:
    parts = urllib.parse.urlsplit(served.url)
    ws_url = urllib.parse.urlunsplit(("ws", parts.netloc, "/ws", parts.query, ""))
    async with aiohttp.ClientSession() as session, session.ws_connect(ws_url) as page:
        for text in ("not json", "[1, 2]"):
            await page.send_str(text)
            async with asyncio.timeout(10):
                while (answer := await page.receive_json())["t"] != "error":
                    pass
            assert "a message is a JSON object" in answer["error"], answer
        await page.send_json({"t": "set", "id": 1, "name": "panel/level", "value": "4"})
        async with asyncio.timeout(10):
            while (answer := await page.receive_json())["t"] != "set":
                pass
        assert answer == {"t": "set", "id": 1, "ok": True, "error": ""}
    assert (await served.panel.get("panel/level")).value == 4


async def test_prometheus_scrapes_the_metrics(served: Served, processes: Processes) -> None:
    prometheus = needs("prometheus", "prometheus")
    folder, api_port = short_tmpdir(), free_port()
    target = served.url.split("//")[1].split("/")[0].replace("localhost", "127.0.0.1")
    (folder / "prometheus.yml").write_text(textwrap.dedent(f"""\
        global:
          scrape_interval: 1s
        scrape_configs:
          - job_name: plugboard
            static_configs:
              - targets: ["{target}"]
        """))
    server = ManagedProcess([prometheus, f"--config.file={folder / 'prometheus.yml'}",
                             f"--storage.tsdb.path={folder / 'data'}",
                             f"--web.listen-address=127.0.0.1:{api_port}"],
                            stderr_path=folder / "prometheus.stderr")
    processes.started.append(server)
    async with Client(served.broker.ipc) as client:
        scrapes = await client.subscribe("web/metrics_scrapes")
        # Each scrape is an event: the plugin counts it in web/metrics_scrapes.
        await processes.until(scrapes, lambda e: isinstance(e, Change) and e.value >= 2, 30)

    def query(expression: str) -> list[dict[str, object]]:
        url = (f"http://127.0.0.1:{api_port}/api/v1/query?query="
               + urllib.parse.quote(expression))
        with urllib.request.urlopen(url, timeout=5) as answer:
            body = json.loads(answer.read())
        assert body["status"] == "success", body
        return body["data"]["result"]  # type: ignore[no-any-return]

    sessions = await asyncio.to_thread(query, "plugboard_broker_sessions")
    assert sessions and float(sessions[0]["value"][1]) >= 2  # type: ignore[index]
    up = await asyncio.to_thread(query, 'plugboard_plugin_up{plugin="web"}')
    assert up and up[0]["value"][1] == "1", up  # type: ignore[index]
    level = await asyncio.to_thread(query, 'plugboard_property{name="panel/level"}')
    assert level and level[0]["metric"]["unit"] == "steps", level  # type: ignore[index]
    assert level[0]["value"][1] == "1"  # type: ignore[index]
    assert await asyncio.to_thread(query, "plugboard_broker_messages_in_total")
    assert subprocess.run([prometheus, "--version"], capture_output=True).returncode == 0
