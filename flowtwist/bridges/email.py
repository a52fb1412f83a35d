"""Email into flows: an ESMTP server (twisted.mail) where every flow has an address.

A flow's address is `<flow>@<org>.<mail domain>` and/or `<org>+<flow>@<mail domain>`
(--mail-address-style).  Unknown recipients get 550 at RCPT; SIZE is advertised and
enforced (552); STARTTLS is offered when --smtp-tls-cert is set.  A message becomes a
`mail` event in the flow's team inbox (spec section 5): headers decoded (RFC 2047),
the body as plain text in any charset (HTML converted to text), attachments stored
and listed.  Its Message-ID is the event's uuid, so a retransmission is never posted
twice; In-Reply-To/References put a reply into the thread of the mail it answers.

Nothing accepted is lost: if posting fails the sender gets 451 and retries; a message
that cannot be parsed as MIME is still posted as readable text, with the original
attached.
"""
from __future__ import annotations

import email
import email.header
import email.policy
import email.utils
import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from twisted.application import internet
from twisted.internet import defer, endpoints, protocol, threads
from twisted.logger import Logger
from twisted.mail import smtp
from zope.interface import implementer

from flowtwist.html import to_text
from flowtwist.model import MAX_CONTENT, Flow, ValidationError
from flowtwist.service import register_edge

log = Logger()

NO_SUBJECT = "(no subject)"
MAX_THREAD_HOPS = 20


# ---------------------------------------------------------------- addresses

class FlowAddresses:
    """Which address belongs to which flow, in the configured style."""

    def __init__(self, domain: str = "localhost", style: str = "both"):
        self.domain = (domain or "localhost").strip().lower().rstrip(".")
        self.style = style

    @classmethod
    def from_settings(cls, settings: dict) -> "FlowAddresses":
        return cls(settings.get("mail-domain") or "localhost",
                   settings.get("mail-address-style") or "both")

    def addresses(self, org: str, flow: str) -> list[str]:
        """A flow's addresses, the preferred one first."""
        out = []
        if self.style in ("subdomain", "both"):
            out.append(f"{flow}@{org}.{self.domain}")
        if self.style in ("plus", "both"):
            out.append(f"{org}+{flow}@{self.domain}")
        return out

    def parse(self, address: str) -> tuple[str, str] | None:
        """(org, flow) parameterized names for an address, or None."""
        local, _, domain = address.strip().lower().rpartition("@")
        if not local or not domain:
            return None
        domain = domain.rstrip(".")
        if self.style in ("plus", "both") and domain == self.domain and "+" in local:
            org, _, flow = local.partition("+")
            if org and flow:
                return org, flow
        suffix = "." + self.domain
        if self.style in ("subdomain", "both") and domain.endswith(suffix):
            org = domain[:-len(suffix)]
            if org and "." not in org:
                return org, local
        return None


# ---------------------------------------------------------------- parsing

@dataclass
class ParsedMail:
    subject: str = NO_SUBJECT
    text: str = ""
    from_: list[dict] = field(default_factory=list)
    to: list[dict] = field(default_factory=list)
    cc: list[dict] = field(default_factory=list)
    bcc: list[dict] = field(default_factory=list)
    reply_to: list[dict] = field(default_factory=list)
    sender: list[dict] = field(default_factory=list)
    message_id: str | None = None
    in_reply_to: str | None = None
    references: list[str] = field(default_factory=list)
    attachments: list[tuple[bytes, str, str]] = field(default_factory=list)
    broken: bool = False


_MSGID = re.compile(r"<[^<>\s]+>")


def _msgids(value: str | None) -> list[str]:
    if not value:
        return []
    found = _MSGID.findall(value)
    if not found and value.strip():
        found = [value.strip().split()[0]]
    return [m[:500] for m in found]


def _header(msg, name: str) -> str | None:
    """A header's decoded value; never raises on a malformed header."""
    try:
        value = msg[name]
        if value is None:
            return None
        return str(value)
    except Exception:
        pass
    for key, raw in msg.raw_items():
        if key.lower() == name.lower():
            try:
                return str(email.header.make_header(email.header.decode_header(raw)))
            except Exception:
                return str(raw)
    return None


def _addresses(msg, name: str) -> list[dict]:
    try:
        header = msg[name]
        if header is None:
            return []
        found = [(a.display_name, a.addr_spec) for a in header.addresses]
    except Exception:
        raw = _header(msg, name) or ""
        found = email.utils.getaddresses([raw])
    return [{"name": n or "", "address": a} for n, a in found if a and a != "<>"]


