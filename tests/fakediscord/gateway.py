"""The websocket gateway: HELLO, heartbeats, IDENTIFY -> READY + GUILD_CREATE, RESUME with
replay, and the drops a test can inject.

Sessions outlive connections, as on Discord: every dispatched frame is numbered and kept, so
a client that comes back with RESUME gets the frames it missed (also those dispatched while
it was away) followed by RESUMED. Frames are plain-text JSON; discord.py asks for
zlib-stream but only decompresses binary frames.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import logging
import uuid
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

if TYPE_CHECKING:
    from .server import FakeDiscord

log = logging.getLogger("tests.fakediscord.gateway")

# Opcodes (https://discord.com/developers/docs/topics/opcodes-and-status-codes#gateway)
OP_DISPATCH = 0
OP_HEARTBEAT = 1
OP_IDENTIFY = 2
OP_PRESENCE_UPDATE = 3
OP_VOICE_STATE_UPDATE = 4
OP_RESUME = 6
OP_RECONNECT = 7
OP_REQUEST_GUILD_MEMBERS = 8
OP_INVALID_SESSION = 9
OP_HELLO = 10
OP_HEARTBEAT_ACK = 11

# Intents the fake looks at.
INTENT_GUILDS = 1 << 0
INTENT_GUILD_MEMBERS = 1 << 1
INTENT_GUILD_MESSAGES = 1 << 9
INTENT_DIRECT_MESSAGES = 1 << 12

CLOSE_DECODE_ERROR = 4002
CLOSE_AUTHENTICATION_FAILED = 4004
CLOSE_ALREADY_AUTHENTICATED = 4005

DROP_MODES = ("abort", "close", "reconnect", "invalid_session", "invalid_session_resumable")


class GatewayConnection:
    """One websocket; it may carry a session (after IDENTIFY or RESUME)."""

    def __init__(self, connection_id: int, ws: web.WebSocketResponse, request: web.Request) -> None:
        self.id = connection_id
        self.ws = ws
        self.request = request
        self.session: GatewaySession | None = None
        self._send_lock = asyncio.Lock()

    async def send(self, frame: dict[str, Any]) -> bool:
        """Send one frame; False when the socket is already gone (the frame stays replayable)."""
        async with self._send_lock:
            if self.ws.closed:
                return False
            try:
                await self.ws.send_str(json.dumps(frame))
            except (ConnectionError, RuntimeError, aiohttp.ClientError) as exc:
                log.info("gateway connection %s lost while sending: %r", self.id, exc)
                return False
            return True

    def abort(self) -> None:
        """Cut the TCP connection without a close frame, like a network failure."""
        transport = self.request.transport
        if transport is not None:
            transport.abort()


@dataclasses.dataclass
class GatewaySession:
    id: str
    identify: dict[str, Any]
    intents: int
    seq: int = 0
    frames: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    connection: GatewayConnection | None = None
    invalid: bool = False
    guild_ids_sent: set[int] = dataclasses.field(default_factory=set)
    # Guild changes made by a test after READY, sent before the next dispatch.
    pending: list[tuple[str, dict[str, Any]]] = dataclasses.field(default_factory=list)
    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)

    @property
    def connected(self) -> bool:
        return self.connection is not None

    def dispatched(self, event: str | None = None) -> list[dict[str, Any]]:
        """The dispatch frames sent (or queued) in this session, optionally of one event."""
        return [f for f in self.frames if event is None or f["t"] == event]


class Gateway:
    def __init__(self, fake: FakeDiscord) -> None:
        self._fake = fake
        self._connection_ids = itertools.count(1)
        self.connections: set[GatewayConnection] = set()
        self.sessions: dict[str, GatewaySession] = {}
        self.active_session: GatewaySession | None = None

    # -- the websocket handler ---------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=0, autoclose=True)
        await ws.prepare(request)
        conn = GatewayConnection(next(self._connection_ids), ws, request)
        self.connections.add(conn)
        self._fake._record_gateway("connected", conn, data={"query": dict(request.query)})
        hello = {"heartbeat_interval": self._fake.heartbeat_interval_ms, "_trace": ["fakediscord"]}
        await conn.send({"op": OP_HELLO, "d": hello, "s": None, "t": None})
        try:
            async for msg in ws:
                if msg.type is aiohttp.WSMsgType.TEXT:
                    try:
                        frame = json.loads(msg.data)
                    except json.JSONDecodeError:
                        log.warning("gateway: a frame that is not JSON; closing with 4002")
                        await ws.close(
                            code=CLOSE_DECODE_ERROR, message=b"Error while decoding payload."
                        )
                        break
                    await self._on_frame(conn, frame)
                elif msg.type is aiohttp.WSMsgType.BINARY:
                    log.warning("gateway: binary (ETF) frames are not supported; ignored")
        finally:
            self.connections.discard(conn)
            session = conn.session
            if session is not None and session.connection is conn:
                session.connection = None
                # A client that closes with 1000/1001 ends its session, as on Discord.
                if ws.close_code in (1000, 1001):
                    session.invalid = True
            self._fake._record_gateway("disconnected", conn, data={"close_code": ws.close_code})
        return ws

    async def _on_frame(self, conn: GatewayConnection, frame: dict[str, Any]) -> None:
        op = frame.get("op")
        data = frame.get("d")
        if op == OP_HEARTBEAT:
            self._fake._record_gateway("heartbeat", conn, data={"seq": data})
            await conn.send({"op": OP_HEARTBEAT_ACK, "d": None, "s": None, "t": None})
        elif op == OP_IDENTIFY:
            await self._identify(conn, data or {})
        elif op == OP_RESUME:
            await self._resume(conn, data or {})
        elif op == OP_REQUEST_GUILD_MEMBERS:
            await self._request_members(conn, data or {})
        elif op == OP_PRESENCE_UPDATE:
            self._fake._record_gateway("presence_update", conn, data=data)
        elif op == OP_VOICE_STATE_UPDATE:
            self._fake._record_gateway("voice_state_update", conn, data=data)
        else:
            log.warning("gateway: unhandled opcode %s from the client: %r", op, frame)

    async def _identify(self, conn: GatewayConnection, data: dict[str, Any]) -> None:
        fake = self._fake
        if data.get("token") != fake.token:
            fake._record_gateway("rejected", conn, data={"reason": "bad token"})
            await conn.ws.close(code=CLOSE_AUTHENTICATION_FAILED, message=b"Authentication failed.")
            return
        if conn.session is not None:
            await conn.ws.close(code=CLOSE_ALREADY_AUTHENTICATED, message=b"Already authenticated.")
            return
        intents = int(data.get("intents") or 0)
        session = GatewaySession(id=uuid.uuid4().hex, identify=data, intents=intents)
        self.sessions[session.id] = session
        self.active_session = session
        conn.session = session
        session.connection = conn
        async with session.lock:
            await self._send_dispatch(session, "READY", fake._ready_payload(session))
            if intents & INTENT_GUILDS:
                include_members = bool(intents & INTENT_GUILD_MEMBERS)
                for guild in fake.guilds.values():
                    payload = guild.to_guild_create(
                        include_all_members=include_members, bot_id=fake.bot_user.id
                    )
                    await self._send_dispatch(session, "GUILD_CREATE", payload)
                    session.guild_ids_sent.add(guild.id)
        fake._record_gateway("identified", conn, data={"intents": intents})

    async def _resume(self, conn: GatewayConnection, data: dict[str, Any]) -> None:
        fake = self._fake
        session = self.sessions.get(str(data.get("session_id")))
        if session is None or session.invalid or data.get("token") != fake.token:
            fake._record_gateway("resume_rejected", conn, data=data)
            await conn.send({"op": OP_INVALID_SESSION, "d": False, "s": None, "t": None})
            return
        client_seq = int(data.get("seq") or 0)
        async with session.lock:
            old = session.connection
            if old is not None and old is not conn:
                old.session = None  # a stale socket of the same session; it no longer counts
            session.connection = conn
            conn.session = session
            missed = [f for f in session.frames if f["s"] > client_seq]
            for frame in missed:
                await conn.send(frame)
            await self._send_dispatch(session, "RESUMED", {"_trace": ["fakediscord"]})
        self.active_session = session
        fake._record_gateway(
            "resumed", conn, data={"replayed": len(missed), "from_seq": client_seq}
        )

    async def _request_members(self, conn: GatewayConnection, data: dict[str, Any]) -> None:
        fake = self._fake
        fake._record_gateway("request_members", conn, data=data)
        session = conn.session
        guild = fake.guilds.get(int(data.get("guild_id") or 0))
        if session is None or guild is None:
            return
        members = list(guild.members.values())
        if data.get("user_ids"):
            wanted = {int(u) for u in data["user_ids"]}
            members = [m for m in members if m.id in wanted]
        elif data.get("query"):
            query = str(data["query"]).lower()
            members = [m for m in members if m.user.username.lower().startswith(query)]
        limit = int(data.get("limit") or 0)
        if limit:
            members = members[:limit]
        chunk = {
            "guild_id": str(guild.id),
            "members": [m.to_payload() for m in members],
            "chunk_index": 0,
            "chunk_count": 1,
            "not_found": [],
        }
        if data.get("nonce") is not None:
            chunk["nonce"] = data["nonce"]
        await self.dispatch("GUILD_MEMBERS_CHUNK", chunk, session=session)

    # -- sending -----------------------------------------------------------------------------

    async def _send_dispatch(self, session: GatewaySession, event: str, data: Any) -> int:
        """Number, keep and (when connected) send one dispatch frame. Caller holds session.lock."""
        session.seq += 1
        frame = {"op": OP_DISPATCH, "t": event, "s": session.seq, "d": data}
        session.frames.append(frame)
        if session.connection is not None:
            await session.connection.send(frame)
        self._fake._changed()
        return session.seq

    async def dispatch(
        self, event: str, data: Any, *, session: GatewaySession | None = None
    ) -> int:
        """Send a dispatch event on the active session and return its sequence number.

        While the client is disconnected the frame is kept and replayed on RESUME."""
        session = session or self.active_session
        if session is None:
            raise RuntimeError(
                "no gateway session: the client has not identified yet "
                "(await fake.wait_for_ready() before dispatching)"
            )
        async with session.lock:
            pending, session.pending = session.pending, []
            for pending_event, pending_data in pending:
                await self._send_dispatch(session, pending_event, pending_data)
            return await self._send_dispatch(session, event, data)

    def queue_guild_change(self, guild_id: int, event: str, data: dict[str, Any]) -> None:
        """Remember a guild change for every live session that already has the guild."""
        for session in self.sessions.values():
            if not session.invalid and guild_id in session.guild_ids_sent:
                session.pending.append((event, data))

    async def flush_guild_changes(self) -> None:
        session = self.active_session
        if session is None:
            return
        async with session.lock:
            pending, session.pending = session.pending, []
            for event, data in pending:
                await self._send_dispatch(session, event, data)

    # -- faults ------------------------------------------------------------------------------

    async def drop(self, how: str = "abort", *, code: int = 4000) -> None:
        """Break the active session's connection so that the client has to come back.

        how: "abort" (TCP cut, no close frame), "close" (close frame with `code`, 4000 by
        default), "reconnect" (op 7), "invalid_session" (op 9, not resumable: the client
        identifies again) or "invalid_session_resumable" (op 9 with d=true)."""
        if how not in DROP_MODES:
            raise ValueError(f"how must be one of {DROP_MODES}, not {how!r}")
        session = self.active_session
        conn = session.connection if session is not None else None
        if session is None or conn is None:
            raise RuntimeError("no live gateway connection to drop (is the client connected?)")
        async with session.lock:
            # Frames dispatched from now on wait for the RESUME that replays them.
            session.connection = None
            conn.session = None
        self._fake._record_gateway("dropped", conn, data={"how": how, "code": code})
        if how == "abort":
            conn.abort()
        elif how == "close":
            await conn.ws.close(code=code, message=b"dropped by fakediscord")
        elif how == "reconnect":
            await conn.send({"op": OP_RECONNECT, "d": None, "s": None, "t": None})
        elif how == "invalid_session":
            session.invalid = True
            await conn.send({"op": OP_INVALID_SESSION, "d": False, "s": None, "t": None})
        else:
            await conn.send({"op": OP_INVALID_SESSION, "d": True, "s": None, "t": None})

    async def close_all(self) -> None:
        for conn in list(self.connections):
            try:
                await asyncio.wait_for(
                    conn.ws.close(code=1001, message=b"fakediscord stopping"), 2.0
                )
            except (TimeoutError, ConnectionError, RuntimeError):
                conn.abort()
