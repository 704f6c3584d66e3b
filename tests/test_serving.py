"""Serving safely (issue 17): HTTPS with Streamlit's own TLS, the settings' one place, and the
limits Streamlit and the engine agree on."""

from __future__ import annotations

import io
import os
import socket
import ssl
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest

from engine.errors import DatasetError, SettingsError
from engine.settings import WorkbenchConfig, load_config

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_https_serving_answers_on_tls(tmp_path):
    from engine.tls import ensure_self_signed

    cert, key = ensure_self_signed(tmp_path / "tls")
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert ensure_self_signed(tmp_path / "tls") == (cert, key) and cert.stat().st_size  # kept, not remade
    port = free_port()
    env = {**os.environ, "LIM_HOME": str(tmp_path / "home"), "LIM_AUTH": "on"}
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats",
         "false", "--server.fileWatcherType", "none", "--server.sslCertFile", str(cert),
         "--server.sslKeyFile", str(key)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        context = ssl.create_default_context(cafile=str(cert))  # verifies the chain and the name
        deadline, answer = time.monotonic() + 60, None
        while time.monotonic() < deadline and answer is None:
            try:
                with urllib.request.urlopen(f"https://127.0.0.1:{port}/_stcore/health", context=context,
                                            timeout=2) as response:
                    answer = (response.status, response.read().decode())
            except (OSError, ssl.SSLError):
                assert server.poll() is None, server.stdout.read()
                time.sleep(0.3)
        assert answer == (200, "ok")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
        with pytest.raises(OSError):  # no plain HTTP on the same port
            urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=5).read()
    finally:
        server.terminate()
        server.wait(timeout=20)


def test_streamlit_settings_agree_with_the_engine():
    settings = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())["server"]
    assert settings["maxUploadSize"] == WorkbenchConfig().max_upload_mb
    assert settings["enableXsrfProtection"] is True
    assert settings["address"] == "localhost"
    makefile = (ROOT / "Makefile").read_text()
    assert "--server.maxUploadSize $(MAX_UPLOAD_MB)" in makefile and "load_config().max_upload_mb" in makefile


def test_the_app_does_not_collect_garbage_after_every_rerun():
    """Streamlit's default gc.collect(2) after each script run, with live fragments rerunning
    every 1.5-3 s in a process that trains a model, slowed a watched run 2-8x on 2 cores."""
    settings = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert settings["runner"]["postScriptGC"] is False


def test_settings_come_from_the_environment_over_the_config_file(tmp_path, monkeypatch):
    config = tmp_path / "lim.toml"
    config.write_text(f'home = "{tmp_path / "elsewhere"}"\nauth = "on"\nmax_upload_mb = 1\n'
                      'session_timeout_minutes = 5\n')
    monkeypatch.setenv("LIM_CONFIG", str(config))
    monkeypatch.delenv("LIM_HOME", raising=False)
    loaded = load_config()
    assert (loaded.auth, loaded.max_upload_mb, loaded.session_timeout_minutes) == ("on", 1, 5)
    from engine import Workbench, data_home
    from engine.data.archives import ImportLimits

    assert data_home() == tmp_path / "elsewhere" and ImportLimits().max_upload_mb == 1
    workbench = Workbench()  # the data home and the upload limit the file names
    with pytest.raises(DatasetError, match="larger than the upload limit of 1 MB"):
        workbench.save_upload("big.zip", io.BytesIO(b"\0" * (2 * 2**20)))
    assert not any((tmp_path / "elsewhere" / "staging").rglob("big*"))
    monkeypatch.setenv("LIM_AUTH", "off")
    assert load_config().auth == "off"  # the environment wins
    for name, value, problem in (("LIM_AUTH", "maybe", "auth must be one of on, off"),
                                 ("LIM_MAX_UPLOAD_MB", "lots", "max_upload_mb must be a int"),
                                 ("LIM_DEVICE", "tpu", "device must be auto, cpu, cuda or cuda:N"),
                                 ("LIM_PLAYGROUND_CACHE_MB", "-1", "playground_cache_mb must be at least 0"),
                                 ("LIM_DISTRIBUTED_TIMEOUT_MIN", "soon", "distributed_timeout_min must be")):
        monkeypatch.setenv(name, value)
        with pytest.raises(SettingsError, match=f"^{name}={value!r}: {problem}"):  # names the variable
            load_config()
        monkeypatch.delenv(name)
    # Every LIM_* setting the code reads lives here; the file and the environment both set them.
    config.write_text('profile = "laptop-cpu"\npeak_tflops = 12.5\nplayground_cache_mb = 64\n')
    monkeypatch.setenv("LIM_DISTRIBUTED_TIMEOUT_MIN", "7")
    from engine.flops import peak_tflops
    from engine.training.parallel import collective_timeout
    from engine.training.profiles import active_profile

    assert active_profile().name == "laptop-cpu" and peak_tflops("cpu") == 12.5
    assert collective_timeout().total_seconds() == 7 * 60 and load_config().playground_cache_mb == 64
    monkeypatch.setenv("LIM_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(SettingsError, match="not a file"):
        load_config()

