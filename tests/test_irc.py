"""The IRC gateway's conformance checklist (spec irc-gateway.md §7), scenario by
scenario, as raw-socket tests against a running flowtwist."""
from __future__ import annotations

import base64
import time

import pytest

from tests.irc_support import RawClient
from tests.support import Flowtwist, User

SRV = "irc.example.com"
O = ":Otto!otto@example.com"
M = ":Ottomob!ottomob@example.com"
NS = ":NickServ!NickServ@services."
FD = ":Flowdock!Flowdock@services."
T, T2 = "#irc/ottotest", "#irc/ottotest2"


def n(code: str, rest: str) -> str:
    return f":{SRV} {code} {rest}"


class Fixture:
    def __init__(self, server: Flowtwist):
        self.server = server
        server.create_org("IRC")
        server.create_org("Lonely")
        self.otto = self.user("otto@example.com", "Otto", "Otto Hilska", "irc", admin=True)
        self.ottomob = self.user("ottomob@example.com", "Ottomob", "Ottomob Heelskae", "irc")
        self.clone = self.user("ottoclone@example.com", "OTTOMOB", "Fake ottomob", "irc")
        self.blocked = self.user("blocked@example.com", "blocked", "Blocked User", "irc")
        self.newbie = self.user("test@example.com", "test", "Test User", "irc")
        self.lonely = self.user("lonely@example.com", "lonely", "Lonely", "lonely")
        r = self.otto.put("/organizations/irc", {"name": "IRC Systems"})
        assert r.status_code == 200, r.text
        self.t = server.create_flow("irc", "Ottotest",
                                    [self.otto, self.ottomob, self.clone, self.blocked])
        self.t2 = server.create_flow("irc", "Ottotest2", [self.otto, self.ottomob],
                                     access_mode="invitation")
        r = self.otto.put(f"/flows/irc/ottotest/users/{self.blocked.id}", {"disabled": True})
        assert r.status_code == 200, r.text
        r = self.otto.put("/flows/irc/ottotest2", {"open": False})
        assert r.status_code == 200, r.text
        self.port = server.ports["irc"]

    def user(self, email, nick, name, org, admin=False) -> User:
        args = ["create-user", "--email", email, "--nick", nick, "--name", name,
                "--password", "secret", "--org", org] + (["--admin"] if admin else [])
        out = self.server.admin(*args).splitlines()
        return User(self.server, int(out[0].split()[1]), email, nick, "secret",
                    out[1].split()[-1])

    def client(self) -> RawClient:
        c = RawClient(self.port)
        assert c.line() == n("020", "* :Please wait while we process your connection.")
        return c

    def otto_client(self) -> RawClient:
        """A (as the checklist says): Otto logged in with PASS."""
        c = self.client()
        lines = c.register("x", "x", "otto@example.com secret")
        assert f"{O} JOIN :{T}" in lines
        return c


@pytest.fixture(scope="module")
def fx():
    server = Flowtwist(ports=("irc",), extra_args=["--server-name", SRV])
    try:
        server.start()
        yield Fixture(server)
    finally:
        server.close()


def welcome_lines(lines):
    return [l for l in lines if l.split()[1] in ("001", "002", "003", "004", "005", "251",
                                                 "375", "372", "376", "422")]


# ---------------------------------------------------------------- registration

def test_01_connect_notice(fx):
    c = fx.client()
    c.close()


def test_02_register_without_password(fx):
    c = fx.client()
    lines = c.register()
    assert lines[0] == n("001", "guest :Welcome to the Internet Relay Network guest!guest@unknown")
    codes = [l.split()[1] for l in lines]
    assert codes[1:7] == ["002", "003", "004", "005", "251", "422"]
    assert lines[3] == n("004", f"guest {SRV} {lines[1].split()[-1]} i bis")
    assert "CHANTYPES=# CHANMODES=b,,,is CASEMAPPING=ascii NICKLEN=64 CHANNELLEN=200" in lines[4]
    assert lines[7].startswith(f"{NS} NOTICE guest :If you don't have a password, you can set it at: ")
    assert lines[7].endswith("/account")
    assert lines[8] == f"{NS} NOTICE guest :Please identify via /msg NickServ identify <email> <password>"
    assert lines[9].startswith("PING :")
    c.close()


