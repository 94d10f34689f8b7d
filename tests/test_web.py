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
from test_api import chat_dir, chat_ids, expected, start  # noqa: F401  (chat_dir is a fixture)

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


def open_with_settings(browser, server, **values) -> None:
    """Open the page, wait for the served model's name, and type `values` into the settings fields."""
    from selenium.webdriver.common.by import By

    browser.get(server.url + "/")
    wait(lambda: browser.find_element(By.ID, "model").get_attribute("value") == "tiny")
    browser.find_element(By.ID, "toggle-settings").click()
    for name, value in values.items():
        field = browser.find_element(By.ID, name)
        field.clear()
        field.send_keys(value)


def test_chat_page_streams_a_reply(chat_dir, tmp_path):  # noqa: F811
    from selenium.webdriver.common.by import By

    server, engine, model, tokenizer = start(chat_dir)
    browser = chromium(tmp_path)
    try:
        open_with_settings(browser, server, temperature="0", max_tokens="60")
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


def test_attention_view_reads_the_api_rows_in_node(tmp_path):
    """attention.js's functions on a packed row, in node (no browser needed): bytes back to weights, one head's or
    the mean of the heads."""
    import base64
    import json
    import subprocess
    from pathlib import Path

    node = shutil.which("node")
    if not node:
        pytest.skip("no node installed")
    script = Path(__file__).parents[1] / "src/modernlm/serving/web/attention.js"
    row = bytes([255, 0, 0, 51, 204, 0, 0, 0, 255, 102, 102, 51])  # 2 layers x 2 heads x 3 keys
    packed = base64.b64encode(row).decode()
    check = (f"{script.read_text()}\nconst rows = decodeRows([{json.dumps(packed)}]);\n"
             "console.log(JSON.stringify([Array.from(rows[0]), attentionWeights(rows[0], 2, 3, 1, 0), "
             "attentionWeights(rows[0], 2, 3, 1, -1)]));")  # fmt: skip
    done = subprocess.run([node, "-e", check], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    raw, one, mean = json.loads(done.stdout)
    assert raw == list(row)
    assert one == pytest.approx([0, 0, 1]) and mean == pytest.approx([0.2, 0.2, 0.6])


@pytest.mark.slow
def test_chat_page_shows_what_a_reply_token_attended_to(chat_dir, tmp_path):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    server, engine, model, tokenizer = start(chat_dir)
    browser = chromium(tmp_path)
    try:
        open_with_settings(browser, server, temperature="0", max_tokens="12")
        browser.find_element(By.ID, "attention").click()
        browser.find_element(By.ID, "input").send_keys("the quick brown fox")
        browser.find_element(By.ID, "send").click()
        tokens = wait(lambda: browser.find_elements(By.CSS_SELECTOR, ".msg.assistant .tok"))
        prompt = chat_ids(tokenizer, [{"role": "user", "content": "the quick brown fox"}])
        _, out = expected(model, tokenizer, prompt, 12)
        assert [t.get_attribute("textContent") for t in tokens] == [tokenizer.decode([i]) for i in out]
        tokens[2].click()
        keys = wait(lambda: browser.find_elements(By.CSS_SELECTOR, ".msg.assistant .attention .key"))
        assert len(keys) == len(prompt) + 2 and "chosen" in tokens[2].get_attribute("class")
        shown = [float(k.get_attribute("title")) for k in keys]
        Select(browser.find_elements(By.CSS_SELECTOR, ".attention select")[1]).select_by_index(1)  # head 0
        keys = browser.find_elements(By.CSS_SELECTOR, ".msg.assistant .attention .key")
        head0 = [float(k.get_attribute("title")) for k in keys]
        assert sum(shown) == pytest.approx(1, abs=0.05) and sum(head0) == pytest.approx(1, abs=0.05)
        browser.save_screenshot(str(tmp_path / "attention.png"))
    finally:
        browser.quit()
        server.stop()
        engine.stop()


def test_the_page_uses_the_models_defaults(tmp_path, tiny_chat_dir):
    """Empty fields send nothing: a seeded request from the page gives the text `generate` gives with the model's
    generation_config.json and the same seed; the placeholders show those defaults."""
    import json
    import shutil

    from selenium.webdriver.common.by import By

    model_dir = tmp_path / "m"
    shutil.copytree(tiny_chat_dir(max_seq_len=128), model_dir)  # a copy: this test writes into it
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
