"""Settings of the ZeroMQ server (``[server]`` in the sidecar's settings file)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ServerSettings(BaseModel):
    """The ZeroMQ ROUTER endpoint, its limits and its admission control. Unknown keys are refused (a typo
    would otherwise change nothing, silently); upper bounds keep values within what libzmq's C options take."""

    model_config = ConfigDict(extra="forbid")

    endpoint: str = Field("tcp://127.0.0.1:5555", description="ZeroMQ endpoint the sidecar binds. Loopback by default; any other address needs CurveZMQ (curve_secret_key_file + curve_allowed_clients_dir) or allow_insecure_remote.")
    max_frame_bytes: int = Field(64 * 1024, ge=256, le=1 << 30, description="Largest request payload answered; bigger gets error 'frame_too_large'.")
    hard_max_frame_bytes: int = Field(1024 * 1024, ge=1024, le=1 << 30, description="ZMQ_MAXMSGSIZE: libzmq drops the connection of a peer sending more.")
    stream_queue: int = Field(64, ge=1, le=1_000_000, description="Unused since turns are batched (kept so existing settings files load): the model's stepping thread hands chunks to the socket loop without waiting, and sends never block.")
    peer_timeout_s: float = Field(30.0, gt=0, le=86_400, description="ZMTP heartbeat timeout (ZMQ_HEARTBEAT_TIMEOUT/TTL): libzmq drops a peer that answers no heartbeat this long, and its running stream is then cancelled on the next send.")
    send_hwm: int = Field(1000, ge=1, le=1_000_000, description="ZMQ_SNDHWM: replies buffered per peer. A peer that does not read past this loses its replies (counted, logged once per peer) and its running stream is cancelled; nobody else waits for it.")
    max_queued_per_client: int = Field(8, ge=1, le=1_000_000, description="Requests one connection may have queued or running on the decode worker (say, reset, lore.query, lore.explain, generate); more get error 'busy' with retry_after_ms.")
    max_queued: int = Field(256, ge=1, le=1_000_000, description="Requests all connections together may have queued or running on the decode worker; more get error 'busy'.")
    busy_retry_ms: int = Field(500, ge=0, le=3_600_000, description="retry_after_ms announced with a 'busy' error.")
    max_peers: int = Field(4096, ge=1, le=1_000_000, description="Connections remembered for events (lore.changed, shutdown); the oldest is forgotten past this.")
    allow_insecure_remote: bool = Field(False, description="Serve a non-loopback endpoint without CurveZMQ. Anyone who can reach the port can then talk to every NPC, read lore and run generation: only on a trusted network.")
    curve_secret_key_file: str | None = Field(None, description="The server's CurveZMQ secret key file (`narrative keys` writes one); required to bind a non-loopback endpoint.")
    curve_allowed_clients_dir: str | None = Field(None, description="Folder of client public key files (*.key) allowed to connect (ZAP allow-list); required with curve_secret_key_file.")

    @model_validator(mode="after")
    def _frames(self) -> "ServerSettings":
        if self.max_frame_bytes > self.hard_max_frame_bytes:
            raise ValueError(f"max_frame_bytes ({self.max_frame_bytes}) is over hard_max_frame_bytes ({self.hard_max_frame_bytes}): "
                             "frames between the two could never be answered")
        return self
