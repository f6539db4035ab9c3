"""The Unity package's C# client (bridge/clients/unity) against the real sidecar: real SmolLM2, real ZeroMQ on loopback TCP.

The engine-agnostic core and a console test program (tests/clients/unity/ClientTests.cs) are built with Mono's
``mcs -langversion:7.2`` and run with ``mono``; each scenario is one run of the program against a `SidecarServer`
bound on a fixed loopback port (default limits: ``max_frame_bytes`` 64 KiB, hard limit 1 MiB). The Unity layer
(MonoBehaviours, editor menu, sample) is compiled against a stand-in UnityEngine/UnityEditor assembly: compile-only.

Needs ``mcs`` and ``mono`` (Debian ``mono-devel``, installed by scripts/setup.sh); skips with the reason otherwise.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, ServerThread

UNITY = ROOT / "bridge" / "clients" / "unity"
TESTS_CS = ROOT / "tests" / "clients" / "unity"
VECTORS = ROOT / "bridge" / "clients" / "protocol-vectors.json"
MCS = shutil.which("mcs")
MONO = shutil.which("mono")

pytestmark = pytest.mark.skipif(
    not (MCS and MONO),
    reason="needs Mono's mcs and mono (Debian package mono-devel; scripts/setup.sh installs it where apt-get works)",
)


def core_sources() -> list[Path]:
    return sorted((UNITY / "Runtime" / "Core").glob("*.cs"))


def mcs(out: Path, sources: list[Path], *, target: str = "exe", refs: list[str] = ()) -> None:
    """Compile with C# 7.2 (the language Unity's floor, 7.3, includes), warnings as errors."""
    cmd = [MCS, "-langversion:7.2", "-warnaserror+", "-nologo", f"-target:{target}", f"-out:{out}", "-r:System.Core.dll"]
    cmd += [f"-r:{r}" for r in refs] + [str(s) for s in sources]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"mcs failed:\n{proc.stdout}\n{proc.stderr}"


