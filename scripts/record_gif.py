#!/usr/bin/env python3
"""Records two people chatting on two nodes of a cluster, as an animated GIF.

Two headless Chromium windows (Debian's chromium and chromium-driver, Selenium from PyPI) open
the real page on two different nodes: alice on the first, bob on the second. Both join "lobby"
and exchange a few messages; after each step both windows are captured, put side by side under
a label naming the node, and ImageMagick's convert assembles the frames into a GIF.

Usage: URL1=http://127.0.0.1:PORT1 URL2=http://127.0.0.1:PORT2 OUT=docs/chat-cluster.gif \\
       FRAMES=DIR python3 scripts/record_gif.py
scripts/record-gif.sh starts the cluster and runs this.
"""
import os
import signal
import struct
import subprocess
import sys
import time

URL1, URL2 = os.environ["URL1"], os.environ["URL2"]
os.environ.setdefault("BASE_URL", URL1)  # tests/browser/chat.py reads it at import
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "browser"))
import chat  # noqa: E402  (the browser test's helpers: browser, wait, join, MEMBER, SHOWS)
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

OUT = os.environ.get("OUT", "docs/chat-cluster.gif")
FRAMES = os.environ["FRAMES"]
MAX_BYTES = int(os.environ.get("GIF_MAX_BYTES", 1_500_000))
WIDTH, HEIGHT = 760, 600  # wider than the page's 700 px breakpoint: the room and member lists show
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
ONLINE = "return document.querySelector('#status[data-state=online]') !== null"

CONVERSATION = [
    ("alice", "Hi bob! I'm connected to node1."),
    ("bob", "Hello alice, I'm on node2: your message came through Redis."),
    ("alice", "Same room, two nodes, one history."),
    ("bob", "Each message has one offset, in the same order on both sides."),
    ("alice", "And it was stored before it was shown. See you!"),
]


class Recorder:
    def __init__(self, pages):
        self.pages = pages  # [(name, driver, url)]
        self.frames = []  # (path, delay in 1/100 s)

    def shot(self, delay=110):
        """Captures both windows and composes one labelled side-by-side frame."""
        n = len(self.frames)
        parts = []
        for name, driver, url in self.pages:
            raw = os.path.join(FRAMES, f"{n:03d}-{name}.png")
            driver.save_screenshot(raw)
            with open(raw, "rb") as f:
                size = struct.unpack(">II", f.read(24)[16:24])
            assert size == (WIDTH, HEIGHT), f"a screenshot of {size}, not {WIDTH}x{HEIGHT}"
            node = "node1" if url == URL1 else "node2"
            labelled = os.path.join(FRAMES, f"{n:03d}-{name}-l.png")
            subprocess.run(
                ["convert", raw, "-background", "#1b1f3a", "-gravity", "northwest",
                 "-extent", f"{WIDTH}x{HEIGHT}",
                 "-gravity", "north", "-splice", "0x30", "-font", FONT, "-pointsize", "16",
                 "-fill", "#e8eaf6", "-annotate", "+0+6", f"{name} · {node} · {url}",
                 "-bordercolor", "#1b1f3a", "-border", "4", labelled], check=True)
            parts.append(labelled)
        frame = os.path.join(FRAMES, f"{n:03d}.png")
        subprocess.run(["convert", *parts, "+append", "+repage", frame], check=True)
        self.frames.append((frame, delay))

    def gif(self):
        """Assembles the GIF, smaller until it fits MAX_BYTES."""
        for scale, colors in [(80, 64), (70, 48), (60, 32), (50, 24)]:
            cmd = ["convert"]
            for frame, delay in self.frames:
                cmd += ["-delay", str(delay), frame]
            cmd += ["-resize", f"{scale}%", "-dither", "None", "-colors", str(colors),
                    "-layers", "Optimize", "-loop", "0", OUT]
            subprocess.run(cmd, check=True)
            size = os.path.getsize(OUT)
            print(f"{OUT}: {len(self.frames)} frames, {scale}% , {colors} colours, {size} bytes", flush=True)
            if size <= MAX_BYTES:
                return
        sys.exit(f"record_gif.py: {OUT} is {size} bytes even at {scale}%, over {MAX_BYTES}")


def browser():
    """A Chromium whose viewport is exactly WIDTH x HEIGHT (a headless window's size includes
    room for a browser frame that is not drawn, so the page gets less than the window)."""
    driver = chat.browser(WIDTH, HEIGHT + 200)
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False})
    return driver


def login(driver, url, name):
    driver.get(url)
    driver.find_element(By.ID, "login-name").send_keys(name)


def submit_login(driver):
    driver.find_element(By.CSS_SELECTOR, "#login-form button").click()
    chat.wait(driver, ONLINE)
    # The pointer rests on the room's title, not on a message (which it would highlight).
    ActionChains(driver).move_to_element(driver.find_element(By.ID, "room-title")).perform()


def type_message(driver, text):
    field = driver.find_element(By.ID, "body")
    field.clear()
    field.send_keys(text)


def main():
    # A SIGTERM from record-gif.sh's trap ends the browsers too (the finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.makedirs(FRAMES, exist_ok=True)
    alice = browser()
    bob = None
    try:
        bob = browser()
        rec = Recorder([("alice", alice, URL1), ("bob", bob, URL2)])
        drivers = {"alice": alice, "bob": bob}

        login(alice, URL1, "alice")
        login(bob, URL2, "bob")
        rec.shot(150)
        submit_login(alice)
        submit_login(bob)
        for d, node in ((alice, "node1"), (bob, "node2")):
            status = d.find_element(By.ID, "status").text
            assert node in status, f"the page says {status!r}, expected {node}"
        time.sleep(0.3)
        rec.shot(130)

        for d in (alice, bob):
            chat.join(d, "lobby")
        chat.wait(alice, chat.MEMBER, "bob")
        chat.wait(bob, chat.MEMBER, "alice")
        time.sleep(0.3)
        rec.shot(150)

        for who, text in CONVERSATION:
            sender = drivers[who]
            other = bob if sender is alice else alice
            type_message(sender, text)
            time.sleep(0.2)
            rec.shot(90)
            sender.find_element(By.ID, "body").send_keys(Keys.ENTER)
            chat.wait(other, chat.SHOWS, text)
            chat.wait(sender, chat.SHOWS, text)
            time.sleep(0.5)
            rec.shot(160)
        a, b = alice.execute_script(chat.TEXTS), bob.execute_script(chat.TEXTS)
        assert a == b, ("both pages show the same history in the same order", a, b)
        rec.frames[-1] = (rec.frames[-1][0], 400)  # rest on the last frame before the loop
        rec.gif()
    finally:
        alice.quit()
        if bob is not None:
            bob.quit()


if __name__ == "__main__":
    main()
