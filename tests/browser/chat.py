"""Two people chat through the real page in headless Chromium (Debian's chromium and
chromium-driver, driven by Selenium's WebDriver client from PyPI).

Usage: BASE_URL=http://127.0.0.1:PORT [SCREENSHOT=path.png] python3 chat.py
The Rust side (tests/browser.rs) restarts the server when this prints RESTART, and answers
RESTARTED on stdin when it is back.
"""
import os
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

BASE = os.environ["BASE_URL"]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
WAIT = 20


def browser(width=1100, height=700, phone=False):
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    if phone:
        # A phone's viewport (iPhone 12-14 class): the layout must adapt.
        opts.add_experimental_option("mobileEmulation", {
            "deviceMetrics": {"width": 390, "height": 844, "pixelRatio": 3},
            "userAgent": "Mozilla/5.0 (Linux; Android 14) Mobile Safari/537.36",
        })
    for arg in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                f"--window-size={width},{height}"]:
        opts.add_argument(arg)
    # Console errors (a CSP violation, an exception) are read back and fail the test.
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


def wait(driver, script, *args, timeout=WAIT):
    """Waits until `script` (a JS expression body returning a truthy value) holds."""
    WebDriverWait(driver, timeout, poll_frequency=0.05).until(
        lambda d: d.execute_script(script, *args))


def person(driver, name):
    driver.get(BASE)
    # alert() must never run: a message is text, not HTML. Record instead of blocking.
    driver.execute_script("window.__alerts = []; window.alert = (m) => window.__alerts.push(String(m));")
    field = driver.find_element(By.ID, "login-name")
    field.send_keys(name)
    driver.find_element(By.CSS_SELECTOR, "#login-form button").click()
    wait(driver, "return document.querySelector('#status[data-state=online]') !== null")


def join(driver, room):
    field = driver.find_element(By.ID, "join-room")
    field.send_keys(room)
    field.send_keys(Keys.ENTER)


def say(driver, text):
    field = driver.find_element(By.ID, "body")
    field.clear()
    # send_keys types emoji outside the BMP badly in chromedriver: set the value and submit.
    driver.execute_script("arguments[0].value = arguments[1];", field, text)
    field.send_keys(Keys.ENTER)


SHOWS = ("return [...document.querySelectorAll('#message-list .text')]"
         ".some((el) => el.textContent === arguments[0]);")
TEXTS = "return [...document.querySelectorAll('#message-list .text')].map((t) => t.textContent);"
MEMBER = ("return [...document.querySelectorAll('#members li')]"
          ".some((li) => li.textContent === arguments[0]);")


def shows(driver, text):
    wait(driver, SHOWS, text)


def click_room(driver, room):
    driver.find_element(By.CSS_SELECTOR, f"#rooms li[data-room='{room}']").click()


def unread(driver, room):
    return driver.execute_script(
        "const b = document.querySelector(`#rooms li[data-room='${arguments[0]}'] .unread`);"
        "return b ? b.textContent : '';", room)


DRAWER_OPEN = "return document.getElementById('sidebar').getBoundingClientRect().left === 0"
DRAWER_SHUT = "return document.getElementById('sidebar').getBoundingClientRect().right <= 0"


def open_drawer(driver):
    """Opens the phone's drawer and waits until it has slid in (a click during the slide
    would land elsewhere)."""
    driver.find_element(By.ID, "menu").click()
    wait(driver, DRAWER_OPEN)


def offscreen(driver, element_id):
    return driver.execute_script(
        "const r = document.getElementById(arguments[0]).getBoundingClientRect();"
        "return r.right <= 0 || r.left >= window.innerWidth;", element_id)


def severe_console_errors(driver):
    """Script errors and policy violations (a failed request, such as the reconnect attempts
    while the server is down or /api/me's 401 before login, is not one)."""
    return [e for e in driver.get_log("browser")
            if e.get("level") == "SEVERE" and e.get("source") != "network"]


