"""The chat page in a real browser: headless Chromium (Debian's `chromium` + `chromium-driver`) driven by Selenium,
against a live server. It sends a message, sees the reply stream in, and the reply equals `modernlm.generate`'s greedy
text; a second turn and a reload (the conversation is kept in the browser). A screenshot is kept in the test's tmp
directory. In the default suite; skipped, with the reason, where no Chromium is installed (CI installs it: .ci/run).
The page's empty settings send nothing, so the model's own defaults (generation_config.json) apply, as everywhere."""

from __future__ import annotations

import shutil
import time

import pytest

from modernlm import generate as modernlm_generate
from test_api import chat_ids, expected, start, tiny  # noqa: F401  (tiny is a fixture)

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the test extra)")


def chromium(tmp_path):
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("no chromium/chromedriver installed (apt-get install chromium chromium-driver)")
    options = Options()
    options.binary_location = browser
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1000,800"):  # fmt: skip
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


def wait(condition, timeout=60.0, every=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("timed out waiting in the browser")


def test_chat_page_streams_a_reply(tiny, tmp_path):  # noqa: F811
    from selenium.webdriver.common.by import By

    server, engine, model, tokenizer = start(tiny)
    browser = chromium(tmp_path)
    try:
        browser.get(server.url + "/")
        wait(lambda: browser.find_element(By.ID, "model").get_attribute("value") == "tiny")
        browser.find_element(By.ID, "toggle-settings").click()
        for name, value in (("temperature", "0"), ("max_tokens", "60")):
            field = browser.find_element(By.ID, name)
            field.clear()
            field.send_keys(value)
        browser.find_element(By.ID, "input").send_keys("the quick brown fox")
        browser.find_element(By.ID, "send").click()
        seen = set()

        def finished():
            replies = browser.find_elements(By.CSS_SELECTOR, ".msg.assistant")
            if not replies:
                return False
            seen.add(replies[-1].find_element(By.CLASS_NAME, "text").text)
            return replies[-1].get_attribute("data-streaming") == "false"

        wait(finished)
        reply = browser.find_elements(By.CSS_SELECTOR, ".msg.assistant")[-1]
        browser.save_screenshot(str(tmp_path / "chat.png"))
        want, _ = expected(
            model, tokenizer, chat_ids(tokenizer, [{"role": "user", "content": "the quick brown fox"}]), 60
        )
        assert reply.find_element(By.CLASS_NAME, "text").get_attribute("textContent") == want
        assert "tokens/s" in reply.find_element(By.CLASS_NAME, "stats").text
        assert len(seen) >= 2, "the reply did not arrive in pieces"
        assert (tmp_path / "chat.png").stat().st_size > 0

        browser.find_element(By.ID, "input").send_keys("over the lazy dog")
        browser.find_element(By.ID, "send").click()
        wait(lambda: len(browser.find_elements(By.CSS_SELECTOR, ".msg.assistant")) == 2 and finished())
        browser.refresh()  # the conversation is kept in the browser
        wait(lambda: len(browser.find_elements(By.CSS_SELECTOR, ".msg")) == 4)
    finally:
        browser.quit()
        server.stop()
        engine.stop()


def test_the_page_uses_the_models_defaults(tmp_path):
    """Empty fields send nothing: a seeded request from the page gives the text `generate` gives with the model's
    generation_config.json and the same seed; the placeholders show those defaults."""
    import json
    import shutil

    from selenium.webdriver.common.by import By

    from tiny_chat import save_tiny_chat_model

    model_dir = save_tiny_chat_model(tmp_path / "m", "the quick brown fox jumps over the lazy dog. " * 40,
                                     max_seq_len=128)  # fmt: skip
    (model_dir / "generation_config.json").write_text(json.dumps({"do_sample": True, "temperature": 1.3, "top_k": 40}))
    server, engine, model, tokenizer = start(model_dir)
    browser = chromium(tmp_path)
    try:
        browser.get(server.url + "/")
        wait(lambda: "1.3" in browser.find_element(By.ID, "temperature").get_attribute("placeholder"))
        assert "40" in browser.find_element(By.ID, "top_k").get_attribute("placeholder")
        browser.find_element(By.ID, "toggle-settings").click()
        for name, value in (("seed", "5"), ("max_tokens", "12")):
            browser.find_element(By.ID, name).send_keys(value)
        browser.find_element(By.ID, "input").send_keys("the quick brown fox")
        browser.find_element(By.ID, "send").click()
        wait(lambda: [r.get_attribute("data-streaming") for r in browser.find_elements(By.CSS_SELECTOR,
                                                                                        ".msg.assistant")] == ["false"])
        reply = browser.find_element(By.CSS_SELECTOR, ".msg.assistant .text").get_attribute("textContent")
        ids = chat_ids(tokenizer, [{"role": "user", "content": "the quick brown fox"}])
        new = modernlm_generate(model, ids, 12, seed=5, eos_token_id=tokenizer.eos_token_id)[0]
        assert reply == tokenizer.decode([t for t in new if t != tokenizer.eos_token_id])
    finally:
        browser.quit()
        server.stop()
        engine.stop()
        shutil.rmtree(tmp_path / "profile", ignore_errors=True)
