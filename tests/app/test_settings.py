"""Settings files from users: every mistake is an error naming the file and the field, never a traceback
or a silent no-op (found by a red-team pass: TOML syntax and encoding errors were tracebacks without the
file, unknown keys inside a section were ignored, out-of-range server values crashed at bind time)."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.cli import main
from app.settings import SettingsError, load_settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("text, expected", [
    (b'[dialogue_model\npath = "x"\n', "not valid TOML: Expected ']' at the end of a table declaration (at line 1"),
    (b"\xff\xfe[server]\n", "not UTF-8 text"),
    (b"[server]\nbogus = 1\n", "server.bogus: Extra inputs are not permitted"),
    (b"[dialogue_model]\nn_gpu_layer = -1\n", "dialogue_model.n_gpu_layer: Extra inputs are not permitted"),  # a typo of n_gpu_layers
    (b"[server]\npeer_timeout_s = inf\n", "server.peer_timeout_s: Input should be less than or equal to 86400"),
    (b"[server]\nsend_hwm = 1099511627776\n", "server.send_hwm: Input should be less than or equal to 1000000"),
    (b"[server]\nmax_frame_bytes = 2000000\n", "max_frame_bytes (2000000) is over hard_max_frame_bytes (1048576)"),
])
def test_a_bad_settings_file_is_an_error_naming_file_and_field(tmp_path, text, expected):
    f = tmp_path / "bad.toml"
    f.write_bytes(text)
    with pytest.raises(SettingsError) as exc:
        load_settings(f)
    msg = str(exc.value)
    assert msg.startswith(str(f)) and expected in msg, msg
    assert "errors.pydantic.dev" not in msg


def test_the_cli_prints_it_without_a_traceback(tmp_path, capsys):
    f = tmp_path / "bad.toml"
    f.write_bytes(b"[server]\nbogus = 1\n")
    assert main(["batch", str(ROOT / "samples" / "quests"), "--out", str(tmp_path / "out"), "--dry-run", "--lore-files",
                 "--config", str(f)]) == 2
    err = capsys.readouterr().err
    assert f"error: invalid settings in {f}:" in err and "server.bogus" in err and "Traceback" not in err


def test_a_good_settings_file_still_loads(tmp_path):
    f = tmp_path / "good.toml"
    f.write_text('[server]\nendpoint = "tcp://127.0.0.1:5999"\n[context]\nram_mib = 512\n')
    s = load_settings(f)
    assert s.server.endpoint == "tcp://127.0.0.1:5999" and s.context.ram_mib == 512


@pytest.mark.parametrize("flag", ["--parallel", "--threads", "--concurrency"])
def test_batch_counts_below_one_are_usage_errors(tmp_path, capsys, flag):
    with pytest.raises(SystemExit) as exc:
        main(["batch", str(ROOT / "samples" / "quests"), "--out", str(tmp_path / "out"), "--dry-run", flag, "0"])
    assert exc.value.code == 2
    assert f"argument {flag}: must be at least 1, got 0" in capsys.readouterr().err