def _decode(part) -> str:
    """A text part's content in whatever charset it declares (or guesses)."""
    try:
        content = part.get_content()
        if isinstance(content, str):
            return content
    except Exception:
        pass
    payload = part.get_payload(decode=True)
    if payload is None:
        payload = part.get_payload()
        return payload if isinstance(payload, str) else ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, "replace")
    except LookupError:
        try:
            return payload.decode("utf-8")
        except UnicodeDecodeError:
            return payload.decode("latin-1")


def _walk_leaves(part, out: list) -> None:
    """Leaf parts, with forwarded messages (message/rfc822) kept whole."""
    if part.get_content_type() == "message/rfc822":
        out.append(part)
        return
    if part.is_multipart():
        payload = part.get_payload()
        if isinstance(payload, list):
            for sub in payload:
                _walk_leaves(sub, out)
        return
    out.append(part)


def _attachment_of(part) -> tuple[bytes, str, str] | None:
    ctype = part.get_content_type()
    try:
        filename = part.get_filename()
    except Exception:
        filename = None
    if ctype == "message/rfc822":
        try:
            inner = part.get_payload()[0]
            data = inner.as_bytes()
            subject = _header(inner, "subject") or "message"
        except Exception:
            return None
        return data, ctype, filename or f"{subject[:80]}.eml"
    try:
        data = part.get_payload(decode=True)
    except Exception:
        data = None
    if data is None:
        return None
    if not filename:
        ext = {"text/html": "html", "text/plain": "txt"}.get(ctype, ctype.split("/")[-1])
        filename = f"attachment.{ext}"
    return data, ctype, filename


def parse_mail(raw: bytes) -> ParsedMail:
    """Everything the `mail` event needs from a message, however broken it is."""
    out = ParsedMail()
    try:
        msg = email.message_from_bytes(raw, policy=email.policy.default)
    except Exception:
        log.failure("unparseable message, kept as text")
        out.text = raw.decode("utf-8", "replace")
        out.broken = True
        out.attachments.append((raw, "message/rfc822", "original.eml"))
        return out
    out.subject = " ".join((_header(msg, "subject") or "").split()) or NO_SUBJECT
    out.from_ = _addresses(msg, "from")
    out.to = _addresses(msg, "to")
    out.cc = _addresses(msg, "cc")
    out.bcc = _addresses(msg, "bcc")
    out.reply_to = _addresses(msg, "reply-to")
    out.sender = _addresses(msg, "sender")
    ids = _msgids(_header(msg, "message-id"))
    out.message_id = ids[0] if ids else None
    parents = _msgids(_header(msg, "in-reply-to"))
    out.in_reply_to = parents[-1] if parents else None
    out.references = _msgids(_header(msg, "references"))[:100]

    body = None
    try:
        body = msg.get_body(preferencelist=("plain", "html"))
    except Exception:
        body = None
    if body is not None:
        text = _decode(body)
        out.text = to_text(text) if body.get_content_type() == "text/html" else text
    leaves: list = []
    try:
        _walk_leaves(msg, leaves)
    except Exception:
        leaves = []
    for part in leaves:
        if part is body:
            continue
        try:
            disposition = part.get_content_disposition()
        except Exception:
            disposition = None
        maintype = part.get_content_maintype()
        has_name = bool(part.get_param("name")) or bool(part.get_param(
            "filename", header="content-disposition"))
        if disposition == "attachment" or has_name or maintype not in ("text",) \
                or part.get_content_type() == "message/rfc822":
            attachment = _attachment_of(part)
            if attachment is not None:
                out.attachments.append(attachment)
        elif body is None and maintype == "text":
            # No recognisable body (broken structure): the first text part is it.
            body = part
            text = _decode(part)
            out.text = to_text(text) if part.get_content_subtype() == "html" else text
    if body is None and not msg.is_multipart():
        out.text = _decode(msg)
    if body is None and not out.text.strip():
        # Broken MIME: show what there is rather than nothing, and keep the original.
        out.broken = True
        text = raw.split(b"\r\n\r\n", 1)[-1] if b"\r\n\r\n" in raw else raw.split(b"\n\n", 1)[-1]
        out.text = text.decode("utf-8", "replace")
        out.attachments.append((raw, "message/rfc822", "original.eml"))
    out.text = out.text.replace("\r\n", "\n").strip()
    if len(out.text) > MAX_CONTENT * 8:
        out.text = out.text[:MAX_CONTENT * 8] + "\n[…]"
    return out


def mail_uuid(message_id: str | None, raw: bytes) -> str:
    """Stable across retransmissions: the Message-ID, or the message itself."""
    basis = message_id.encode("utf-8", "replace") if message_id else raw
    return "mail:" + hashlib.sha256(basis).hexdigest()[:40]


# ---------------------------------------------------------------- posting

