"""twistd plugins: `twistd -n flowtwist` (the chat server)."""
from twisted.application.service import ServiceMaker

flowtwist = ServiceMaker(
    "flowtwist",
    "flowtwist.service",
    "Team chat server speaking the Flowdock API, streaming, WebSocket, IRC and email",
    "flowtwist",
)
