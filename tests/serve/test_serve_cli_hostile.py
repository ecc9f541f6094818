"""`sightline serve` with what would fail inside uvicorn: a damaged model.onnx (a traceback from the app's
startup, exit 3), a host that does not resolve (exit 3) or a port already taken (exit 1). Now one line, exit 2,
before the server starts."""
from __future__ import annotations

import socket

import pytest
from serve_tiny import make_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("serve_cli"))


def _last_error(out) -> str:
    assert "Traceback" not in out.err, out.err
    lines = [line for line in out.err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), out.err
    return " ".join(lines[-1].split())


def test_damaged_onnx_is_one_line(run_cli, bundle, tmp_path):
    import shutil

    broken = shutil.copytree(bundle, tmp_path / "broken")
    data = (broken / "model.onnx").read_bytes()
    (broken / "model.onnx").write_bytes(data[: len(data) // 3])  # a copy that stopped part way
    code, out = run_cli(["serve", str(broken), "--database", str(tmp_path / "db.sqlite")])
    assert code == 2 and "model.onnx cannot be loaded by ONNX Runtime" in _last_error(out)


def test_host_that_does_not_resolve(run_cli, bundle, tmp_path):
    code, out = run_cli(["serve", str(bundle), "--host", "no-such-host.invalid",
                         "--database", str(tmp_path / "db.sqlite")])
    assert code == 2 and "--host 'no-such-host.invalid' cannot be resolved" in _last_error(out)


def test_port_in_use(run_cli, bundle, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out = run_cli(["serve", str(bundle), "--port", str(port), "--database", str(tmp_path / "db.sqlite")])
    assert code == 2 and f"cannot listen on 127.0.0.1:{port}" in _last_error(out)
