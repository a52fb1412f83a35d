"""Configuration: command line, then environment (FLOWTWIST_<OPTION>), then a TOML
config file, then defaults.  The same settings serve twistd and flowtwist-admin."""
from __future__ import annotations

import os
import tomllib
from urllib.parse import urlparse

from twisted.python import usage

# name, default, help.  Endpoint options take Twisted endpoint strings; an empty
# value turns a listener off.
SETTINGS = [
    ("http", "tcp:8080", "REST/push API, web app and WebSocket listener (endpoint string)"),
    ("stream", "tcp:8081", "streaming API listener (endpoint string; also served under /stream on --http)"),
    ("irc", "", "IRC gateway listener, e.g. tcp:6667 or ssl:6697:privateKey=key.pem"),
    ("smtp", "", "SMTP listener for email into flows, e.g. tcp:2525"),
    ("data", "./data", "data folder for the embedded stores and uploaded files"),
    ("public-url", "", "public base URL of the API (default: from --http)"),
    ("stream-url", "", "public base URL of the streaming API (default: from --stream)"),
    ("server-name", "flowtwist", "server name shown by IRC and email"),
    ("mail-domain", "", "mail domain for flow addresses (default: localhost)"),
    ("mail-address-style", "both", "flow email addresses: subdomain (<flow>@<org>.<domain>), plus (<org>+<flow>@<domain>) or both"),
    ("mail-max-size", "10485760", "largest email accepted, in bytes (advertised as SIZE)"),
    ("smtp-tls-cert", "", "PEM certificate (and key, unless --smtp-tls-key) to offer STARTTLS"),
    ("smtp-tls-key", "", "PEM private key for --smtp-tls-cert"),
    ("feeds", "yes", "run the RSS/Atom and Twitter pollers in this process: yes or no"),
    ("feed-interval", "300", "seconds between polls of one RSS/Atom feed (jittered)"),
    ("feed-timeout", "30", "seconds before a feed or Twitter request is given up"),
    ("feed-max-size", "5242880", "largest feed document fetched, in bytes"),
    ("feed-backlog", "3", "entries posted from a newly added feed's existing backlog"),
    ("twitter-api", "https://api.twitter.com", "Twitter API base URL (v2 recent search)"),
    ("twitter-bearer-token", "", "Twitter API bearer token (Twitter polling is off without one)"),
    ("twitter-interval", "60", "seconds between polls of one Twitter search or account"),
    ("redis", "", "Redis URL for the queue and pub/sub (default: in-process)"),
    ("mongo", "", "MongoDB URL for messages (default: SQLite in the data folder)"),
    ("postgres", "", "PostgreSQL URL for the directory (default: SQLite in the data folder)"),
    ("demo", "auto", "create a demo organization on first start: auto, yes or no"),
]

ENDPOINT_OPTIONS = ("http", "stream", "irc", "smtp")


def env_name(option: str) -> str:
    return "FLOWTWIST_" + option.upper().replace("-", "_")


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = ("Run flowtwist: a team chat server speaking the Flowdock API, IRC and "
                "email. Every option can also be set as FLOWTWIST_<OPTION> in the "
                "environment or in a TOML --config file.")
    optParameters = [["config", "c", None, "TOML config file (keys as the long options)"]] + [
        [name, None, None, f"{help} [default: {default!r}]"] for name, default, help in SETTINGS]

    def postOptions(self) -> None:
        resolved = resolve(self)
        self.update(resolved)


def resolve(given: dict) -> dict:
    """Fill every setting from the command line, the environment, the config file or
    the default, and check them.  Raises usage.UsageError with one clear line."""
    config_path = given.get("config") or os.environ.get(env_name("config"))
    file_values: dict = {}
    if config_path:
        try:
            with open(config_path, "rb") as f:
                file_values = tomllib.load(f)
        except OSError as e:
            raise usage.UsageError(f"cannot read config file {config_path}: {e.strerror}")
        except tomllib.TOMLDecodeError as e:
            raise usage.UsageError(f"config file {config_path} is not valid TOML: {e}")
        known = {name for name, _, _ in SETTINGS}
        unknown = set(file_values) - known
        if unknown:
            raise usage.UsageError(f"unknown setting(s) in {config_path}: {', '.join(sorted(unknown))}")
    out = {"config": config_path}
    for name, default, _ in SETTINGS:
        value = given.get(name)
        if value is None:
            value = os.environ.get(env_name(name))
        if value is None:
            value = file_values.get(name)
        if value is None:
            value = default
        out[name] = str(value)
    check(out)
    return out


def check(settings: dict) -> None:
    from twisted.internet import endpoints, reactor
    for name in ENDPOINT_OPTIONS:
        value = settings[name]
        if not value:
            continue
        try:
            endpoints.serverFromString(reactor, value)
        except Exception as e:
            raise usage.UsageError(f"--{name}: not a valid endpoint string {value!r} ({e})")
    for name, schemes in (("redis", ("redis",)), ("mongo", ("mongodb",)),
                          ("postgres", ("postgres", "postgresql")),
                          ("public-url", ("http", "https")), ("stream-url", ("http", "https"))):
        value = settings[name]
        if value and urlparse(value).scheme not in schemes:
            raise usage.UsageError(f"--{name}: expected a {schemes[0]}:// URL, got {value!r}")
    if settings["demo"] not in ("auto", "yes", "no"):
        raise usage.UsageError("--demo: expected auto, yes or no")
    if settings["mail-address-style"] not in ("subdomain", "plus", "both"):
        raise usage.UsageError("--mail-address-style: expected subdomain, plus or both")
    if settings["feeds"] not in ("yes", "no"):
        raise usage.UsageError("--feeds: expected yes or no")
    for name in ("mail-max-size", "feed-interval", "feed-timeout", "feed-max-size",
                 "feed-backlog", "twitter-interval"):
        try:
            if float(settings[name]) < (0 if name == "feed-backlog" else 0.001):
                raise ValueError
        except ValueError:
            raise usage.UsageError(f"--{name}: expected a positive number, got {settings[name]!r}")
    if urlparse(settings["twitter-api"]).scheme not in ("http", "https"):
        raise usage.UsageError("--twitter-api: expected an http(s):// URL")


def url_of(endpoint: str, scheme: str = "http") -> str:
    """A URL for a tcp endpoint string, for printing and default public URLs."""
    parts = endpoint.split(":")
    kind = parts[0]
    port = next((p for p in parts[1:] if p.isdigit()), "")
    host = "localhost"
    for p in parts[1:]:
        if p.startswith("interface="):
            host = p.split("=", 1)[1] or host
            if host in ("0.0.0.0", "::"):
                host = "localhost"
    if kind == "ssl" and scheme == "http":
        scheme = "https"
    return f"{scheme}://{host}:{port}" if port else f"{scheme}://{host}"