class MailPoster:
    """Turns a received message into `mail` events in flows."""

    def __init__(self, app):
        self.app = app

    async def post(self, flow: Flow, raw: bytes, parsed: ParsedMail) -> None:
        uuid = mail_uuid(parsed.message_id, raw)
        if await self.app.store.find_uuid(flow.id, uuid) is not None:
            return      # a retransmission: already in the flow
        attachments = []
        for data, ctype, name in parsed.attachments:
            try:
                attachments.append(await self.app.files.save(flow.id, data, ctype, name))
            except ValidationError:
                log.warn("attachment {name} of {uuid} too large, dropped", name=name, uuid=uuid)
        content: dict[str, Any] = {
            "subject": parsed.subject, "content": parsed.text, "contentType": "text/plain",
            "from": parsed.from_, "to": parsed.to, "cc": parsed.cc, "bcc": parsed.bcc,
            "replyTo": parsed.reply_to, "sender": parsed.sender,
            "messageId": parsed.message_id, "inReplyTo": parsed.in_reply_to,
            "references": parsed.references}
        if attachments:
            content["attachments"] = attachments
        thread_key = await self.thread_key(flow, parsed, uuid)
        await self.app.chat.post_inbox(flow, "mail", content, [], title=parsed.subject,
                                       uuid=uuid, thread_key=thread_key, wait=False)

    async def thread_key(self, flow: Flow, parsed: ParsedMail, uuid: str) -> str:
        """The root of the conversation: the first of References (clients keep the
        root there), else the root of the mail it replies to, else itself."""
        references, parent = parsed.references, parsed.in_reply_to
        for _ in range(MAX_THREAD_HOPS):
            if references:
                return "mail-thread:" + references[0]
            if not parent:
                break
            found = await self.app.store.find_uuid(flow.id, mail_uuid(parent, b""))
            content = (found or {}).get("content")
            if not isinstance(content, dict):
                return "mail-thread:" + parent
            references = content.get("references") or []
            parent, last = content.get("inReplyTo"), content.get("messageId")
            if not references and not parent:
                return "mail-thread:" + (last or parent or "")
        if parsed.message_id:
            return "mail-thread:" + parsed.message_id
        return uuid


# ---------------------------------------------------------------- SMTP

class Transaction:
    """One MAIL FROM … DATA: the bytes are kept once however many flows receive them."""

    def __init__(self, poster: MailPoster, max_size: int):
        self.poster = poster
        self.max_size = max_size
        self.lines: list[bytes] = []
        self.size = 0
        self.writer: "FlowMessage | None" = None
        self.flows: list[Flow] = []
        self._parsing = defer.DeferredLock()
        self._parsed: ParsedMail | None = None
        self._raw: bytes | None = None

    def line(self, message: "FlowMessage", line: bytes) -> None:
        if self.writer is None:
            self.writer = message
        if message is not self.writer:
            return
        self.size += len(line) + 2
        if self.size > self.max_size:
            raise smtp.SMTPServerError(   # bytes: twisted sends it as it is
                552, b"5.3.4 Message too big (the limit is %d bytes)" % self.max_size)
        self.lines.append(line)

    def deliver(self, flow: Flow) -> defer.Deferred:
        return defer.ensureDeferred(self._deliver(flow))

    async def _deliver(self, flow: Flow) -> None:
        async with self._parsing:   # parsed once, in a thread, for all the flows
            if self._parsed is None:
                self._raw = b"\r\n".join(self.lines) + b"\r\n"
                self.lines = []
                if not self._raw.strip():
                    raise smtp.SMTPServerError(554, b"5.6.0 The message is empty")
                self._parsed = await threads.deferToThread(parse_mail, self._raw)
        parsed = self._parsed
        try:
            await self.poster.post(flow, self._raw, parsed)
        except smtp.SMTPServerError:
            raise
        except Exception:
            log.failure("could not post a mail into {flow}", flow=flow.id)
            raise smtp.SMTPServerError(451, b"4.3.0 Temporary failure, please try again later")


@implementer(smtp.IMessage)
class FlowMessage:
    def __init__(self, transaction: Transaction, flow: Flow | None):
        self.transaction = transaction
        self.flow = flow

    def lineReceived(self, line: bytes) -> None:
        self.transaction.line(self, line)

    def eomReceived(self) -> defer.Deferred:
        if self.flow is None:     # the same flow named twice: delivered once
            return defer.succeed(None)
        return self.transaction.deliver(self.flow)

    def connectionLost(self) -> None:
        self.transaction.lines = []


