"""Configuration layers (bluewren.node.settings) and the config commands of the CLI.

The three layers (TOML file, BLUEWREN_<FIELD> environment variables, command-line
flags) merge into the one NodeConfig in that order of precedence; every field rejects a
bad value with an error naming the key, the value, where it came from and why; unknown
keys get a "did you mean"; the shipped examples/bluewren.toml is exactly what
``bluewren config --print-defaults`` writes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tomllib
from pathlib import Path

import pytest

from bluewren.__main__ import main
from bluewren.breaker import BreakerConfig
from bluewren.node import NodeConfig
from bluewren.node.settings import ConfigError, defaults_toml, field_help, load_config
from conftest import node_env, reap, serve_process

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "bluewren.toml"

# One invalid value per field, as it would be written in the TOML file.
BAD_VALUES: dict[str, object] = {
    "host": "",
    "port": 70000,
    "data_dir": "",
    "token_secret": "too-short",
    "max_message_bytes": 0,
    "hello_timeout": 0,
    "outbox_low_water": -1,
    "outbox_high_water": 1,
    "outbox_max_bytes": -1,
    "sqlite_synchronous": "OFF",
    "store_wal_checkpoint_pages": 0,
    "store_batch_max": 0,
    "store_message_log": "sometimes",
    "store_log_backlog_max": 0,
    "store_log_segment_bytes": 4095,
    "store_log_cache_entries": 0,
    "shutdown_timeout": 0,
    "tcp_port": 70000,
    "send_rate": 0,
    "send_burst": 0,
    "max_typing_per_second": 0,
    "max_connections": 0,
    "listen_backlog": 0,
    "overload_retry_after": -1,
    "max_devices_per_user": 0,
    "max_groups_per_user": 0,
    "max_group_members": 1,
    "max_history_page": 0,
    "max_presence_query": 0,
    "receipts_max_members": 0,
    "shed_loop_lag": 0,
    "shed_rss_bytes": 0,
    "load_check_interval": 0,
    "connect_rate": 0,
    "connect_burst": 0,
    "login_rate": 0,
    "login_burst": 0,
    "breakers": "store",
    "metrics_port": 70000,
    "admin_token": "short",
    "log_level": "LOUD",
    "tls_cert": "cert.pem",  # without tls_key
    "tls_key": "key.pem",  # without tls_cert
    "max_open_files": 3,
    "gc_threshold": 10,
    "disabled_refresh_interval": 0,
}

FIELDS = [f.name for f in dataclasses.fields(NodeConfig)]


def _toml(value: object) -> str:
    return json.dumps(value)  # strings and numbers are written alike in TOML and JSON


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_every_field_has_a_bad_value_case() -> None:
    assert sorted(BAD_VALUES) == sorted(FIELDS)


@pytest.mark.parametrize("field", FIELDS)
def test_bad_value_in_file_names_key_value_source_and_reason(field: str, tmp_path: Path) -> None:
    bad = BAD_VALUES[field]
    path = write(tmp_path / "bad.toml", f"{field} = {_toml(bad)}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    err = info.value
    assert err.field == field
    assert err.value == bad
    assert err.source == str(path)
    assert err.reason
    assert str(err) == f"{path}: {field} = {_toml(bad)}: {err.reason}"


@pytest.mark.parametrize("field", FIELDS)
def test_check_config_exits_2_naming_the_bad_key(
    field: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("BLUEWREN_"):
            monkeypatch.delenv(name)
    bad = BAD_VALUES[field]
    path = write(tmp_path / "bad.toml", f"{field} = {_toml(bad)}\n")
    assert main(["check-config", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"bluewren: {path}: {field} = {_toml(bad)}: ")
    assert "ok" not in captured.out


def test_check_config_prints_ok_for_a_valid_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path / "good.toml", 'port = 9000\nsqlite_synchronous = "FULL"\n')
    assert main(["check-config", str(path)]) == 0
    assert capsys.readouterr().out == "ok\n"


def test_unknown_key_is_an_error_with_a_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path / "typo.toml", "send_rat = 10\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert info.value.field == "send_rat"
    assert "unknown key (did you mean 'send_rate'?)" in str(info.value)


def test_unknown_key_without_a_near_field_has_no_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path / "odd.toml", "zzzzzz = 1\n")
    with pytest.raises(ConfigError, match=r"zzzzzz = 1: unknown key$"):
        load_config(path, environ={})


def test_a_table_that_is_not_a_field_is_an_unknown_key(tmp_path: Path) -> None:
    path = write(tmp_path / "table.toml", "[node]\nport = 1\n")
    with pytest.raises(ConfigError, match=r"node = .*unknown key"):
        load_config(path, environ={})


def test_malformed_toml_is_reported_with_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "broken.toml", "port = = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path, environ={})


def test_missing_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_config(tmp_path / "absent.toml", environ={})


def test_cli_beats_env_beats_file_beats_defaults(tmp_path: Path) -> None:
    path = write(tmp_path / "node.toml", "port = 9001\nsend_rate = 2.0\nsend_burst = 3\n")
    env = {"BLUEWREN_SEND_RATE": "20", "BLUEWREN_SEND_BURST": "30"}
    config = load_config(path, environ=env, cli={"send_burst": 300})
    assert config.port == 9001  # file
    assert config.send_rate == 20.0  # env over file
    assert config.send_burst == 300  # CLI over env and file
    assert config.hello_timeout == NodeConfig().hello_timeout  # default


def test_env_values_take_the_field_type(tmp_path: Path) -> None:
    env = {
        "BLUEWREN_PORT": "9002",
        "BLUEWREN_HELLO_TIMEOUT": "2.5",
        "BLUEWREN_DATA_DIR": str(tmp_path / "d"),
        "BLUEWREN_TCP_PORT": "off",
        "BLUEWREN_METRICS_PORT": "0",
        "BLUEWREN_SQLITE_SYNCHRONOUS": "FULL",
    }
    path = write(tmp_path / "node.toml", "tcp_port = 7000\n")
    config = load_config(path, environ=env)
    assert config.port == 9002
    assert config.hello_timeout == 2.5
    assert config.data_dir == tmp_path / "d"
    assert config.tcp_port is None  # "off" in the environment turns the file's 7000 off
    assert config.metrics_port == 0
    assert config.sqlite_synchronous == "FULL"


def test_bad_env_value_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, environ={"BLUEWREN_PORT": "eighty"})
    assert info.value.field == "port"
    assert info.value.source == "env BLUEWREN_PORT"
    assert str(info.value).startswith('env BLUEWREN_PORT: port = "eighty": must be an integer')


def test_env_variables_naming_no_field_are_ignored() -> None:
    assert load_config(None, environ={"BLUEWREN_NOT_A_FIELD": "1"}) == NodeConfig()


def test_cross_field_error_reports_the_value_from_its_layer(tmp_path: Path) -> None:
    path = write(tmp_path / "node.toml", "max_message_bytes = 1048576\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={}, cli={"outbox_max_bytes": 1_048_576})
    assert info.value.field == "outbox_max_bytes"
    assert info.value.value == 1_048_576
    assert info.value.source == "command line"
    assert "must hold at least one largest message" in info.value.reason


def test_breaker_tables_become_breaker_configs(tmp_path: Path) -> None:
    path = write(tmp_path / "node.toml", '[breakers."store.write"]\nminimum_calls = 7\n')
    config = load_config(path, environ={})
    assert isinstance(config.breakers["store.write"], BreakerConfig)
    assert config.breakers["store.write"].minimum_calls == 7


def test_bad_breaker_setting_names_the_nested_key(tmp_path: Path) -> None:
    path = write(tmp_path / "node.toml", '[breakers."store.write"]\nminimum_calls = 0\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert info.value.field == "breakers.store.write.minimum_calls"
    assert info.value.value == 0


def test_unknown_breaker_gets_a_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path / "node.toml", '[breakers."store.wirte"]\nminimum_calls = 5\n')
    with pytest.raises(ConfigError, match=r"did you mean 'store\.write'"):
        load_config(path, environ={})


def test_print_defaults_has_every_field_with_a_comment(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["config", "--print-defaults"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name in FIELDS:
        at = [
            i
            for i, line in enumerate(lines)
            if re.match(rf"^(# )?{name} = ", line) or line == f"[{name}]"
        ]
        assert len(at) == 1, name
        comment = lines[at[0] - 1]
        assert comment.startswith("# "), name
        assert len(comment) > 10, name
        assert comment[2:] == field_help(name)


def test_help_table_names_only_real_fields() -> None:
    from bluewren.node.settings import FIELD_HELP

    assert set(FIELD_HELP) <= set(FIELDS)


def test_example_file_equals_the_printed_defaults() -> None:
    assert EXAMPLE.read_text() == defaults_toml()


def test_example_file_loads_to_the_defaults() -> None:
    assert load_config(EXAMPLE, environ={}) == NodeConfig()


def test_every_default_that_is_set_appears_in_the_example_with_its_value() -> None:
    table = tomllib.loads(EXAMPLE.read_text())
    for f in dataclasses.fields(NodeConfig):
        default = getattr(NodeConfig(), f.name)
        if default is None:
            assert f.name not in table
        elif isinstance(default, Path):
            assert table[f.name] == str(default)
        else:
            assert table[f.name] == default, f.name


def test_unknown_set_field_is_refused_by_serve(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--data-dir", str(tmp_path), "--set", "sned_rate=5"]) == 2
    assert "sned_rate" in capsys.readouterr().err


def test_pyproject_declares_the_bluewren_script() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["bluewren"] == "bluewren.__main__:main"


def test_version_command_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    import bluewren

    assert main(["version"]) == 0
    assert capsys.readouterr().out == f"bluewren {bluewren.__version__}\n"


def test_serve_reads_the_config_file_and_flags_override_it(tmp_path: Path) -> None:
    """A real process: the file's port 1 would fail, so the node listening proves the
    flag won; metrics_port from the environment turns the HTTP endpoint on."""
    data = tmp_path / "data"
    path = write(
        tmp_path / "node.toml",
        f'port = 1\ndata_dir = "{data}"\nhello_timeout = 3.0\nshutdown_timeout = 2.0\n',
    )
    proc = serve_process(
        "--config", str(path), "--port", "0", env=node_env(BLUEWREN_METRICS_PORT="0")
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert re.fullmatch(r"bluewren node listening on ws://127\.0\.0\.1:\d+/\n", line), line
        assert not line.endswith(":1/\n")
        assert (data / "bluewren.db").exists()
        proc.terminate()
        assert proc.wait(timeout=20) == 0
    finally:
        reap(proc)


def test_token_command_reads_the_data_dir_from_the_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BLUEWREN_TOKEN_SECRET", raising=False)
    data = tmp_path / "data"
    path = write(tmp_path / "node.toml", f'data_dir = "{data}"\n')
    assert main(["token", "alice", "--config", str(path)]) == 0
    token = capsys.readouterr().out.strip()
    from bluewren.auth import TokenIssuer

    secret = (data / "token_secret").read_text().strip()
    assert TokenIssuer(secret).verify(token).user == "alice"
