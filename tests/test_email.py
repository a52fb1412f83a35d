"""Email into flows: real mails sent with smtplib over loopback to a running flowtwist,
checked on the flow's stream and through the REST API."""
import smtplib
import ssl
import subprocess
from email.headerregistry import Address
from email.message import EmailMessage

import pytest

from tests.conftest import World
from tests.support import Flowtwist

DOMAIN = "mail.test"
MAIN = f"main@acme.{DOMAIN}"
MAX_SIZE = 200_000


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", f"/CN={DOMAIN}", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


@pytest.fixture(scope="module")
def world(tls_files):
    cert, key = tls_files
    server = Flowtwist(ports=("smtp",), extra_args=[
        "--mail-domain", DOMAIN, "--mail-max-size", str(MAX_SIZE),
        "--smtp-tls-cert", str(cert), "--smtp-tls-key", str(key)])
    server.start()
    try:
        yield World(server)
    finally:
        server.close()


@pytest.fixture
def stream(world):
    reader = world.bob.stream("acme/main")
    assert reader.status == 200
    yield reader
    reader.close()


def smtp(world) -> smtplib.SMTP:
    return smtplib.SMTP("127.0.0.1", world.server.ports["smtp"], timeout=30)


def send(world, msg, to=(MAIN,), sender="someone@example.org") -> dict:
    with smtp(world) as s:
        return s.send_message(msg, from_addr=sender, to_addrs=list(to))


def mail(subject="Hello", body="Hi there", **headers) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = headers.pop("From", "Sam Sender <sam@example.org>")
    msg["To"] = headers.pop("To", MAIN)
    msg["Subject"] = subject
    for key, value in headers.items():
        msg[key.replace("_", "-")] = value
    msg.set_content(body)
    return msg


def next_mail(stream) -> dict:
    for event in stream.events(1, timeout=15, skip=("activity.user", "action")):
        assert event["event"] == "mail", event
        return event


def mails(world, flow="acme/main") -> list[dict]:
    r = world.alice.get(f"/flows/{flow}/messages", params={"event": "mail", "limit": 100})
    assert r.status_code == 200, r.text
    return r.json()


def test_plain_mail_lands_in_the_team_inbox(world, stream):
    msg = mail("Build broke", "The build broke.\nSee the log.\n", Message_ID="<plain-1@example.org>",
               Cc="Carl <carl@example.org>")
    refused = send(world, msg)
    assert refused == {}
    event = next_mail(stream)
    content = event["content"]
    assert content["subject"] == "Build broke"
    assert content["content"] == "The build broke.\nSee the log."
    assert content["contentType"] == "text/plain"
    assert content["from"] == [{"name": "Sam Sender", "address": "sam@example.org"}]
    assert content["to"] == [{"name": "", "address": MAIN}]
    assert content["cc"] == [{"name": "Carl", "address": "carl@example.org"}]
    assert content["bcc"] == [] and content["replyTo"] == []
    assert event["app"] == "influx" and event["user"] == "0"
    assert event["thread"]["title"] == "Build broke"
    stored = [m for m in mails(world) if m["id"] == event["id"]]
    assert stored and stored[0]["content"] == content


def test_retransmission_is_not_posted_twice(world, stream):
    msg = mail("Once only", "once", Message_ID="<once@example.org>")
    send(world, msg)
    first = next_mail(stream)
    send(world, msg)
    probe = mail("After", "after", Message_ID="<after-once@example.org>")
    send(world, probe)
    assert next_mail(stream)["content"]["subject"] == "After"
    assert [m["id"] for m in mails(world) if m["content"]["subject"] == "Once only"] == [first["id"]]


def test_plus_address_and_two_flows_in_one_mail(world, stream):
    side = world.alice.stream("acme/side")
    try:
        msg = mail("For both", "both flows", To=f"acme+main@{DOMAIN}, side@acme.{DOMAIN}")
        send(world, msg, to=(f"acme+main@{DOMAIN}", f"SIDE@ACME.{DOMAIN}", MAIN))
        assert next_mail(stream)["content"]["subject"] == "For both"
        other = side.events(1, timeout=15)[0]
        assert other["event"] == "mail" and other["content"]["subject"] == "For both"
        assert other["flow"] == world.side["id"]
    finally:
        side.close()
    assert [m["content"]["subject"] for m in mails(world)].count("For both") == 1


