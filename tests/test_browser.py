"""The web app in a real browser: Debian's Chromium, headless, driven by Playwright.

Two people (alice and bob of the `world` fixture) in two browser contexts chat in
real time over the WebSocket; threads, mentions, reload, going offline and back,
tags, search, the team inbox, private conversations and signing out.  Screenshots
of the main views are written to test-artifacts/screenshots/.
"""
from __future__ import annotations

import os
import re
import time

import pytest
import requests
from playwright.sync_api import expect, sync_playwright

from tests.support import ROOT

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
SHOTS = os.path.join(ROOT, "test-artifacts", "screenshots")
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}

os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")   # never fetch a browser


@pytest.fixture(scope="module")
def browser():
    os.makedirs(SHOTS, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            yield b
        finally:
            b.close()


class Person:
    """A signed-in browser context with the app open."""

    def __init__(self, browser, server, user, viewport=DESKTOP, path="/app/acme/main"):
        self.user = user
        self.context = browser.new_context(viewport=viewport)
        self.context.set_default_timeout(15000)
        self.page = self.context.new_page()
        self.sockets = []
        self.errors = []
        self.page.on("websocket", lambda ws: self.sockets.append(ws))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(server.api + path)
        self.page.fill("input[name=email]", user.email)
        self.page.fill("input[name=password]", user.password)
        self.page.click("button[type=submit]")
        self.connected()

    def connected(self):
        expect(self.page.locator("#conn")).to_have_attribute("data-state", "open")

    def say(self, text: str):
        box = self.page.locator("#composer textarea")
        box.fill(text)
        box.press("Enter")
        expect(self.message(text)).to_be_visible()

    def message(self, text: str):
        return self.page.locator("#message-list .msg", has=self.page.locator(".text", has_text=text))

    def shot(self, name: str):
        self.page.screenshot(path=os.path.join(SHOTS, f"{name}.png"))

    def close(self):
        assert self.errors == [], self.errors
        self.context.close()


@pytest.fixture(scope="module")
def people(browser, server, world):
    alice = Person(browser, server, world.alice)
    bob = Person(browser, server, world.bob)
    yield alice, bob
    alice.close()
    bob.close()


def test_sign_in_page(browser, server, world):
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    page.goto(server.api + "/")
    expect(page.locator("#login-form")).to_be_visible()
    page.screenshot(path=os.path.join(SHOTS, "sign-in.png"))
    page.fill("input[name=email]", world.bob.email)
    page.fill("input[name=password]", "wrong")
    page.click("button[type=submit]")
    expect(page.locator("#login-error")).to_be_visible()
    context.close()


def test_a_message_appears_live_for_the_other_person(people):
    alice, bob = people
    alice.say("Good morning team, the deploy is at 10 #standup")
    expect(bob.message("Good morning team, the deploy is at 10")).to_be_visible()
    bob.say("Morning! I'll watch the #standup dashboards")
    expect(alice.message("I'll watch the")).to_be_visible()
    alice.shot("chat-desktop")


def test_thread_reply_seen_by_the_author(people):
    alice, bob = people
    original = bob.message("Good morning team, the deploy is at 10")
    original.hover()
    original.locator(".reply-button").click()
    expect(bob.page.locator("#pane-title")).to_have_text("Thread")
    reply = bob.page.locator("#thread-composer textarea")
    reply.fill("Can we push it to 10:30?")
    reply.press("Enter")
    comment = alice.message("Can we push it to 10:30?")
    expect(comment).to_be_visible()
    expect(comment.locator(".in-reply")).to_contain_text("Good morning team")
    expect(bob.page.locator("#thread-list .msg", has_text="10:30")).to_be_visible()
    bob.shot("thread")
    # Alice opens the thread from the comment and answers there.
    comment.locator(".in-reply").click()
    expect(alice.page.locator("#thread-list .msg.ev-message", has_text="Good morning team")).to_be_visible()
    expect(alice.page.locator("#thread-list .msg", has_text="10:30")).to_be_visible()


def test_a_mention_is_highlighted(people, world):
    alice, bob = people
    alice.say("@bob could you review the release notes?")
    mention = bob.message("could you review the release notes")
    expect(mention).to_have_class(re.compile(r"\bmention\b"))
    expect(mention.locator(".at-mention.at-me")).to_have_text("@bob")
    expect(alice.message("could you review")).not_to_have_class(re.compile(r"\bmention\b"))
    # Bob saw it: the server drops his unread mark.
    deadline = time.monotonic() + 10
    while True:
        mine = world.bob.get("/flows/acme/main/messages", params={"tags": f":unread:{world.bob.id}"}).json()
        if not mine or time.monotonic() > deadline:
            break
        time.sleep(0.1)     # polling the REST API until the read mark is applied
    assert mine == []


def test_reload_keeps_history(people):
    _, bob = people
    bob.page.reload()
    bob.connected()
    expect(bob.message("Good morning team, the deploy is at 10")).to_be_visible()
    expect(bob.message("could you review the release notes")).to_be_visible()


def test_a_message_sent_while_offline_arrives_on_reconnect(people):
    alice, bob = people
    bob.context.set_offline(True)
    expect(bob.page.locator("#conn")).to_have_attribute("data-state", "offline")
    alice.say("Sent while Bob was offline")
    expect(bob.message("Sent while Bob was offline")).to_have_count(0)
    bob.context.set_offline(False)
    bob.connected()
    expect(bob.message("Sent while Bob was offline")).to_be_visible()
    expect(bob.message("Sent while Bob was offline")).to_have_count(1)


def test_tags_filter_the_chat(people):
    _, bob = people
    bob.message("Good morning team").locator("a.tag", has_text="#standup").first.click()
    expect(bob.page.locator("#tag-filter")).to_contain_text("#standup")
    expect(bob.message("Good morning team")).to_be_visible()
    expect(bob.message("could you review")).to_have_count(0)
    bob.shot("tag-filter")
    bob.page.click("#tag-filter")
    expect(bob.message("could you review")).to_be_visible()


def test_search(people):
    alice, _ = people
    alice.page.fill("#search-input", "release")
    alice.page.press("#search-input", "Enter")
    expect(alice.page.locator("#pane-title")).to_have_text("Search results")
    expect(alice.page.locator("#pane-body .msg", has_text="release notes")).to_be_visible()
    alice.shot("search")


def test_team_inbox_beside_the_chat(people, server, world):
    alice, _ = people
    alice.page.click(".tab[data-pane=inbox]")
    expect(alice.page.locator("#pane-title")).to_have_text("Team inbox")
    r = requests.post(f"{server.api}/v1/messages/team_inbox/{world.main['api_token']}", json={
        "source": "CI", "from_address": "ci@example.com", "subject": "Build #42 passed",
        "content": "All 312 tests passed on main.", "project": "web", "tags": ["ci"]})
    assert r.status_code in (200, 201, 202), r.text
    item = alice.page.locator(".inbox-item", has_text="Build #42 passed")
    expect(item).to_be_visible()
    alice.shot("team-inbox")


def test_people_presence_and_status(people):
    alice, bob = people
    bob.page.once("dialog", lambda d: d.accept("Reviewing PRs"))
    bob.page.click("#status-button")
    expect(alice.message("Reviewing PRs")).to_be_visible()
    alice.page.click(".tab[data-pane=people]")
    row = alice.page.locator(".people li", has_text="Bob")
    expect(row).to_contain_text("Reviewing PRs")
    expect(row.locator(".dot")).to_have_class(re.compile(r"\bactive\b"))
    alice.shot("people")


def test_private_conversation(people, world):
    alice, bob = people
    alice.page.goto(alice.page.url.split("/app")[0] + f"/app/private/{world.bob.id}")
    alice.connected()
    alice.say("Psst, lunch at noon?")
    link = bob.page.locator(f".nav-link[data-key='private:{world.alice.id}']")
    expect(link.locator(".unread-badge")).to_have_text("1")
    expect(link.locator(".mention-badge")).to_have_count(0)
    link.click()
    expect(bob.message("Psst, lunch at noon?")).to_be_visible()
    bob.say("Sure!")
    expect(alice.message("Sure!")).to_be_visible()


def test_phone_width(browser, server, world):
    phone = Person(browser, server, world.bob, viewport=PHONE)
    try:
        expect(phone.message("Good morning team")).to_be_visible()
        expect(phone.page.locator("#sidebar")).not_to_be_in_viewport()
        phone.shot("chat-phone")
        phone.page.click("#menu")
        expect(phone.page.locator("#sidebar")).to_be_in_viewport()
        phone.shot("sidebar-phone")
        phone.page.locator(".nav-link", has_text="Main").click()
        expect(phone.page.locator("#sidebar")).not_to_be_in_viewport()
        phone.say("Typed on a phone")
    finally:
        phone.close()


def test_sign_out_ends_the_websocket(people, server):
    _, bob = people
    socket = next(ws for ws in reversed(bob.sockets) if not ws.is_closed())
    bob.page.click("#sign-out")
    expect(bob.page.locator("#login-form")).to_be_visible()
    if not socket.is_closed():
        socket.wait_for_event("close")
    assert socket.is_closed()
    # The session is over on the server too.
    cookies = {c["name"]: c["value"] for c in bob.context.cookies()}
    if "flowtwist_session" in cookies:
        assert requests.get(server.api + "/session",
                            cookies={"flowtwist_session": cookies["flowtwist_session"]}
                            ).status_code == 401
