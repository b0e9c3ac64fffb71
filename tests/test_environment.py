"""Environment defaults (arena_pref.environment): set only what is unset; offline for the demo, never for `train`."""

from __future__ import annotations

import os

import pytest

from arena_pref import environment

PRODUCT_KEYS = {key for group in environment.PRODUCT for key in group}


@pytest.fixture
def clean_env(monkeypatch):
    """This process without any variable of any group (the test session sets them; monkeypatch restores them)."""
    for group in (*environment.OFFLINE_RUN, environment.NO_PROGRESS_BARS):
        for key in group:
            monkeypatch.delenv(key, raising=False)
    return monkeypatch


def test_apply_defaults_fills_the_missing_and_keeps_the_users_values(clean_env):
    clean_env.setenv("DO_NOT_TRACK", "false")  # the user's own choice
    applied = environment.apply_defaults(environment.TELEMETRY, environment.LIBRARIES)
    assert os.environ["DO_NOT_TRACK"] == "false" and "DO_NOT_TRACK" not in applied
    assert os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert os.environ["TOKENIZERS_PARALLELISM"] == "false"
    assert set(applied) == ({*environment.TELEMETRY, *environment.LIBRARIES} - {"DO_NOT_TRACK"})
    assert "HF_HUB_OFFLINE" not in os.environ  # a group not asked for stays out


def test_child_env_adds_defaults_without_touching_this_process_or_the_base(clean_env):
    base = {"PATH": "/usr/bin", "HF_HUB_OFFLINE": "0"}
    env = environment.child_env(*environment.OFFLINE_RUN, base=base)
    assert env["HF_HUB_OFFLINE"] == "0"  # the base's value wins over the group's
    assert env["PATH"] == "/usr/bin" and PRODUCT_KEYS <= set(env)
    assert base == {"PATH": "/usr/bin", "HF_HUB_OFFLINE": "0"}
    assert not PRODUCT_KEYS & set(os.environ)
    clean_env.setenv("ONLY_HERE", "1")
    assert environment.child_env(environment.OFFLINE)["ONLY_HERE"] == "1"  # default base: this process


def test_groups_are_read_only_and_must_be_groups():
    with pytest.raises(TypeError):
        environment.OFFLINE["HF_HUB_OFFLINE"] = "0"  # type: ignore[index]
    with pytest.raises(TypeError, match="not a mapping"):
        environment.apply_defaults("OFFLINE")  # type: ignore[arg-type]


def test_no_product_group_takes_the_hub_away():
    """On a user's GPU box the Hub must work: only OFFLINE_RUN (demo, tests, smoke, benchmarks) is offline."""
    assert "HF_HUB_OFFLINE" not in PRODUCT_KEYS
    assert environment.OFFLINE in environment.OFFLINE_RUN


@pytest.mark.parametrize("command, offline", [
    (["demo"], "1"),
    (["train", "--config", "configs/tiny.yaml"], None),
    (["predict", "--test-csv", "test.csv"], None),
    (["stack", "status"], None),
])
def test_the_demo_is_offline_and_the_product_commands_are_not(clean_env, command, offline):
    from arena_pref import cli

    cli.apply_environment(cli.build_parser().parse_args(command))
    assert os.environ.get("HF_HUB_OFFLINE") == offline
    assert all(os.environ.get(key) == value for group in environment.PRODUCT for key, value in group.items())


def test_the_demo_keeps_a_users_hub_setting(clean_env):
    from arena_pref import cli

    clean_env.setenv("HF_HUB_OFFLINE", "0")
    cli.apply_environment(cli.build_parser().parse_args(["demo"]))
    assert os.environ["HF_HUB_OFFLINE"] == "0"
