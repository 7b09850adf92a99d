"""The chat page in headless Chromium (Debian's chromium + chromium-driver, driven by
Selenium): type a prompt, watch the answer grow as tokens stream in, press Stop, and the
server cancels the generation. A screenshot is written under tmp_path (and $PASTURE_ARTIFACTS).

The model is random (stories260K's vocabulary, 4,096 positions) and decodes greedily, which
never gives EOS (serve_support.random_model): the answer is still streaming when Stop is pressed,
however fast the machine."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait
from serve_support import load_stories, random_model

from pasture.serve import ServerThread, build_app


def _chromium() -> webdriver.Chrome:
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert binary and driver, "needs Debian's chromium and chromium-driver (apt-get install)"
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,800"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(driver))


@pytest.mark.slow
def test_chat_page_streams_and_stops(shared_data: Path, tmp_path: Path) -> None:
    _, tokenizer = load_stories(shared_data)
    model = random_model(tokenizer, max_seq_len=4096)
    app = build_app(model, tokenizer, "random-stories", max_batch=2)
    engine = app.state.engine
    with ServerThread(app) as server:
        browser = _chromium()
        try:
            wait = WebDriverWait(browser, 20, poll_frequency=0.02)
            browser.get(server.url + "/")
            wait.until(lambda b: b.find_element(By.ID, "model-name").text == "random-stories")
            settings = {"max_tokens": "", "temperature": "0"}  # to the context's end; greedy
            for name, value in settings.items():
                field = browser.find_element(By.ID, name)
                browser.execute_script("arguments[0].value = arguments[1]", field, value)
            browser.find_element(By.ID, "prompt").send_keys("Once upon a time", Keys.ENTER)
            answer = wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, ".assistant"))[0]
            wait.until(lambda b: len(answer.text) > 0)
            lengths = {len(answer.text)}
            wait.until(lambda b: lengths.add(len(answer.text)) or len(lengths) >= 3)  # it grows
            assert browser.find_element(By.ID, "status").text == "streaming"
            browser.find_element(By.ID, "stop").click()
            wait.until(lambda b: b.find_element(By.ID, "status").text == "stopped")
            deadline = time.monotonic() + 5
            while engine.finished.get("cancelled", 0) < 1:  # the server let go of it
                assert time.monotonic() < deadline, engine.finished
                time.sleep(0.05)
            assert engine.running == 0 and engine.finished == {"cancelled": 1}
            stopped = answer.text
            assert "stopped" in answer.get_attribute("class")
            assert browser.find_element(By.ID, "send").is_enabled()
            time.sleep(0.3)
            assert answer.text == stopped  # nothing arrives after Stop
            shot = tmp_path / "chat_page.png"
            assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 0
            if os.environ.get("PASTURE_ARTIFACTS"):
                artifacts = Path(os.environ["PASTURE_ARTIFACTS"])
                artifacts.mkdir(parents=True, exist_ok=True)
                shutil.copy(shot, artifacts / shot.name)
        finally:
            browser.quit()
