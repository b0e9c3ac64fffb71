"""Environment defaults (arena_pref.environment): set only what is unset; no command takes the Hub away."""

from __future__ import annotations

import os
from types import MappingProxyType

import pytest

from arena_pref import environment

PRODUCT_KEYS = {key for group in environment.PRODUCT for key in group}


@pytest.fixture
def clean_env(monkeypatch):
    """This process without any variable of any group (the test session sets them; monkeypatch restores them)."""
    for group in (*environment.PRODUCT, environment.NO_PROGRESS_BARS):
        for key in group:
            monkeypatch.delenv(key, raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return monkeypatch


def test_apply_defaults_fills_the_missing_and_keeps_the_users_values(clean_env):
    clean_env.setenv("DO_NOT_TRACK", "false")  # the user's own choice
    applied = environment.apply_defaults(environment.TELEMETRY, environment.LIBRARIES)
    assert os.environ["DO_NOT_TRACK"] == "false" and "DO_NOT_TRACK" not in applied
    assert os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert os.environ["TOKENIZERS_PARALLELISM"] == "false"
    assert set(applied) == ({*environment.TELEMETRY, *environment.LIBRARIES} - {"DO_NOT_TRACK"})
    assert "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" not in os.environ  # a group not asked for stays out


def test_child_env_adds_defaults_without_touching_this_process_or_the_base(clean_env):
    base = {"PATH": "/usr/bin", "DO_NOT_TRACK": "false"}
    env = environment.child_env(*environment.PRODUCT, base=base)
    assert env["DO_NOT_TRACK"] == "false"  # the base's value wins over the group's
    assert env["PATH"] == "/usr/bin" and set(env) >= PRODUCT_KEYS
    assert base == {"PATH": "/usr/bin", "DO_NOT_TRACK": "false"}
    assert not PRODUCT_KEYS & set(os.environ)
    clean_env.setenv("ONLY_HERE", "1")
    assert environment.child_env(environment.TELEMETRY)["ONLY_HERE"] == "1"  # default base: this process


def test_groups_are_read_only_and_must_be_groups():
    with pytest.raises(TypeError):
        environment.TELEMETRY["DO_NOT_TRACK"] = "false"  # type: ignore[index]
    with pytest.raises(TypeError, match="not a mapping"):
        environment.apply_defaults("TELEMETRY")  # type: ignore[arg-type]


def test_no_group_takes_the_hub_away():
    """On a user's GPU box the Hub must work: no group of the product sets any Hub variable."""
    groups = [value for value in vars(environment).values() if isinstance(value, MappingProxyType)]
    assert environment.TELEMETRY in groups and environment.NO_PROGRESS_BARS in groups
    hub = {"HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_ENDPOINT", "HF_HOME", "HF_TOKEN"}
    assert not hub & {key for group in groups for key in group}


@pytest.mark.parametrize(
    "command",
    [
        ["demo"],
        ["train", "--config", "configs/tiny.yaml"],
        ["predict", "--test-csv", "test.csv"],
        ["stack", "status"],
    ],
)
def test_commands_get_the_product_defaults_and_leave_the_hub_alone(clean_env, command):
    from arena_pref import cli

    cli.apply_environment(cli.build_parser().parse_args(command))
    assert "HF_HUB_OFFLINE" not in os.environ
    assert all(os.environ.get(key) == value for group in environment.PRODUCT for key, value in group.items())


def test_a_users_hub_setting_reaches_every_command(clean_env):
    from arena_pref import cli

    for value in ("0", "1"):
        clean_env.setenv("HF_HUB_OFFLINE", value)
        cli.apply_environment(cli.build_parser().parse_args(["demo"]))
        assert os.environ["HF_HUB_OFFLINE"] == value


def test_prefect_history_lives_in_the_project_folder_unless_the_user_chose(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert environment.local_prefect(tmp_path / "proj", base={}) == {
        "PREFECT_HOME": str(tmp_path / "proj" / ".prefect")
    }
    assert environment.local_prefect(tmp_path / "proj", base={"PREFECT_API_URL": "http://127.0.0.1:4200/api"}) == {}
    assert environment.local_prefect(tmp_path / "proj", base={"PREFECT_HOME": "/elsewhere"}) == {}
    profiles = tmp_path / "home" / ".prefect" / "profiles.toml"
    profiles.parent.mkdir(parents=True)
    profiles.write_text('active = "default"\n')
    assert environment.local_prefect(tmp_path / "proj", base={})["PREFECT_PROFILES_PATH"] == str(profiles)


def test_a_local_flow_run_writes_its_history_beside_the_project_store(tmp_path):
    """A real flow under the CLI's environment: the temporary server's database is <project>/.prefect/prefect.db,
    and the user's ~/.prefect stays untouched."""
    import subprocess
    import sys

    home, project = tmp_path / "home", tmp_path / "project"
    home.mkdir()
    project.mkdir()
    script = (
        "import argparse; from arena_pref.cli import apply_environment; apply_environment(argparse.Namespace())\n"
        "from prefect import flow\n"
        "@flow\ndef hello(): return 1\n"
        "assert hello() == 1\n"
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    env.update(HOME=str(home), ARENA_PREF_ROOT=str(project))
    subprocess.run([sys.executable, "-c", script], env=env, check=True, capture_output=True, timeout=240)
    assert (project / ".prefect" / "prefect.db").is_file()
    assert not (home / ".prefect" / "prefect.db").exists()