def burst_of_3(prefix_line):
    return [prefix_line, f"{O} JOIN :{T}", n("332", f"Otto {T} :Ottotest (IRC Systems)"),
            n("353", f"Otto @ {T} :Otto Ottomob OTTOMOB2"), n("366", f"Otto {T} :End of NAMES list")]


def test_03_identify(fx):
    c = fx.client()
    c.register()
    lines = c.command("PRIVMSG NickServ :identify otto@example.com secret")
    assert lines == burst_of_3(":guest!guest@unknown NICK :Otto")
    c.close()


def test_04_identify_bad_password(fx):
    c = fx.client()
    c.register()
    assert c.command("PRIVMSG NickServ :identify otto@example.com bad") == [
        f"{NS} NOTICE guest :Authentication failed. Check username and password and try again."]
    assert c.command(f"JOIN {T}") == [n("403", f"guest {T} :No such channel")]
    assert c.command("PRIVMSG NickServ :blah") == [
        f"{NS} NOTICE guest :Usage: IDENTIFY <email> <password>"]
    # IDENTIFY may be retried
    assert c.command("PRIVMSG nickserv :IDENTIFY otto@example.com secret") == burst_of_3(
        ":guest!guest@unknown NICK :Otto")
    assert c.command("PRIVMSG NickServ :identify otto@example.com secret") == [
        f"{NS} NOTICE Otto :You are already identified."]
    c.close()


def test_05_pass(fx):
    c = fx.client()
    lines = c.register("x", "x", "otto@example.com secret")
    assert lines[0] == n("001", "x :Welcome to the Internet Relay Network x!otto@example.com")
    assert not any("NickServ" in l for l in lines)
    start = next(i for i, l in enumerate(lines) if " NICK " in l)
    assert lines[start:start + 5] == burst_of_3(":x!otto@example.com NICK :Otto")
    assert lines[-1].startswith("PING :")
    assert T2 not in "".join(lines)
    c.close()


def test_05_pass_trailing_form_with_spaces_in_password(fx):
    r = fx.otto.put  # noqa: F841 (the password "my pw" is set through the admin command)
    fx.server.admin("set-password", "lonely@example.com", "--password", "my pw")
    try:
        c = fx.client()
        lines = c.register("x", "x", ":lonely@example.com my pw")
        assert ":x!lonely@example.com NICK :lonely" not in lines      # no flows: no NICK
        assert f"{NS} NOTICE x :Seems that you don't have access to any flows." in lines
        assert not any(" 464 " in l for l in lines)
        c.close()
    finally:
        fx.server.admin("set-password", "lonely@example.com", "--password", "secret")


def test_06_bad_pass(fx):
    c = fx.client()
    lines = c.register("x", "x", "otto@example.com bad")
    assert welcome_lines(lines)[0].split()[1] == "001"
    i = next(i for i, l in enumerate(lines) if " 464 " in l)
    assert lines[i:i + 2] == [n("464", "x :Password incorrect"),
                              f"{NS} NOTICE x :Authentication failed. Check username and password and try again."]
    assert c.command("PRIVMSG NickServ :identify otto@example.com secret") == burst_of_3(
        ":x!otto@example.com NICK :Otto")
    c.close()


def test_07_no_flows(fx):
    c = fx.client()
    c.register()
    assert c.command("PRIVMSG NickServ :identify lonely@example.com secret") == [
        f"{NS} NOTICE guest :Seems that you don't have access to any flows.",
        f"{NS} NOTICE guest :Log in and check your current subscription status: {fx.server.api}"]
    c.close()


def test_08_invalid_username(fx):
    c = fx.client()
    c.send("NICK a", "USER @x 0 * :X")
    assert c.wait_closed() == ["ERROR :Closing Link: a[] (Invalid Username)"]


def test_09_before_registration(fx):
    c = fx.client()
    assert c.command("NICK b@d") == [n("432", "* b@d :Erroneous nickname")]
    assert c.command("NICK") == [n("431", "* :No nickname given")]
    assert c.command(f"JOIN {T}") == [n("451", "* :You have not registered")]
    assert c.command("USER a b c") == [n("461", "* USER :Not enough parameters")]
    assert c.command("PASS justoneword") == []
    c.close()


