"""The labeling page in a real browser (Debian's headless chromium, driven by Selenium), by keyboard only.

A labeler rates, flags and ranks (with a tie) a task's outputs, reloads mid-task and finds the draft, is refused a
submit with an output unranked, submits, answers a task whose output holds markup (shown as text, never run), writes
a demonstration and skips one; the export then holds the ranking in the task's own completion indices. No click
anywhere: every step has a key (the page's help text lists them).

Skipped when chromium, chromedriver or selenium is missing, except under CI=true: the browser test must run there
(.ci/run installs chromium), so a missing piece fails it. ``LIT_RLHF_LABEL_SCREENSHOT=<path>`` saves a screenshot of
the board mid-task (docs/label_screenshot.png is one).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from lit_rlhf.label import db
from lit_rlhf.label.export import export_project
from lit_rlhf.label.project import create_project
from tests.conftest import write_jsonl
from tests.label_helpers import add_labelers, answer_table, running

pytestmark = pytest.mark.slow

SKY = [
    "Sunlight scatters off the molecules of the air, and short (blue) wavelengths scatter far more than long (red) "
    "ones. So blue light reaches your eyes from every direction of the sky.",
    "Air scatters blue light more strongly than red light. That scattered blue light comes at us from all over the "
    "sky, so the sky looks blue.",
    "Rayleigh scattering: shorter wavelengths scatter more, and blue is short. Violet scatters even more, but our "
    "eyes are less sensitive to it, and some of it is absorbed high up.",
    "The sky is blue because it reflects the colour of the oceans.",
]
MARKUP = '<script>window.__pwned=1</script> at the end of <body>, or <img src=x onerror="window.__pwned=2">'
ALERT = [f"Put {MARKUP} (not recommended).", "Call alert() from a DOMContentLoaded listener in your own script file."]
HAIKU = "Red leaves let go now\nthe wind keeps what the tree lost\none crow counts the rest"

# What the labeler gives each stored completion of the sky task: Likert, the flag ticked, the rank column (1-based;
# two outputs in column 2 are a tie, column 3 stays empty).
SKY_LIKERT, SKY_FLAG, SKY_COLUMN = [7, 5, 5, 1], [3, 3, 3, 2], [1, 2, 2, 4]
FLAG_NAMES = ["fails_instruction", "inappropriate_for_customer_assistant", "hallucination", "satisfies_constraint"]


def _browser():
    """A headless chromium WebDriver on the system's chromedriver, or skip (fail under CI=true) naming what is
    missing."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = shutil.which("chromedriver")  # Debian's chromium-driver: /usr/bin/chromedriver
    missing = [name for name, found in (("chromium", chromium), ("chromedriver", chromedriver)) if not found]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("selenium (pip install -e '.[dev]')")
    if missing:
        why = "the browser test needs " + ", ".join(missing) + " (apt-get install chromium chromium-driver)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{why}; CI must run it, not skip it")
        pytest.skip(why)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,900"):
        options.add_argument(arg)
    # Both paths given: Selenium Manager (which would download a browser) is never asked.
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    # --window-size is the window's; make the page's viewport 1200 x 900 (the screenshot's size)
    width, height = driver.execute_script("return [outerWidth - innerWidth, outerHeight - innerHeight]")
    driver.set_window_size(1200 + width, 900 + height)
    return driver


@pytest.fixture
def browser():
    driver = _browser()
    try:
        yield driver
    finally:
        driver.quit()


def _project(tmp_path: Path) -> Path:
    prompts = write_jsonl(
        tmp_path / "prompts.jsonl",
        [{"prompt": "Write a haiku about autumn."}, {"prompt": "Write a limerick in the style of Ogden Nash."}],
    )
    completions = write_jsonl(
        tmp_path / "completions.jsonl",
        [
            {"prompt": "Explain in two sentences why the sky is blue.", "completions": SKY},
            {"prompt": "How do I show an alert when my <body> loads?", "completions": ALERT},
        ],
    )
    path = tmp_path / "project.db"
    # overlap=1.0 makes both ranking tasks overlap tasks, which are handed out first: two rankings, two demonstrations
    create_project(path, str(prompts), str(completions), overlap=1.0)
    return path