@implementer(smtp.IMessageDelivery)
class FlowDelivery:
    """Knows flows, nothing more: which recipients exist, where a message goes."""

    def __init__(self, app, addresses: FlowAddresses, max_size: int):
        self.app = app
        self.addresses = addresses
        self.max_size = max_size
        self.poster = MailPoster(app)
        self.transaction: Transaction | None = None

    def receivedHeader(self, helo, origin, recipients):
        return None     # the flow is the final destination; nothing relays further

    def validateFrom(self, helo, origin):
        self.transaction = Transaction(self.poster, self.max_size)
        return origin

    def validateTo(self, user: smtp.User):
        return defer.ensureDeferred(self._validate_to(user, self.transaction))

    async def _validate_to(self, user: smtp.User, transaction: Transaction):
        address = str(user.dest)
        names = self.addresses.parse(address)
        flow = None
        if names is not None:
            flow = await self.app.directory.flow_by_name(*names)
        if flow is None or flow.disabled:
            raise smtp.SMTPBadRcpt(user, code=550,
                                   resp=f"5.1.1 <{address}>: no such flow here")
        if any(f.id == flow.id for f in transaction.flows):
            return lambda: FlowMessage(transaction, None)
        transaction.flows.append(flow)
        return lambda: FlowMessage(transaction, flow)


class FlowSMTP(smtp.ESMTP):
    """ESMTP with SIZE (RFC 1870) and clear codes for what goes wrong in DATA."""

    def __init__(self, delivery: FlowDelivery, host: str, max_size: int, tls_context=None):
        super().__init__(contextFactory=tls_context)
        self.delivery = delivery
        self.host = host.encode("idna") if host else b"localhost"
        self.max_size = max_size
        # A line longer than the whole size limit is over the limit anyway.
        self.MAX_LENGTH = max_size + 1024

    def greeting(self):
        return self.host + b" ESMTP flowtwist"

    def extensions(self):
        ext = super().extensions()
        ext.pop(b"AUTH", None)
        ext[b"SIZE"] = [str(self.max_size).encode()]
        ext[b"8BITMIME"] = None
        ext[b"PIPELINING"] = None
        ext[b"ENHANCEDSTATUSCODES"] = None
        return ext

    def do_MAIL(self, rest):
        m = self.mail_re.match(rest)
        if m and m.group("opts"):
            for opt in m.group("opts").split():
                key, _, value = opt.partition(b"=")
                if key.upper() == b"SIZE":
                    if not value.isdigit():
                        self.sendCode(501, b"5.5.4 SIZE needs a number")
                        return
                    if int(value) > self.max_size:
                        self.sendCode(552, b"5.3.4 Message size exceeds fixed maximum "
                                           b"message size of %d bytes" % self.max_size)
                        return
        super().do_MAIL(rest)

    def lineLengthExceeded(self, line):
        self.sendCode(552 if self.mode == "DATA" else 500,
                      b"5.3.4 Line too long; message too big")
        self.transport.loseConnection()

    def _messageHandled(self, resultList):
        failures = [result for success, result in resultList if not success]
        if not failures:
            self.sendCode(250, b"2.0.0 Delivered to the flow")
            return
        for failure in failures:
            if failure.check(smtp.SMTPServerError):
                error = failure.value
                self.sendCode(error.code, error.resp.encode() if isinstance(error.resp, str)
                              else error.resp)
                return
        for failure in failures:
            log.failure("mail delivery failed", failure)
        self.sendCode(451, b"4.3.0 Temporary failure, please try again later")


class MailFactory(protocol.ServerFactory):
    def __init__(self, app, settings: dict):
        self.app = app
        self.addresses = FlowAddresses.from_settings(settings)
        self.max_size = int(float(settings.get("mail-max-size") or 10 * 1024 * 1024))
        self.host = settings.get("mail-domain") or settings.get("server-name") or "localhost"
        self.tls_context = tls_context(settings.get("smtp-tls-cert") or "",
                                       settings.get("smtp-tls-key") or "")

    def buildProtocol(self, addr):
        delivery = FlowDelivery(self.app, self.addresses, self.max_size)
        p = FlowSMTP(delivery, self.host, self.max_size, self.tls_context)
        p.factory = self
        return p


def tls_context(cert_path: str, key_path: str = ""):
    """A TLS context for STARTTLS from PEM files, or None when none is configured."""
    if not cert_path:
        return None
    from twisted.internet import ssl
    with open(cert_path, "rb") as f:
        pem = f.read()
    if key_path:
        with open(key_path, "rb") as f:
            pem += b"\n" + f.read()
    return ssl.PrivateCertificate.loadPEM(pem).options()


@register_edge
def smtp_edge(app, settings, web_root, reactor):
    if not settings.get("smtp"):
        return []
    endpoint = endpoints.serverFromString(reactor, settings["smtp"])
    svc = internet.StreamServerEndpointService(endpoint, MailFactory(app, settings))
    svc._raiseSynchronously = True
    svc.setName("smtp")
    return [svc]
