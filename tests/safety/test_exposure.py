"""Exposure (issue 13): loopback by default; any other address needs CurveZMQ or an explicit opt-out."""

from __future__ import annotations

import asyncio

import pytest

from app.cli import main
from bridge.client import SidecarClient, SidecarTimeout
from bridge.server import InsecureEndpoint, SidecarServer, check_exposure, is_loopback
from bridge.settings import ServerSettings
from narrative.service import NarrativeService
from tests.conftest import ServerThread


def test_default_endpoint_is_loopback():
    assert is_loopback(ServerSettings().endpoint)
    for ep in ("tcp://127.0.0.1:5555", "tcp://localhost:1", "tcp://[::1]:5555", "ipc:///tmp/x", "inproc://x"):
        assert is_loopback(ep), ep
    for ep in ("tcp://0.0.0.0:5555", "tcp://*:5555", "tcp://192.168.1.4:5555", "tcp://eth0:5555"):
        assert not is_loopback(ep), ep


def test_non_loopback_without_curve_is_refused_before_binding():
    s = ServerSettings(endpoint="tcp://0.0.0.0:5999")
    with pytest.raises(InsecureEndpoint, match="CurveZMQ"):
        check_exposure(s)
    server = SidecarServer(NarrativeService(None), s)
    with pytest.raises(InsecureEndpoint):
        asyncio.run(server.run())
    assert check_exposure(ServerSettings(endpoint="tcp://0.0.0.0:5999", allow_insecure_remote=True)) is None


def test_serve_refuses_a_public_endpoint_without_curve(capsys):
    assert main(["serve", "--endpoint", "tcp://0.0.0.0:5999"]) == 2
    assert "refusing to bind tcp://0.0.0.0:5999 without CurveZMQ" in capsys.readouterr().err


def test_curve_lets_only_allow_listed_clients_in(tmp_path):
    keys, allowed = tmp_path / "keys", tmp_path / "allowed"
    allowed.mkdir()
    for name in ("server", "game", "stranger"):
        assert main(["keys", name, "--dir", str(keys)]) == 0
    (allowed / "game.key").write_bytes((keys / "game.key").read_bytes())
    s = ServerSettings(endpoint="tcp://127.0.0.1:*", curve_secret_key_file=str(keys / "server.key_secret"),
                       curve_allowed_clients_dir=str(allowed))
    st = ServerThread(SidecarServer(NarrativeService(None), s))
    endpoint = st.start()
    try:
        with SidecarClient(endpoint, timeout_s=20, curve_server_key=str(keys / "server.key"),
                           curve_client_secret=str(keys / "game.key_secret")) as c:
            assert c.hello("game").server.startswith("narrative")
        with SidecarClient(endpoint, timeout_s=3, curve_server_key=str(keys / "server.key"),
                           curve_client_secret=str(keys / "stranger.key_secret")) as c:
            with pytest.raises(SidecarTimeout):
                c.ping()
        with SidecarClient(endpoint, timeout_s=3) as c:  # no CurveZMQ at all
            with pytest.raises(SidecarTimeout):
                c.ping()
    finally:
        st.stop()
    assert st.error is None, st.error


def test_a_send_that_cannot_be_queued_times_out_instead_of_blocking():
    """A DEALER blocks on send while it has no usable peer (ZMQ_IMMEDIATE here stands in for a refused
    handshake or a full queue): the client gives up after its timeout_s with `SidecarTimeout`."""
    import time

    import zmq

    c = SidecarClient("tcp://127.0.0.1:1", timeout_s=0.5)  # nobody listens there
    c.sock.close(linger=0)
    c.sock = c._ctx.socket(zmq.DEALER)
    c.sock.setsockopt(zmq.IMMEDIATE, 1)  # no pipe until a connection completes
    c.sock.connect(c.endpoint)
    t = time.monotonic()
    try:
        with pytest.raises(SidecarTimeout, match="could not send"):
            c.ping()
    finally:
        c.close()
    assert time.monotonic() - t < 5