def test_multipart_alternative_prefers_plain_text(world, stream):
    msg = mail("Alt", "plain version\n")
    msg.add_alternative("<p>html <b>version</b></p>", subtype="html")
    send(world, msg)
    assert next_mail(stream)["content"]["content"] == "plain version"


def test_html_only_mail_becomes_safe_text(world, stream):
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "h@example.org", MAIN, "Html"
    msg.set_content("<html><head><style>p{color:red}</style><script>alert(1)</script></head>"
                    "<body><h1>Title</h1><p>Line &amp; more</p><ul><li>one</li><li>two</li>"
                    "</ul></body></html>", subtype="html")
    send(world, msg)
    text = next_mail(stream)["content"]["content"]
    assert "alert" not in text and "color" not in text and "<" not in text
    assert "Title" in text and "Line & more" in text and "- one" in text and "- two" in text


def test_attachments_are_stored_and_listed(world, stream):
    msg = mail("Report", "see attached")
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
    msg.add_attachment(png, maintype="image", subtype="png", filename="chart.png")
    msg.add_attachment("a,b\n1,2\n", subtype="csv", filename="data.csv")
    send(world, msg)
    event = next_mail(stream)
    assert event["content"]["content"] == "see attached"
    names = [a["file_name"] for a in event["attachments"]]
    assert names == ["chart.png", "data.csv"]
    assert event["content"]["attachments"] == event["attachments"]
    chart = event["attachments"][0]
    assert chart["content_type"] == "image/png" and chart["file_size"] == len(png)
    r = world.bob.get(chart["path"])
    assert r.status_code == 200 and r.content == png
    assert world.carol.get(chart["path"]).status_code == 404


def test_non_ascii_headers_and_bodies_in_any_charset(world, stream):
    msg = EmailMessage()
    msg["From"] = Address("Jörg Müller", "joerg", "example.de")
    msg["To"] = MAIN
    msg["Subject"] = "Grüße aus Köln — 日本語の件名"
    msg.set_content("Schöne Grüße, naïve café ☕\n")
    send(world, msg)
    event = next_mail(stream)
    assert event["content"]["subject"] == "Grüße aus Köln — 日本語の件名"
    assert event["content"]["from"] == [{"name": "Jörg Müller", "address": "joerg@example.de"}]
    assert event["content"]["content"] == "Schöne Grüße, naïve café ☕"

    raw = ("From: =?koi8-r?B?98HTyczJyg==?= <v@example.ru>\r\n"
           f"To: {MAIN}\r\n"
           "Subject: =?iso-8859-1?q?Caf=E9_cr=E8me?=\r\n"
           "MIME-Version: 1.0\r\n"
           "Content-Type: text/plain; charset=windows-1251\r\n"
           "Content-Transfer-Encoding: 8bit\r\n\r\n").encode() + "Привет, мир\r\n".encode("cp1251")
    with smtp(world) as s:
        s.sendmail("v@example.ru", [MAIN], raw)
    event = next_mail(stream)
    assert event["content"]["subject"] == "Café crème"
    assert event["content"]["from"][0]["name"] == "Василий"
    assert event["content"]["content"] == "Привет, мир"


def test_oversized_mail_is_refused_with_552(world, stream):
    big = mail("Too big", "x" * (MAX_SIZE + 1000))
    with smtp(world) as s:
        s.ehlo()
        assert int(s.esmtp_features["size"]) == MAX_SIZE
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            s.send_message(big, to_addrs=[MAIN])
        assert refused.value.smtp_code == 552
    # A client that does not declare SIZE is stopped at the end of DATA.
    with smtp(world) as s:
        s.ehlo()
        assert s.mail("a@example.org")[0] == 250
        assert s.rcpt(MAIN)[0] == 250
        code, _ = s.data(big.as_string())
        assert code == 552
        # The session goes on; the next mail is delivered.
        assert s.mail("a@example.org")[0] == 250
        assert s.rcpt(MAIN)[0] == 250
        assert s.data(mail("Small", "fits").as_string())[0] == 250
    assert next_mail(stream)["content"]["subject"] == "Small"
    assert "Too big" not in [m["content"]["subject"] for m in mails(world)]