def test_10_ping_any_state(fx):
    c = fx.client()
    assert c.command("PING :abc") == [f":{SRV} PONG {SRV} :abc"]
    c.register()
    assert c.command("PING :abc") == [f":{SRV} PONG {SRV} :abc"]
    assert c.command("PING") == [n("409", "guest :No origin specified")]
    c.close()


# ---------------------------------------------------------------- commands, authenticated

@pytest.fixture
def a(fx):
    c = fx.otto_client()
    yield c
    c.close()


def test_11_nick_and_whois_unknown(a):
    assert a.command("NICK Newnick") == [n("432", "Otto Newnick :Erroneous nickname")]
    assert a.command("NICK Otto") == []
    assert a.command("WHOIS Newnick") == [n("401", "Otto Newnick :No such nick/channel"),
                                          n("318", "Otto Newnick :End of WHOIS list")]


def test_12_unknown_and_reregistration(a):
    assert a.command("FOO") == [n("421", "Otto FOO :Unknown command")]
    assert a.command("USER a b c :d") == [n("462", "Otto :Unauthorized command (already registered)")]
    assert a.command("PASS a b") == [n("462", "Otto :Unauthorized command (already registered)")]
    assert a.command("TOPIC") == [n("461", "Otto TOPIC :Not enough parameters")]


def test_13_join_open_channel(a):
    assert a.command(f"JOIN {T}") == []


def test_14_join_closed_channel(fx, a):
    try:
        assert a.command(f"JOIN {T2}") == [
            f"{O} JOIN :{T2}", n("332", f"Otto {T2} :Ottotest2 (IRC Systems)"),
            n("353", f"Otto @ {T2} :Otto Ottomob"), n("366", f"Otto {T2} :End of NAMES list")]
        flow = fx.otto.get("/flows/irc/ottotest2").json()
        assert flow["open"] is True
    finally:
        assert a.command(f"PART {T2}") == [f"{O} PART {T2}"]
    assert fx.otto.get("/flows/irc/ottotest2").json()["open"] is False


def test_14_join_refused(fx):
    # blocked is a blocked member of #t: joining it is refused
    c = fx.client()
    c.register("b", "b", "blocked@example.com secret")
    # blocked sees #t only as an organisation-visible flow it cannot rejoin
    lines = c.command(f"JOIN {T}")
    assert lines in ([n("437", f"blocked {T} :Channel temporarily unavailable")],
                     [n("403", f"blocked {T} :No such channel")])
    c.close()


def test_15_join_unknown(a):
    assert a.command("JOIN #test,#test2") == [n("403", "Otto #test :No such channel"),
                                              n("403", "Otto #test2 :No such channel")]
    assert a.command("JOIN 0") == [n("403", "Otto 0 :No such channel")]


def test_16_names(a):
    assert a.command("NAMES #IRC/OttoTest") == [n("353", f"Otto @ {T} :Otto Ottomob OTTOMOB2"),
                                                n("366", f"Otto {T} :End of NAMES list")]
    assert a.command("NAMES #nope") == [n("366", "Otto #nope :End of NAMES list")]
    assert a.command("NAMES") == [n("366", "Otto * :End of NAMES list")]


def test_17_part(fx, a):
    try:
        assert a.command(f"PART {T} :bye") == [f"{O} PART {T}"]
        assert fx.otto.get("/flows/irc/ottotest").json()["open"] is False
        assert a.command(f"PART {T}") == [n("442", f"Otto {T} :You're not on that channel")]
        assert a.command("PART #test") == [n("403", "Otto #test :No such channel")]
    finally:
        assert a.command(f"JOIN {T}")[0] == f"{O} JOIN :{T}"
    assert fx.otto.get("/flows/irc/ottotest").json()["open"] is True


def test_18_privmsg_channel(fx, a):
    other = fx.otto_client()
    stream = fx.ottomob.stream(fx.t["id"])
    assert a.command(f"PRIVMSG {T} :Hello  world!") == []
    got = stream.events(1)[0]
    assert (got["event"], got["content"], got["user"]) == ("message", "Hello  world!", str(fx.otto.id))
    assert other.until(lambda l: "Hello" in l) == [f"{O} PRIVMSG {T} :Hello  world!"]
    assert a.quiet(0.3) == []
    stream.close()
    other.close()