@pytest.fixture(scope="module")
def tests_exe(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cs") / "ClientTests.exe"
    mcs(out, core_sources() + [TESTS_CS / "ClientTests.cs"])
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(runtime, endpoint: str) -> ServerThread:
    """A real SidecarServer with the default limits (max_frame_bytes 64 KiB) on `endpoint`."""
    from bridge.server import SidecarServer
    from bridge.settings import ServerSettings

    from narrative.service import NarrativeService

    # no quest generator: `generate` is refused with a typed error (ClientTests.cs Lore), without generating a quest
    st = ServerThread(SidecarServer(NarrativeService(runtime.engine, models=runtime.model_names()), ServerSettings(endpoint=endpoint)))
    st.start()
    return st


@pytest.fixture(scope="module")
def cs_sidecar(runtime):
    st = start_server(runtime, f"tcp://127.0.0.1:{free_port()}")
    yield st.server.endpoint
    st.stop()
    assert st.error is None, st.error


def run_cs(exe: Path, scenario: str, arg: str, timeout: int = 400) -> str:
    proc = subprocess.run([MONO, "--debug", str(exe), scenario, arg], capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    print(out)
    assert proc.returncode == 0 and f"PASS {scenario}" in out, out
    return out


# ---- offline: the codec ------------------------------------------------------------------------------------------


def test_wire_vectors_decode_and_reencode_byte_exact(tests_exe):
    """Every PROTOCOL.md example (the shared vectors file) round-trips byte for byte, generic and typed (each to its
    own class: action, event, state and declare included); the requests the client builds are byte-exact too."""
    import json

    out = run_cs(tests_exe, "vectors", str(VECTORS))
    assert out.count("byte-exact") == len(json.loads(VECTORS.read_text())["vectors"])


def test_game_events_state_and_actions_wire_cases(tests_exe, tmp_path):
    """tests/clients/wire_cases.py (encoded by bridge/protocol.py): say.state, event with each target and state, state,
    declare with a richer schema, action with mixed arguments, done with fields/actions/rejected/forgotten_turns, ok.count,
    unsupported_schema, busy with retry_after_ms (BusyException.RetryAfterMs). Each round-trips byte for byte (nested maps, lists, bool, int, float64, str); what Say, EventAsync,
    SetStateAsync and DeclareAsync build from C# values (float32s, arrays, Dictionaries) is byte-exact; a say stream's
    actions reach onAction and done.Actions in order."""
    from tests.clients import wire_cases

    cases = wire_cases.write(tmp_path / "wire-cases.json")
    out = run_cs(tests_exe, "extra-vectors", str(cases))
    requests = [n for n, m in wire_cases.messages() if m.type in ("say", "event", "state", "declare")]
    assert out.count("byte-exact") == len(wire_cases.messages()) + len(requests)  # every case round-trips; every request is built
    assert "retry_after_ms -> BusyException.RetryAfterMs 1500" in out  # the busy error's retry_after_ms, decoded


def test_hostile_and_truncated_msgpack_fails_cleanly(tests_exe):
    run_cs(tests_exe, "hostile", str(VECTORS))


# ---- against the real sidecar --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scenario",
    ["hello", "conversation", "cancel", "ping-during-decode", "unknown-npc", "two-npcs", "frame-too-large", "drop", "lore", "actions"],
)
def test_against_real_sidecar(tests_exe, cs_sidecar, scenario):
    run_cs(tests_exe, scenario, cs_sidecar)


def test_console_client_transcript(cs_sidecar, tmp_path):
    """Tools~/SidecarConsole.cs (the transcript and benchmark driver) builds and streams a two-turn conversation."""
    exe = tmp_path / "SidecarConsole.exe"
    mcs(exe, core_sources() + [UNITY / "Tools~" / "SidecarConsole.cs"])
    proc = subprocess.run([MONO, str(exe), "transcript", cs_sidecar, "odile-brask", "Who are you?", "Any news from the docks?"],
                          capture_output=True, text=True, timeout=400)
    print(proc.stdout, proc.stderr)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count(" done ") == 2 and proc.stdout.count("chunk  1 ") == 2, proc.stdout


def test_sidecar_restarted_mid_session(tests_exe, runtime):
    """Stop the sidecar while a stream is in flight and start a new one on the same port: the client reconnects,
    re-sends hello, and the next say works (the stream in flight ends, nothing is resent)."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    st = start_server(runtime, endpoint)
    proc = subprocess.Popen([MONO, "--debug", str(tests_exe), "restart", endpoint], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.strip() == "RESTART-NOW":
                break
        assert lines and lines[-1].strip() == "RESTART-NOW", "".join(lines)
        st.stop()
        assert st.error is None, st.error
        st = start_server(runtime, endpoint)  # same port
        rest, _ = proc.communicate(timeout=300)
        lines.append(rest)
    finally:
        if proc.poll() is None:
            proc.kill()
        st.stop()
    out = "".join(lines)
    print(out)
    assert proc.returncode == 0 and "PASS restart" in out, out


def test_package_layout_has_meta_files_and_valid_manifests():
    """UPM layout: package.json, asmdefs (the core's without engine references, the editor's editor-only), and a
    .meta file for every asset (a package installed from git is read-only; Unity ignores assets without one)."""
    import json

    manifest = json.loads((UNITY / "package.json").read_text())
    assert manifest["name"] == "com.narrative.sidecar" and manifest["samples"][0]["path"] == "Samples~/StreamedLine"
    core = json.loads((UNITY / "Runtime" / "Narrative.Sidecar.asmdef").read_text())
    assert core["noEngineReferences"] is True
    editor = json.loads((UNITY / "Editor" / "Narrative.Sidecar.Editor.asmdef").read_text())
    assert editor["includePlatforms"] == ["Editor"]
    proc = subprocess.run([sys.executable, str(UNITY / "Tools~" / "make_meta.py"), "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


STAND_IN_ROUTER = r"""
# A stand-in peer (not the sidecar): a real libzmq ROUTER with fast ZMTP heartbeats that answers hello and ping.
import sys, msgpack, zmq
sock = zmq.Context().socket(zmq.ROUTER)
for opt, v in ((zmq.HEARTBEAT_IVL, 200), (zmq.HEARTBEAT_TIMEOUT, 1000), (zmq.HEARTBEAT_TTL, 1000), (zmq.LINGER, 0)):
    sock.setsockopt(opt, v)
sock.bind(sys.argv[1])
print("bound", flush=True)
while True:
    ident, payload = sock.recv_multipart()
    req = msgpack.unpackb(payload)
    reply = {"v": 1, "id": req["id"], "type": {"hello": "ready", "ping": "pong"}.get(req["type"], "error")}
    if reply["type"] == "ready":
        reply.update(server="stand-in", models={}, npcs=[], limits={"max_frame_bytes": 65536})
    sock.send_multipart([ident, msgpack.packb(reply)])
"""


def test_zmtp_heartbeats_against_libzmq(tests_exe, tmp_path):
    """Heartbeats against a real libzmq ROUTER (a stand-in peer, run as its own process): an idle client that sends
    no PINGs of its own answers libzmq's PINGs and is not dropped; when the peer freezes (SIGSTOP), the client
    declares it dead within its heartbeat timeout, failing the request in flight as disconnected. (The client's own
    PINGs, every 2 s by default, run in every test against the sidecar.)"""
    import signal
    import sys as _sys

    script = tmp_path / "stand_in_router.py"
    script.write_text(STAND_IN_ROUTER)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    peer = subprocess.Popen([_sys.executable, str(script), endpoint], stdout=subprocess.PIPE, text=True)
    client = None
    try:
        assert peer.stdout.readline().strip() == "bound"
        client = subprocess.Popen([MONO, "--debug", str(tests_exe), "heartbeat", endpoint], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines = []
        for line in client.stdout:
            lines.append(line)
            if line.strip() == "FREEZE-NOW":
                peer.send_signal(signal.SIGSTOP)
                break
        rest, _ = client.communicate(timeout=60)
        out = "".join(lines) + rest
        print(out)
        assert client.returncode == 0 and "PASS heartbeat" in out, out
    finally:
        if client is not None and client.poll() is None:
            client.kill()
        peer.send_signal(signal.SIGCONT)
        peer.kill()
        peer.wait()


# ---- compile-only: the Unity layer ---------------------------------------------------------------------------------


def test_unity_layer_compiles_against_the_stand_in(tmp_path):
    """Runtime/Unity, Editor and Samples~ compile against tests/clients/unity/UnityEngineStandIn.cs, a compile-only
    stand-in for the few UnityEngine/UnityEditor types they use (no Unity is installable here). The core must not
    reference UnityEngine (it compiled above without it)."""
    for src in core_sources():
        assert "UnityEngine" not in src.read_text().replace("no UnityEngine", ""), f"{src.name} references UnityEngine"
    stand_in = tmp_path / "UnityEngine.dll"
    mcs(stand_in, [TESTS_CS / "UnityEngineStandIn.cs"], target="library")
    core = tmp_path / "Narrative.Sidecar.dll"
    mcs(core, core_sources(), target="library")
    layer = tmp_path / "Narrative.Sidecar.Unity.dll"
    mcs(layer, sorted((UNITY / "Runtime" / "Unity").glob("*.cs")), target="library", refs=[str(stand_in), str(core)])
    editor = sorted((UNITY / "Editor").glob("*.cs"))
    mcs(tmp_path / "Narrative.Sidecar.Editor.dll", editor, target="library", refs=[str(stand_in), str(core), str(layer)])
    samples = sorted((UNITY / "Samples~").rglob("*.cs"))
    assert samples
    mcs(tmp_path / "Samples.dll", samples, target="library", refs=[str(stand_in), str(core), str(layer)])