def test_unknown_recipients_get_550_at_rcpt(world, stream):
    with smtp(world) as s:
        s.ehlo()
        s.mail("a@example.org")
        for address in (f"nope@acme.{DOMAIN}", f"main@nope.{DOMAIN}", "main@acme.elsewhere.org",
                        f"acme+nope@{DOMAIN}", f"plain@{DOMAIN}"):
            code, text = s.rcpt(address)
            assert code == 550, (address, code, text)
        assert s.rcpt(MAIN)[0] == 250
        assert s.data(mail("Partly", "one good recipient").as_string())[0] == 250
    assert next_mail(stream)["content"]["subject"] == "Partly"
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        send(world, mail("Nobody"), to=(f"ghost@acme.{DOMAIN}",))


def test_broken_mime_still_yields_a_readable_message(world, stream):
    # multipart without its boundary parameter, a bogus charset, broken base64 and a
    # header with a malformed encoded word
    raw = (f"From: broken@example.org\r\nTo: {MAIN}\r\n"
           "Subject: =?utf-8?B?broken?= encoded =?unknown-8?Q?x?=\r\n"
           "MIME-Version: 1.0\r\nContent-Type: multipart/mixed\r\n\r\n"
           "--xyz\r\nContent-Type: text/plain\r\n\r\nstill readable text\r\n--xyz--\r\n")
    with smtp(world) as s:
        assert s.sendmail("broken@example.org", [MAIN], raw) == {}
    event = next_mail(stream)
    assert "still readable text" in event["content"]["content"]
    assert event["content"]["subject"]

    raw = (f"From: broken@example.org\r\nTo: {MAIN}\r\nSubject: bad charset\r\n"
           "Content-Type: text/plain; charset=x-no-such-charset\r\n"
           "Content-Transfer-Encoding: base64\r\n\r\n"
           "aGVsbG8gd29ybGQ=!!notbase64\r\n")
    with smtp(world) as s:
        s.sendmail("broken@example.org", [MAIN], raw)
    event = next_mail(stream)
    assert event["content"]["subject"] == "bad charset"
    assert "hello world" in event["content"]["content"]

    with smtp(world) as s:
        s.sendmail("broken@example.org", [MAIN], "no headers at all, just a line\r\n")
    event = next_mail(stream)
    assert event["content"]["content"] == "no headers at all, just a line"
    assert event["content"]["subject"] == "(no subject)"


def test_empty_message_gets_a_clear_5xx(world):
    with smtp(world) as s:
        s.ehlo()
        s.mail("a@example.org")
        s.rcpt(MAIN)
        code, text = s.data(b"")
        assert code == 554 and b"empty" in text


def test_replies_land_in_the_same_thread(world, stream):
    send(world, mail("Question", "how?", Message_ID="<q1@example.org>"))
    root = next_mail(stream)
    send(world, mail("Re: Question", "like this", Message_ID="<q2@example.org>",
                     In_Reply_To="<q1@example.org>", References="<q1@example.org>"))
    reply = next_mail(stream)
    # a client that sends only In-Reply-To, answering the reply
    send(world, mail("Re: Re: Question", "thanks", Message_ID="<q3@example.org>",
                     In_Reply_To="<q2@example.org>"))
    second = next_mail(stream)
    send(world, mail("Question", "unrelated, same subject", Message_ID="<q4@example.org>"))
    other = next_mail(stream)
    assert reply["thread_id"] == root["thread_id"] == second["thread_id"]
    assert other["thread_id"] != root["thread_id"]
    thread = world.alice.get(f"/flows/acme/main/threads/{root['thread_id']}")
    assert thread.status_code == 200 and thread.json()["title"] == "Question"
    listed = world.alice.get(f"/flows/acme/main/threads/{root['thread_id']}/messages").json()
    assert [m["id"] for m in listed] == [root["id"], reply["id"], second["id"]]


def test_starttls(world, stream, tls_files):
    cert, _ = tls_files
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False
    with smtp(world) as s:
        s.ehlo()
        assert s.has_extn("starttls")
        s.starttls(context=context)
        s.ehlo()
        assert not s.has_extn("starttls")
        s.send_message(mail("Secret", "over TLS"), to_addrs=[MAIN])
    assert next_mail(stream)["content"]["subject"] == "Secret"


def test_admin_and_rest_show_the_flow_address(world):
    out = world.server.admin("--mail-domain", DOMAIN, "flow-email", "acme/main")
    assert out.split() == [MAIN, f"acme+main@{DOMAIN}"]
    assert world.alice.get("/flows/acme/main").json()["email"] == MAIN
    assert {f["email"] for f in world.alice.get("/flows").json()} == {
        MAIN, f"side@acme.{DOMAIN}"}