def test_19_action(fx, a):
    stream = fx.ottomob.stream(fx.t["id"])
    assert a.command(f"PRIVMSG {T} :\x01ACTION waves\x01") == []
    got = stream.events(1)[0]
    assert (got["event"], got["content"]) == ("line", "waves")
    stream.close()


def test_19_formatting_removed_and_other_ctcp_dropped(fx, a):
    stream = fx.ottomob.stream(fx.t["id"])
    assert a.command(f"PRIVMSG {T} :\x01VERSION\x01") == []
    assert a.command(f"PRIVMSG {T} :\x02\x0304,12\x1d\x1f\x0f") == [n("412", "Otto :No text to send")]
    assert a.command(f"PRIVMSG {T} :\x02bold\x02 and \x0304red\x03") == []
    got = stream.events(1)[0]
    assert got["content"] == "bold and red"
    stream.close()


def test_20_private(fx, a):
    stream = fx.ottomob.stream({"user": "1"}, path="/flows")
    assert a.command("PRIVMSG ottomob :hi") == []
    got = stream.events(1)[0]
    assert (got["event"], got["content"], got["to"]) == ("message", "hi", str(fx.ottomob.id))
    assert a.command("PRIVMSG Otto :note") == [f"{O} PRIVMSG Otto :note"]
    assert stream.quiet(0.3) == []
    stream.close()


def test_21_no_such_target(a):
    assert a.command("PRIVMSG nobody :x") == [n("401", "Otto nobody :No such nick/channel")]
    try:
        a.command(f"PART {T2}")
        assert a.command(f"PRIVMSG {T2} :x") == [n("404", f"Otto {T2} :Cannot send to channel")]
    finally:
        pass
    assert a.command("PRIVMSG") == [n("411", "Otto :No recipient given (PRIVMSG)")]
    assert a.command(f"PRIVMSG {T}") == [n("412", "Otto :No text to send")]


def test_22_who(a):
    assert a.command(f"WHO {T}") == [
        n("352", f"Otto {T} otto example.com {SRV} Otto H :0 Otto Hilska"),
        n("352", f"Otto {T} ottomob example.com {SRV} Ottomob H :0 Ottomob Heelskae"),
        n("352", f"Otto {T} ottoclone example.com {SRV} OTTOMOB2 H :0 Fake ottomob"),
        n("315", f"Otto {T} :End of WHO list")]
    assert a.command("WHO *.fi") == [n("315", "Otto *.fi :End of WHO list")]


def test_23_whois(a):
    lines = a.command("WHOIS ottomob")
    assert lines[:3] == [n("311", "Otto Ottomob ottomob example.com * :Ottomob Heelskae"),
                         n("319", f"Otto Ottomob :{T} {T2}"),
                         n("312", f"Otto Ottomob {SRV} :flowtwist IRC gateway")]
    code, me, nick, idle, signon, *rest = lines[3].split()[1:]
    assert (code, me, nick, " ".join(rest)) == ("317", "Otto", "Ottomob", ":seconds idle, signon time")
    assert idle.isdigit() and signon.isdigit()
    assert lines[4:] == [n("318", "Otto Ottomob :End of WHOIS list")]
    own = a.command("WHOIS Otto")
    assert own[:2] == [n("311", "Otto Otto otto example.com * :Otto Hilska"), n("319", f"Otto Otto :{T}")]


def test_24_whois_nickserv(fx, a):
    guest = fx.client()
    guest.register()
    for client, me in ((a, "Otto"), (guest, "guest")):
        lines = client.command("WHOIS NickServ")
        assert lines[0] == n("311", f"{me} NickServ NickServ services. * :Nickname Services")
        assert [l.split()[1] for l in lines] == ["311", "312", "317", "318"]


def test_25_whowas(a):
    assert a.command("WHOWAS Otto") == [n("406", "Otto Otto :There was no such nickname"),
                                        n("369", "Otto Otto :End of WHOWAS")]


def test_26_ison(fx, a):
    c = fx.client()
    c.register()
    assert c.command("ISON nickserv foo") == [n("303", "guest :NickServ")]
    assert a.command("ISON SomeOne ottomob nickserv") == [n("303", "Otto :Ottomob")]
    assert a.command("ISON :SomeOne ottomob OTTOMOB2") == [n("303", "Otto :Ottomob OTTOMOB2")]
    c.close()


