"""``edgeinfer fleet``: token create, devices (80 columns, --json), device, revoke, errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fleet_support import ADMIN, FleetProcess, free_port, start_fleet, status
from typer.testing import CliRunner

from edgeinfer.cli.main import build_app, main
from edgeinfer.fleet.client import ClientConfig, FleetClient, report_cycle

pytestmark = pytest.mark.timeout(120)
runner = CliRunner()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetProcess]:
    started = start_fleet(str(tmp_path_factory.mktemp("cli") / "fleet.db"))
    yield started
    started.stop()


def fleet_cli(service: FleetProcess, *args: str) -> str:
    env = {"EDGEINFER_FLEET_URL": service.url, "EDGEINFER_ADMIN_TOKEN": ADMIN}
    result = runner.invoke(build_app(), ["fleet", *args], env=env)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_token_devices_device_and_revoke(service: FleetProcess, tmp_path: Path) -> None:
    token = fleet_cli(service, "token", "create", "--uses", "2").strip()
    assert token.startswith("et_") and "\n" not in token
    clients = [
        FleetClient(ClientConfig(service.url, tmp_path / name, enroll_token=token))
        for name in ("a", "b")
    ]
    for client in clients:
        assert report_cycle(client, status(3), latency_ms=[2.0, 3.0]).sent == 1

    table = fleet_cli(service, "devices")
    lines = table.splitlines()
    assert lines[0].split() == ["ID", "MODEL", "VER", "STATE", "LAST", "REPORT"]
    assert all(len(line) <= 80 for line in lines)
    assert any(clients[0].device_id in line and "digits" in line for line in lines)

    listed = json.loads(fleet_cli(service, "devices", "--json"))
    mine = {d["id"]: d for d in listed}[clients[1].device_id]
    assert set(mine) >= {"id", "model", "version", "state", "last_report_at"}

    shown = fleet_cli(service, "device", clients[0].device_id)
    assert "latency_ms" in shown and all(len(line) <= 80 for line in shown.splitlines())
    assert json.loads(fleet_cli(service, "device", clients[0].device_id, "--json"))["version"] == 3

    assert "revoked at" in fleet_cli(service, "revoke", clients[0].device_id)
    listed = json.loads(fleet_cli(service, "devices", "--json"))
    assert {d["id"]: d for d in listed}[clients[0].device_id]["state"] == "revoked"


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["devices", "--admin-token", "wrong"], "invalid admin token"),
        (["device", "d-nope"], "no device 'd-nope'"),
        (["devices", "--fleet", "ftp://x"], "expected http:// or https://"),
        (["token", "create", "--admin-token", ""], "pass the fleet's admin token"),
    ],
)
def test_operator_mistakes_are_one_line_and_exit_2(
    service: FleetProcess,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    fragment: str,
) -> None:
    monkeypatch.setenv("EDGEINFER_FLEET_URL", service.url)
    monkeypatch.setenv("EDGEINFER_ADMIN_TOKEN", ADMIN)
    with pytest.raises(SystemExit) as caught:
        main(["fleet", *args])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert fragment in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_an_unreachable_fleet_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("EDGEINFER_ADMIN_TOKEN", ADMIN)
    with pytest.raises(SystemExit) as caught:
        main(["fleet", "devices", "--fleet", f"http://127.0.0.1:{free_port()}"])
    assert caught.value.code == 2
    assert "cannot reach the fleet" in capsys.readouterr().err


def test_serve_refuses_a_bad_database_or_no_admin_token(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.delenv("EDGEINFER_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("EDGEINFER_ADMIN_TOKEN_FILE", raising=False)
    with pytest.raises(SystemExit):
        main(["fleet", "serve", "--db", str(tmp_path / "f.db")])
    assert "admin token" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["fleet", "serve", "--db", "mysql://x/y", "--admin-token", "t"])
    assert "unsupported database" in capsys.readouterr().err
    token_file = tmp_path / "admin"
    token_file.write_text("# the fleet's admin token\n")
    with pytest.raises(SystemExit):
        main(["fleet", "serve", "--admin-token-file", str(token_file)])
    assert "no token in it" in capsys.readouterr().err
    for option, value, message in (
        ("--header-timeout", "0", "header_timeout_s 0.0 must be > 0"),
        ("--max-connections", "-1", "max_connections -1 must be >= 1"),
    ):
        with pytest.raises(SystemExit) as exited:
            main(
                [
                    "fleet",
                    "serve",
                    "--db",
                    str(tmp_path / "f.db"),
                    "--admin-token",
                    "t",
                    option,
                    value,
                ]
            )
        assert exited.value.code == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