def test_a_labeler_does_every_task_by_keyboard_and_the_export_holds_it(tmp_path, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    path = _project(tmp_path)
    token = add_labelers(path, "ann")["ann"]
    wait = WebDriverWait(browser, 15)

    def press(*keys: str) -> None:
        """Keys to whatever has focus, as a person would type them (no element is clicked or targeted)."""
        ActionChains(browser).send_keys(*keys).perform()

    def submit() -> None:
        ActionChains(browser).key_down(Keys.CONTROL).send_keys(Keys.ENTER).key_up(Keys.CONTROL).perform()

    def focused(css: str) -> bool:
        return browser.execute_script("return document.activeElement.matches(arguments[0])", css)

    def shown_order() -> tuple[db.Task, list[int]]:
        """The task the page holds (the labeler's lease) and its order on the page: ``order[shown] = stored``."""
        conn = db.connect(path, readonly=True)
        try:
            (task_id,) = conn.execute("SELECT task_id FROM leases").fetchone()
            task = db.all_tasks(conn)[task_id]
            labeler_id = conn.execute("SELECT id FROM labelers WHERE name = 'ann'").fetchone()[0]
            return task, db.display_order(conn, task, labeler_id)
        finally:
            conn.close()

    def board() -> dict[int, list[int]]:
        """Rank column (1-based; 0 = unranked) -> the shown positions of the chips in it."""
        out = {}
        for column in browser.find_elements(By.CSS_SELECTOR, "#board .column"):
            rank = column.get_attribute("data-rank")
            chips = column.find_elements(By.CSS_SELECTOR, ".chip")
            out[int(rank) + 1 if rank else 0] = [int(c.get_attribute("data-pos")) for c in chips]
        return out

    def rate(likert: int, flag: int) -> None:
        """On a focused card: the score, then tick flag number ``flag`` (0-based) and come back."""
        press(str(likert), "f", *[Keys.TAB] * flag, Keys.SPACE, Keys.ESCAPE)
        assert focused(".output")

    def rank(column: int) -> None:
        """On a focused card: to its chip, into rank column ``column``, back to the card."""
        press("b")
        assert focused(".chip")
        press(str(column), "b")
        assert focused(".output")

    # 1. The link: the token travels in the fragment, and leaves the address bar.
    with running(path) as server:
        browser.get(f"{server.url}#token={token}")
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#outputs .output")) == 4)
        assert "token" not in browser.current_url
        task, order = shown_order()
        assert task.completions == SKY
        cards = browser.find_elements(By.CSS_SELECTOR, "#outputs .output .text")
        assert [c.text for c in cards] == [SKY[order[p]] for p in range(4)]  # shuffled, as the DB says
        assert focused('.output[data-pos="0"]')

        # 2. Rate every output (j: next card), then rank all but the worst: the tie is on the board.
        for p in range(4):
            rate(SKY_LIKERT[order[p]], SKY_FLAG[order[p]])
            press("j")
        for p in range(4):
            if order[p] != 3:
                rank(SKY_COLUMN[order[p]])
            press("j")
        at = {stored: p for p, stored in enumerate(order)}
        expected_board = {0: [at[3]], 1: [at[0]], 2: sorted([at[1], at[2]]), 3: [], 4: []}
        assert {c: sorted(ps) for c, ps in board().items()} == expected_board
        press(*["j"] * at[3], "b")  # the unranked output's chip, still in the pool
        assert focused(f'.pool .chip[data-pos="{at[3]}"]')
        if os.environ.get("LIT_RLHF_LABEL_SCREENSHOT"):
            browser.save_screenshot(os.environ["LIT_RLHF_LABEL_SCREENSHOT"])

        # 3. A reload keeps the draft: scores, flags and board.
        browser.refresh()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#board .chip")) == 4)
        for p in range(4):
            card = browser.find_element(By.CSS_SELECTOR, f'.output[data-pos="{p}"]')
            pressed = card.find_elements(By.CSS_SELECTOR, '.likert button[aria-pressed="true"]')
            assert [b.text for b in pressed] == [str(SKY_LIKERT[order[p]])]
            ticked = [b.get_attribute("data-flag") for b in card.find_elements(By.CSS_SELECTOR, "input:checked")]
            assert ticked == [FLAG_NAMES[SKY_FLAG[order[p]]]]
        assert {c: sorted(ps) for c, ps in board().items()} == expected_board

        # 4. A submit with an output unranked is refused on the page, and nothing is stored.
        submit()
        wait.until(lambda d: "rank column" in d.find_element(By.ID, "status").text)
        assert browser.find_element(By.ID, "status").text == (
            f"Not submitted: put every output in a rank column first: {chr(65 + at[3])}"
        )
        assert answer_table(path) == []

        # 5. The last output to the worst column, and submit.
        assert focused('.output[data-pos="0"]')  # the reload focused the first card
        press(*["j"] * at[3])
        rank(SKY_COLUMN[3])
        submit()
        wait.until(lambda d: "alert" in d.find_element(By.ID, "prompt").text)
        assert browser.find_element(By.ID, "status").text == "Saved."

        # 6. Markup in a model's output is text: shown literally, never run, no element made of it.
        task, order = shown_order()
        assert task.completions == ALERT
        outputs = browser.find_element(By.ID, "outputs").text
        assert "<script>window.__pwned=1</script>" in outputs and '<img src=x onerror="window.__pwned=2">' in outputs
        assert "<body>" in browser.find_element(By.ID, "prompt").text
        assert browser.execute_script("return typeof window.__pwned") == "undefined"
        assert browser.find_elements(By.CSS_SELECTOR, "#outputs img, #outputs script, #prompt img") == []
        for p in range(2):  # the plain answer best, the markup one worst
            rate(1 if order[p] == 0 else 6, 0 if order[p] == 0 else 3)
            rank(2 if order[p] == 0 else 1)
            press("j")
        submit()

        # 7. The demonstration: its box has focus; type, submit.
        wait.until(lambda d: d.find_element(By.ID, "demonstration").is_displayed())
        assert focused("#demo-text")
        press(HAIKU)
        submit()

        # 8. A skip: Tab past the submit button to the reason, type it, Tab to the skip button, Enter.
        wait.until(lambda d: "limerick" in d.find_element(By.ID, "prompt").text)
        assert focused("#demo-text")
        press(Keys.TAB, Keys.TAB, "I do not know this poet", Keys.TAB)
        assert focused("#skip")
        press(Keys.ENTER)
        wait.until(lambda d: d.find_element(By.ID, "empty").is_displayed())
        assert browser.find_element(By.ID, "done").text == "4"

    # 9. The export: the sky ranking in the task's own completion indices, with its scores and flags.
    assert export_project(path, tmp_path / "out") == {"demonstrations": 1, "rankings": 2, "skipped": 1}
    sky, alert = [json.loads(line) for line in open(tmp_path / "out" / "rankings.jsonl")]
    assert sky["completions"] == SKY and sky["ranking"] == [0, [1, 2], 3]
    assert sky["likert"] == SKY_LIKERT
    assert [[name for name, on in f.items() if on] for f in sky["flags"]] == [[FLAG_NAMES[i]] for i in SKY_FLAG]
    assert alert["ranking"] == [1, 0] and alert["likert"] == [1, 6]
    (demo,) = [json.loads(line) for line in open(tmp_path / "out" / "demonstrations.jsonl")]
    assert demo["completion"] == HAIKU and demo["prompt"] == "Write a haiku about autumn."
    (skipped,) = [json.loads(line) for line in open(tmp_path / "out" / "skipped.jsonl")]
    assert skipped["reason"] == "I do not know this poet" and skipped["kind"] == "demonstration"