def test_27_list(fx, a):
    assert a.command("LIST") == [n("322", f"Otto {T} 3 :Ottotest (IRC Systems)"),
                                 n("322", f"Otto {T2} 2 :Ottotest2 (IRC Systems)"),
                                 n("323", "Otto :End of LIST")]
    assert a.command(f"LIST {T2},#foo") == [n("322", f"Otto {T2} 2 :Ottotest2 (IRC Systems)"),
                                            n("323", "Otto :End of LIST")]
    c = fx.client()
    c.register()
    assert c.command("LIST") == [n("323", "guest :End of LIST")]
    c.close()


def test_28_topic(a):
    assert a.command(f"TOPIC {T}") == [n("332", f"Otto {T} :Ottotest (IRC Systems)")]
    assert a.command(f"TOPIC {T} :New") == [n("477", f"Otto {T} :Channel doesn't support modes")]
    assert a.command("TOPIC #foobar") == [n("403", "Otto #foobar :No such channel")]


def test_29_mode(a):
    assert a.command("MODE otto") == [n("221", "Otto +i")]
    assert a.command("MODE Otto +i") == []
    assert a.command("MODE Ottomob") == [n("502", "Otto :Cannot change mode for other users")]
    assert a.command(f"MODE {T}") == [n("324", f"Otto {T} +is")]
    assert a.command(f"MODE {T} +b") == [n("368", f"Otto {T} :End of Channel Ban List")]
    assert a.command(f"MODE {T} +o Ottomob") == [n("482", f"Otto {T} :You're not channel operator")]
    assert a.command("MODE #nope") == [n("403", "Otto #nope :No such channel")]


def test_30_away(fx, a):
    assert a.command("AWAY :brb") == [n("306", "Otto :You have been marked as being away")]
    assert a.command("AWAY") == [n("305", "Otto :You are no longer marked as being away")]
    assert a.command("AWAY :") == [n("305", "Otto :You are no longer marked as being away")]


def test_31_quit(fx):
    c = fx.otto_client()
    c.send("QUIT :bye")
    assert c.wait_closed() == ['ERROR :Closing Link: Otto[otto@example.com] ("bye")']
    c = fx.otto_client()
    c.send("QUIT")
    assert c.wait_closed() == ['ERROR :Closing Link: Otto[otto@example.com] ("leaving")']


# ---------------------------------------------------------------- Flowdock → IRC

def test_32_messages(fx, a):
    fx.ottomob.say(fx.t, "test")
    assert a.until("PRIVMSG") == [f"{M} PRIVMSG {T} :test"]
    fx.ottomob.say(fx.t, "a\nb")
    assert a.until("PRIVMSG") == [f"{M} PRIVMSG {T} :a"]
    assert a.until("PRIVMSG") == [f"{M} PRIVMSG {T} :b"]
    fx.ottomob.say(fx.t, "test 😡")
    assert a.until("PRIVMSG") == [f"{M} PRIVMSG {T} :test :rage:"]
    fx.otto.say(fx.t, "from the web")
    assert a.until("PRIVMSG") == [f"{O} PRIVMSG {T} :from the web"]


def test_32_long_message_is_split(fx, a):
    text = " ".join(["wörd"] * 300)
    fx.ottomob.say(fx.t, text)
    pieces = []
    while sum(len(p) for p in pieces) + len(pieces) - 1 < len(text):
        line = a.until("PRIVMSG")[0]
        assert len(line.encode()) + 2 <= 512
        pieces.append(line.split(" :", 1)[1])
    assert " ".join(pieces) == text


def test_33_comment_status_line(fx, a):
    item = fx.otto.say(fx.t, "T")
    a.until("PRIVMSG")
    r = fx.otto.post(f"/flows/irc/ottotest/messages/{item['id']}/comments",
                     {"event": "comment", "content": "test"})
    assert r.status_code == 201, r.text
    assert a.until("PRIVMSG") == [f"{O} PRIVMSG {T} :[T] << test"]
    fx.otto.post("/messages", {"flow": fx.t["id"], "event": "status", "content": "brb"})
    assert a.until("PRIVMSG") == [f"{O} PRIVMSG {T} :\x01ACTION changed status to: brb\x01"]
    fx.otto.post("/messages", {"flow": fx.t["id"], "event": "line", "content": "test"})
    assert a.until("PRIVMSG") == [f"{O} PRIVMSG {T} :\x01ACTION test\x01"]
    reply = fx.ottomob.say(fx.t, "reply", thread_id=item["thread_id"])
    assert reply["thread_id"] == item["thread_id"]
    assert a.until("PRIVMSG") == [f"{M} PRIVMSG {T} :[T] << reply"]


