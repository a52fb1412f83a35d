"""IRC → Flowdock: one `irc_<COMMAND>` method per command (RFC 2812, with the
departures of the gateway spec).  Mixed into IRCConnection, which provides the
wire, the state and the helpers (reply, send, nickserv, close...)."""
from __future__ import annotations

from flowtwist.bridges.irc import render, wire
from flowtwist.chat import Actor
from flowtwist.model import ChatError, flow_channel, new_uuid

SERVER_DESCRIPTION = "flowtwist IRC gateway"


def _local_and_domain(email: str) -> tuple[str, str]:
    local, _, domain = email.partition("@")
    return local or "*", domain or "unknown"


class Commands:
    BEFORE_REGISTRATION = frozenset({"CAP", "PASS", "NICK", "USER", "PING", "PONG", "QUIT"})

    def need(self, command: str, params: list, count: int = 1) -> bool:
        """False (after a 461) when fewer than `count` non-empty params were given."""
        if len(params) < count or not all(params[:count]):
            self.reply("461", command, text="Not enough parameters")
            return False
        return True

    def irc_unknown(self, prefix, command, params):
        self.reply("421", command, text="Unknown command")

    # ------------------------------------------------------------ registration

    def irc_CAP(self, prefix, params):
        if not self.need("CAP", params):
            return None
        sub = params[0].upper()
        if sub == "LS":
            if not self.registered:
                self.cap_negotiating = True
            self.send(self.server, "CAP", (self.me, "LS"), "")
        elif sub == "LIST":
            self.send(self.server, "CAP", (self.me, "LIST"), "")
        elif sub == "REQ":
            self.send(self.server, "CAP", (self.me, "NAK"), " ".join(params[1:]).strip())
        elif sub == "END":
            self.cap_negotiating = False
            return self.maybe_register()
        else:
            self.reply("410", params[0], text="Invalid CAP command")
        return None

    def irc_PASS(self, prefix, params):
        if self.registered:
            self.reply("462", text="Unauthorized command (already registered)")
            return
        if not self.need("PASS", params):
            return
        email, _, password = " ".join(params).strip().partition(" ")
        if password:
            self.credentials = (email, password)
            self.pass_email = email
        else:       # one word: a personal API token
            self.credentials = (None, email)

    def irc_NICK(self, prefix, params):
        if not params or not params[0]:
            self.reply("431", text="No nickname given")
            return None
        nick = params[0]
        if self.registered:
            if nick != self.nick:
                self.reply("432", nick, text="Erroneous nickname")
            return None
        if not wire.VALID_NICK.match(nick) or len(nick) > 64:
            self.reply("432", nick, text="Erroneous nickname")
            return None
        self.nick = nick
        return self.maybe_register()

    def irc_USER(self, prefix, params):
        if self.registered:
            self.reply("462", text="Unauthorized command (already registered)")
            return None
        if len(params) < 4:
            self.reply("461", "USER", text="Not enough parameters")
            return None
        username = params[0].split("@", 1)[0]
        if not username or any(c in username for c in "\x00\r\n "):
            self.close("Invalid Username")
            return None
        self.username = username
        self.realname = params[3]
        return self.maybe_register()

    def irc_QUIT(self, prefix, params):
        reason = params[0] if params and params[0] else "leaving"
        self.close(f'"{reason}"')

    def irc_PING(self, prefix, params):
        if not params or not params[0]:
            self.reply("409", text="No origin specified")
            return
        self.send(self.server, "PONG", (self.server,), params[-1])

    def irc_PONG(self, prefix, params):
        pass        # any line keeps the connection alive

    # ------------------------------------------------------------ authentication

    async def _identify(self, text: str) -> None:
        words = text.strip().split(" ", 1)
        if words[0].upper() != "IDENTIFY" or len(words) < 2 or not words[1].strip():
            self.nickserv("Usage: IDENTIFY <email> <password>")
            return
        if self.authenticated:
            self.nickserv("You are already identified.")
            return
        email, _, password = words[1].strip().partition(" ")
        if password:
            outcome = await self.authenticate(email, password)
        else:
            outcome = await self.authenticate(None, email)
        self.announce_login(outcome, from_pass=False)

    # ------------------------------------------------------------ channels

    async def irc_JOIN(self, prefix, params):
        if not self.need("JOIN", params):
            return
        for name in params[0].split(","):
            if not name:
                continue
            channel = self.find_channel(name)
            if channel is None:
                self.reply("403", name, text="No such channel")
            elif not channel.open:
                await self._open(channel)

    async def _open(self, channel) -> None:
        chat, directory = self.app.chat, self.app.directory
        flow = channel.flow
        try:
            if not channel.member:
                if flow.access_mode != "organization" or flow.disabled:
                    raise ChatError("not joinable")
                await directory.add_flow_member(flow.id, self.user.id)
                chat.forget_flow(flow.id)
                await chat.post_action(self.user, flow, "join", "")
            mine = await chat.membership(flow.id, self.user.id)
            if mine is None or mine.disabled:
                raise ChatError("blocked")
            await directory.update_membership(flow.id, self.user.id, open=True)
            chat.forget_flow(flow.id)
            channel.members = await chat.members(flow.id)
        except ChatError:
            self.reply("437", channel.name, text="Channel temporarily unavailable")
            return
        channel.member = channel.open = True
        self.announce_nick_changes(self.rebuild_roster())
        self._subscribe(flow_channel(flow.id))
        self.join_burst(channel)
        self._announce_presence(not self.away)

    async def irc_PART(self, prefix, params):
        if not self.need("PART", params):
            return
        for name in params[0].split(","):
            if not name:
                continue
            channel = self.find_channel(name)
            if channel is None:
                self.reply("403", name, text="No such channel")
            elif not channel.open:
                self.reply("442", channel.name, text="You're not on that channel")
            else:
                await self.app.directory.update_membership(channel.flow.id, self.user.id,
                                                           open=False)
                self.app.chat.forget_flow(channel.flow.id)
                channel.open = False
                self.send(self.prefix, "PART", (channel.name,))

    def irc_NAMES(self, prefix, params):
        if not params or not params[0]:
            self.reply("366", "*", text="End of NAMES list")
            return
        for name in params[0].split(","):
            channel = self.find_channel(name)
            if channel is None:
                self.reply("366", name, text="End of NAMES list")
            else:
                self.names(channel)

    def irc_LIST(self, prefix, params):
        if self.authenticated:
            if params and params[0]:
                wanted = [self.find_channel(n) for n in params[0].split(",")]
                channels = [c for c in wanted if c is not None]
            else:
                channels = list(self.channels.values())
            for channel in channels:
                self.reply("322", channel.name, str(len(channel.active_users())),
                           text=channel.topic)
        self.reply("323", text="End of LIST")

    def irc_TOPIC(self, prefix, params):
        if not self.need("TOPIC", params):
            return
        channel = self.find_channel(params[0])
        if channel is None:
            self.reply("403", params[0], text="No such channel")
        elif len(params) > 1:
            self.reply("477", channel.name, text="Channel doesn't support modes")
        else:
            self.reply("332", channel.name, text=channel.topic)

    def irc_MODE(self, prefix, params):
        if not self.need("MODE", params):
            return
        target = params[0]
        if target.startswith("#"):
            channel = self.find_channel(target)
            if channel is None:
                self.reply("403", target, text="No such channel")
            elif len(params) == 1:
                self.reply("324", channel.name, "+is")
            elif params[1] in ("b", "+b"):
                self.reply("368", channel.name, text="End of Channel Ban List")
            else:
                self.reply("482", channel.name, text="You're not channel operator")
        elif wire.irc_lower(target) == wire.irc_lower(self.me):
            if len(params) == 1:
                self.reply("221", "+i")
        else:
            self.reply("502", text="Cannot change mode for other users")

    # ------------------------------------------------------------ messages

    async def irc_PRIVMSG(self, prefix, params):
        if not params or not params[0]:
            self.reply("411", text="No recipient given (PRIVMSG)")
            return
        if len(params) < 2 or not params[1]:
            self.reply("412", text="No text to send")
            return
        targets, text = params[0], params[1]
        for target in targets.split(","):
            if target:
                await self._privmsg(target, text)

    async def _privmsg(self, target: str, text: str) -> None:
        if wire.irc_lower(target) == "nickserv":
            await self._identify(text)
            return
        if wire.irc_lower(target) == wire.irc_lower(self.me):
            self.send(self.prefix, "PRIVMSG", (self.me,), text)
            return
        if not self.authenticated:
            self.reply("401", target, text="No such nick/channel")
            return
        event = "message"
        if text.startswith("\x01"):
            body = text.strip("\x01")
            if not body.upper().startswith("ACTION "):
                return          # other CTCP is dropped
            event, text = "line", body[7:]
        text = wire.strip_formatting(text)
        if not text.strip():
            self.reply("412", text="No text to send")
            return
        if target.startswith("#"):
            channel = self.find_channel(target)
            if channel is None:
                self.reply("401", target, text="No such nick/channel")
            elif not channel.open:
                self.reply("404", channel.name, text="Cannot send to channel")
            else:
                await self._post(target, lambda params: self.app.chat.post(
                    Actor(user=self.user), channel.flow, params, wait=False), event, text)
            return
        other = self.roster.find(target)
        if other is None:
            self.reply("401", target, text="No such nick/channel")
            return
        await self._post(target, lambda params: self.app.chat.post_private(
            self.user, other, params, wait=False), event, text)

    async def _post(self, target: str, post, event: str, text: str) -> None:
        uuid = new_uuid()
        self.remember_post(uuid)
        try:
            await post({"event": event, "content": text, "uuid": uuid})
        except ChatError as e:
            reason = e.message
            if e.errors:
                reason = "; ".join(f"{k} {', '.join(v)}" for k, v in e.errors.items())
            self.send(render.FLOWDOCK, "NOTICE", (self.me,),
                      f"Message to {target} was not delivered: {reason}")

    def irc_NOTICE(self, prefix, params):
        pass        # never answered, never posted

    # ------------------------------------------------------------ users

    def irc_WHO(self, prefix, params):
        mask = params[0] if params and params[0] else "*"
        channel = self.find_channel(mask) if mask.startswith("#") else None
        if channel is not None:
            for user in channel.active_users():
                local, domain = _local_and_domain(user.email)
                self.reply("352", channel.name, local, domain, self.server,
                           self.roster.nick(user.id) or user.nick, "H", text=f"0 {user.name}")
            mask = channel.name
        self.reply("315", mask, text="End of WHO list")

    def irc_WHOIS(self, prefix, params):
        if not self.need("WHOIS", params):
            return
        nick = params[-1]
        signon = str(int(self.gateway.started))
        lower = wire.irc_lower(nick)
        if lower == "nickserv":
            self.reply("311", "NickServ", "NickServ", "services.", "*", text="Nickname Services")
            self.reply("312", "NickServ", self.server, text=SERVER_DESCRIPTION)
            self.reply("317", "NickServ", "0", signon, text="seconds idle, signon time")
            self.reply("318", "NickServ", text="End of WHOIS list")
            return
        if lower == wire.irc_lower(self.me):
            local, domain = _local_and_domain(self.address)
            self.reply("311", self.me, local, domain, "*",
                       text=self.user.name if self.user else self.realname)
            if self.authenticated:
                self.reply("319", self.me, text=" ".join(
                    c.name for c in self.channels.values() if c.open))
            self.reply("312", self.me, self.server, text=SERVER_DESCRIPTION)
            self.reply("317", self.me, "0", signon, text="seconds idle, signon time")
            self.reply("318", self.me, text="End of WHOIS list")
            return
        user = self.roster.find(nick) if self.authenticated else None
        if user is None:
            self.reply("401", nick, text="No such nick/channel")
            self.reply("318", nick, text="End of WHOIS list")
            return
        shown = self.roster.nick(user.id)
        local, domain = _local_and_domain(user.email)
        self.reply("311", shown, local, domain, "*", text=user.name)
        self.reply("319", shown, text=" ".join(
            c.name for c in self.channels.values() if c.has_user(user.id)))
        self.reply("312", shown, self.server, text=SERVER_DESCRIPTION)
        self.reply("317", shown, str(self.idle_seconds(user)), signon,
                   text="seconds idle, signon time")
        self.reply("318", shown, text="End of WHOIS list")

    def irc_WHOWAS(self, prefix, params):
        if not self.need("WHOWAS", params):
            return
        self.reply("406", params[0], text="There was no such nickname")
        self.reply("369", params[0], text="End of WHOWAS")

    def irc_ISON(self, prefix, params):
        if not self.need("ISON", params):
            return
        found = []
        for nick in " ".join(params).split():
            if not self.authenticated:
                if wire.irc_lower(nick) == "nickserv":
                    found.append("NickServ")
            else:
                user = self.roster.find(nick)
                if user is not None:
                    found.append(self.roster.nick(user.id))
        self.reply("303", text=" ".join(found))

    def irc_AWAY(self, prefix, params):
        text = params[0] if params else ""
        if text:
            self.away = True
            self.reply("306", text="You have been marked as being away")
        else:
            self.away = False
            self.reply("305", text="You are no longer marked as being away")
        self._announce_presence(not self.away)

    def irc_MOTD(self, prefix, params):
        self.motd()
