"""Settings of the ZeroMQ server (``[server]`` in the sidecar's settings file)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ServerSettings(BaseModel):
    """The ZeroMQ ROUTER endpoint and its limits."""

    endpoint: str = Field("tcp://127.0.0.1:5555", description="ZeroMQ endpoint the sidecar binds.")
    max_frame_bytes: int = Field(64 * 1024, ge=256, description="Largest request payload answered; bigger gets error 'frame_too_large'.")
    hard_max_frame_bytes: int = Field(1024 * 1024, ge=1024, description="ZMQ_MAXMSGSIZE: libzmq drops the connection of a peer sending more.")
    stream_queue: int = Field(64, ge=1, description="Chunks buffered between the decoding thread and the socket (backpressure).")
    peer_timeout_s: float = Field(30.0, gt=0, description="ZMTP heartbeat timeout (ZMQ_HEARTBEAT_TIMEOUT/TTL): libzmq drops a peer that answers no heartbeat this long, and its running stream is then cancelled on the next send.")
