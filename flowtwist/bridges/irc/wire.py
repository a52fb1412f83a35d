"""The IRC wire: decoding and parsing client lines, and building server lines that
never exceed 512 bytes.  Pure functions, no protocol state."""
from __future__ import annotations

import re

import emoji

MAX_LINE = 512              # bytes of an output line, CRLF included
MAX_INPUT_LINE = 8192       # longer input lines are dropped whole

NICK_CHARS = r"A-Za-z0-9\[\]\\`_^{|}\-"
VALID_NICK = re.compile(f"^[{NICK_CHARS}]+$")
NOT_NICK_CHAR = re.compile(f"[^{NICK_CHARS}]")
# mIRC formatting: bold, colour (with up to two "fg,bg" numbers), hex colour,
# reset, monospace, reverse, italic, strike, underline.
FORMATTING = re.compile(
    r"\x03(?:\d{1,2}(?:,\d{1,2})?)?|\x04(?:[0-9a-fA-F]{6}(?:,[0-9a-fA-F]{6})?)?"
    r"|[\x02\x0f\x11\x16\x1d\x1e\x1f]")
LINE_BREAK = re.compile(r"\r\n|\r|\n")


def decode(raw: bytes) -> str:
    """Valid UTF-8 as is; anything else as Windows-1252 (undecodable bytes → `?`)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace").replace("\ufffd", "?")


def parse(line: str) -> tuple[str, list[str]] | None:
    """`[:prefix] COMMAND params… [:trailing]` → (upper-case command, params).
    The prefix is ignored; the trailing parameter is kept verbatim.  None for a
    line without a command."""
    i, n = 0, len(line)
    if line.startswith(":"):
        i = line.find(" ")
        if i < 0:
            return None
    words: list[str] = []
    while i < n:
        while i < n and line[i] == " ":
            i += 1
        if i >= n:
            break
        if line[i] == ":" and words:
            words.append(line[i + 1:])
            break
        j = line.find(" ", i)
        if j < 0:
            j = n
        words.append(line[i:j])
        i = j
    if not words:
        return None
    return words[0].upper(), words[1:]


def strip_formatting(text: str) -> str:
    return FORMATTING.sub("", text)


def irc_nick(nick: str) -> str:
    """A profile nick as an IRC nick: non-NICK characters become `_`, and a leading
    digit or `-` gets a `_` in front."""
    out = NOT_NICK_CHAR.sub("_", nick) or "_"
    if out[0].isdigit() or out[0] == "-":
        out = "_" + out
    return out


def external_nick(name: str) -> str:
    return NOT_NICK_CHAR.sub("_", name) or "_"


def irc_lower(text: str) -> str:
    """CASEMAPPING=ascii."""
    return text.translate(_ASCII_LOWER)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def emoji_aliases(text: str) -> str:
    """Emoji characters as `:alias:` (😡 → `:rage:`)."""
    if text.isascii():
        return text
    return emoji.demojize(text, language="alias")


def text_lines(text: str) -> list[str]:
    """A message text as IRC message bodies: split at line breaks, NUL and \\x01
    removed, empty lines dropped."""
    out = []
    for part in LINE_BREAK.split(text):
        part = part.replace("\x00", "").replace("\x01", "")
        if part.strip():
            out.append(part)
    return out


def chunks(text: str, budget: int) -> list[str]:
    """Split text into pieces of at most `budget` UTF-8 bytes, at a space where
    possible (the space is dropped), never inside a character."""
    data = text.encode("utf-8")
    if len(data) <= budget:
        return [text]
    budget = max(budget, 4)
    out = []
    while len(data) > budget:
        cut = budget
        while cut > 0 and (data[cut] & 0xC0) == 0x80:   # not inside a character
            cut -= 1
        space = data.rfind(b" ", 0, cut + 1)
        if space > budget // 2:
            out.append(data[:space].decode("utf-8"))
            data = data[space + 1:]
        else:
            out.append(data[:cut].decode("utf-8"))
            data = data[cut:]
    if data:
        out.append(data.decode("utf-8"))
    return out


def lines(prefix: str | None, command: str, params: tuple | list = (),
          trailing: str | None = None, ctcp: str | None = None) -> list[bytes]:
    """Encoded output lines (CRLF included), the trailing text split so that no line
    exceeds 512 bytes.  With `ctcp` (say "ACTION") every piece is wrapped as CTCP."""
    head = (f":{prefix} " if prefix else "") + " ".join((command, *params))
    if trailing is None:
        return [head.encode("utf-8") + b"\r\n"]
    head_bytes = head.encode("utf-8") + b" :"
    wrap_open = f"\x01{ctcp} " if ctcp else ""
    wrap_close = "\x01" if ctcp else ""
    budget = MAX_LINE - 2 - len(head_bytes) - len(wrap_open) - len(wrap_close)
    return [head_bytes + (wrap_open + piece + wrap_close).encode("utf-8") + b"\r\n"
            for piece in chunks(trailing, budget)]