def test_33_file(fx, a):
    data = base64.b64encode(b"hello").decode()
    r = fx.ottomob.post("/messages", {"flow": fx.t["id"], "event": "file", "content": {
        "data": data, "content_type": "text/plain", "file_name": "hello.txt"}})
    assert r.status_code == 201, r.text
    path = r.json()["content"]["path"]
    assert a.until("PRIVMSG") == [f"{M} PRIVMSG {T} :{fx.server.api}{path}"]


def test_34_mail_and_activity(fx, a):
    r = fx.otto.post(f"/messages/team_inbox/{fx.t['api_token']}", {
        "source": "CI", "from_address": "a@example.org", "subject": "Hi", "content": "body"})
    assert r.status_code == 200, r.text
    assert a.until("NOTICE") == [f"{FD} NOTICE {T} :[Email] a@example.org: Hi"]
    r = fx.otto.post(f"/flows/irc/ottotest/messages", {
        "event": "activity", "author": {"name": "Oskari V"},
        "title": 'Fix <a href="http://x.example/">it</a>', "external_thread_id": "bug-1",
        "thread": {"title": "Bug"}})
    assert r.status_code in (201, 202), r.text
    assert a.until("NOTICE") == [f"{FD} NOTICE {T} :[Bug] Oskari V: Fix it"]


def test_35_private_and_external(fx, a):
    r = fx.ottomob.post(f"/private/{fx.otto.id}/messages", {"event": "message", "content": "private test"})
    assert r.status_code == 201, r.text
    assert a.until("PRIVMSG") == [f"{M} PRIVMSG Otto :private test"]
    r = fx.otto.post(f"/private/{fx.ottomob.id}/messages", {"event": "message", "content": "mine"})
    assert r.status_code == 201, r.text
    r = fx.otto.post(f"/messages/chat/{fx.t['api_token']}",
                     {"external_user_name": "Robot:!@", "content": "test"})
    assert r.status_code == 200, r.text
    assert a.until("PRIVMSG") == [f":Robot___!unknown@user.flowdock PRIVMSG {T} :test"]


def test_36_membership_events(fx, a):
    r = fx.newbie.put("/flows/irc/ottotest", {"open": True})
    assert r.status_code == 200, r.text
    assert a.until(" JOIN ") == [f":test!test@example.com JOIN {T}"]
    r = fx.otto.put(f"/flows/irc/ottotest/users/{fx.ottomob.id}", {"disabled": True})
    assert r.status_code == 200, r.text
    assert a.until(" PART ") == [f"{M} PART {T}"]
    r = fx.otto.put(f"/flows/irc/ottotest/users/{fx.ottomob.id}", {"disabled": False})
    assert r.status_code == 200, r.text


def test_36_user_edit(fx, a):
    try:
        r = fx.ottomob.put(f"/users/{fx.ottomob.id}", {"nick": "Mobster"})
        assert r.status_code == 200, r.text
        # Ottomob's rename frees "OTTOMOB" for ottoclone (recomputed nicks, [rec])
        assert a.until(" NICK ") == [f"{M} NICK :Mobster"]
        assert [l for l in a.quiet(0.5) if " NICK " in l] in (
            [], [":OTTOMOB2!ottoclone@example.com NICK :OTTOMOB"])
    finally:
        fx.ottomob.put(f"/users/{fx.ottomob.id}", {"nick": "Ottomob"})


def test_37_message_edit(fx, a):
    item = fx.otto.say(fx.t, "old")
    a.until("PRIVMSG")
    r = fx.otto.put(f"/flows/irc/ottotest/messages/{item['id']}", {"content": "new"})
    assert r.status_code == 200, r.text
    assert a.until("PRIVMSG") == [f"{O} PRIVMSG {T} :new*"]