def main():
    alice, bob = browser(), browser()
    try:
        person(alice, "Alice")
        person(bob, "Bob")
        for page in (alice, bob):
            join(page, "team")
        # Each sees the other in the member list of "team".
        wait(alice, MEMBER, "Bob")
        wait(bob, MEMBER, "Alice")

        say(alice, "Hi Bob!")
        shows(bob, "Hi Bob!")
        say(bob, "Hello Alice, nice to see you here.")
        shows(alice, "Hello Alice, nice to see you here.")

        # Markup in a message is text, never HTML.
        evil = "<img src=x onerror=alert(1)>"
        say(bob, evil)
        shows(alice, evil)
        imgs = alice.execute_script("return document.querySelectorAll('#message-list img').length")
        assert imgs == 0, "an <img> element was created from a message"
        say(alice, "Ha, that stays text 😄")
        shows(bob, "Ha, that stays text 😄")
        time.sleep(0.3)
        for page in (alice, bob):
            assert page.execute_script("return window.__alerts") == [], "a script ran from a message"

        # Both see the same messages in the same order, each once.
        a = alice.execute_script(TEXTS)
        b = bob.execute_script(TEXTS)
        assert a == b, (a, b)
        assert len(set(a)) == len(a), a

        # Links are clickable and safe: an http(s) URL becomes an <a>, a javascript: one stays text.
        say(bob, "see https://example.com/docs?x=1. and javascript:alert(2)")
        shows(alice, "see https://example.com/docs?x=1. and javascript:alert(2)")
        hrefs = alice.execute_script(
            "return [...document.querySelectorAll('#message-list .text a')].map((a) => a.href)")
        assert hrefs == ["https://example.com/docs?x=1"], hrefs
        rel = alice.execute_script("return document.querySelector('#message-list .text a').rel")
        assert "noopener" in rel, rel

        if os.environ.get("SCREENSHOT"):
            alice.save_screenshot(os.environ["SCREENSHOT"])

        # A room whose last 50 messages do not fit one reply (each escapes to 24 KiB in JSON):
        # the join says `more`, the page reads the rest with `history` `after`, each once.
        join(alice, "heavy")
        wait(alice, "return document.querySelectorAll('#message-list .msg').length === 50", timeout=30)
        heavy = alice.execute_script(
            "return [...document.querySelectorAll('#message-list .msg')].map((li) => Number(li.dataset.offset))")
        assert heavy == list(range(11, 61)), heavy

        # Unread counts: a message in a room that is not shown counts, until the room is opened.
        say(bob, "while you were in heavy")
        wait(alice, "return document.querySelector(\"#rooms li[data-room='team'] .unread\") !== null")
        assert unread(alice, "team") == "1", unread(alice, "team")
        click_room(alice, "team")
        shows(alice, "while you were in heavy")
        assert unread(alice, "team") == "", "opening the room clears its count"

        # The HTMX dashboard loads its fragments by itself: this node's connections, the
        # charts the server draws (SVG lines), and the busiest rooms, "team" among them.
        alice.switch_to.new_window("tab")
        alice.get(f"{BASE}/dashboard")
        wait(alice, """
            const cells = [...document.querySelectorAll('#stats td')].map((td) => td.textContent);
            const i = cells.indexOf('connections');
            return i >= 0 && Number(cells[i + 1]) >= 2;""")
        wait(alice, """
            const charts = document.querySelectorAll('#charts figure.chart svg');
            const lines = document.querySelectorAll('#charts svg path.line');
            return charts.length === 5 && lines.length >= 5
                && [...lines].every((p) => p.getTotalLength() >= 0 && p.getAttribute('d').startsWith('M'));""")
        # The lines are drawn by the stylesheet's classes (no inline style): stroked, not filled.
        stroke = alice.execute_script(
            "const s = getComputedStyle(document.querySelector('#charts svg path.line'));"
            "return [s.stroke, s.fill];")
        assert stroke[0] not in ("", "none") and stroke[1] == "none", stroke
        wait(alice, """
            return [...document.querySelectorAll('#rooms td.name')]
                .some((td) => td.textContent === 'team');""")
        wait(alice, "return document.querySelector('#nodes p') !== null")
        assert severe_console_errors(alice) == [], severe_console_errors(alice)
        if os.environ.get("SCREENSHOT"):
            alice.set_window_size(1100, 1400)
            alice.save_screenshot(os.environ["SCREENSHOT"].replace(".png", "-dashboard.png"))
            alice.set_window_size(1100, 700)
        alice.close()
        alice.switch_to.window(alice.window_handles[0])

        # The server is killed (kill -9) and restarted; three messages are published meanwhile
        # by another client. Both pages come back by themselves and show each message once.
        print("RESTART", flush=True)
        line = sys.stdin.readline().strip()
        assert line == "RESTARTED", line
        for page in (alice, bob):
            wait(page, "return document.querySelector('#status[data-state=online]') !== null",
                 timeout=30)
        for t in ["while away 1", "while away 2", "while away 3"]:
            shows(alice, t)
            shows(bob, t)
        say(bob, "back again")
        shows(alice, "back again")
        a2 = alice.execute_script(TEXTS)
        b2 = bob.execute_script(TEXTS)
        assert a2 == b2, (a2, b2)
        assert len(set(a2)) == len(a2), f"a message is shown twice: {a2}"
        assert a2[:len(a)] == a, "history kept its order"

        # On a phone the room and member lists are behind the menu: joining, chatting, the
        # members and logging out all work there.
        carol = browser(phone=True)
        try:
            person(carol, "Carol")
            assert offscreen(carol, "sidebar"), "the sidebar is a closed drawer on a phone"
            open_drawer(carol)
            join(carol, "team")
            wait(carol, DRAWER_SHUT)
            shows(carol, "back again")
            say(carol, "hello from a phone")
            shows(alice, "hello from a phone")
            shows(bob, "hello from a phone")
            open_drawer(carol)
            wait(carol, MEMBER, "Alice")
            wait(carol, MEMBER, "Bob")
            if os.environ.get("SCREENSHOT"):
                carol.save_screenshot(os.environ["SCREENSHOT"].replace(".png", "-phone.png"))
            carol.find_element(By.ID, "logout").click()
            wait(carol, "return !document.getElementById('login').hidden")
            assert severe_console_errors(carol) == []
        finally:
            carol.quit()
        for page in (alice, bob):
            errors = severe_console_errors(page)
            assert errors == [], errors
        print("browser chat: ok", flush=True)
    finally:
        alice.quit()
        bob.quit()


if __name__ == "__main__":
    main()
