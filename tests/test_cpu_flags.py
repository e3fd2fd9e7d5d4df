"""maskgen's default XLA:CPU flags (maskgen/__init__.py): added once, never over the user's own."""

import importlib.metadata

import pytest

import maskgen

FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_dot"


@pytest.fixture
def jaxlib_0_10(monkeypatch):
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.10.2")


def test_flag_is_appended_to_the_users_flags_once(jaxlib_0_10):
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    assert maskgen.set_cpu_xla_flags(env) == [FLAG]
    assert env["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=8 {FLAG}"
    assert maskgen.set_cpu_xla_flags(env) == []  # already there: nothing doubled
    assert env["XLA_FLAGS"].count("ynn_fusion_type") == 1


def test_a_user_value_wins_and_the_switch_turns_it_off(jaxlib_0_10):
    env = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=+individual_dot"}
    assert maskgen.set_cpu_xla_flags(env) == [] and "+individual_dot" in env["XLA_FLAGS"]
    env = {"MASKGEN_XLA_CPU_FLAGS": "0"}
    assert maskgen.set_cpu_xla_flags(env) == [] and "XLA_FLAGS" not in env


def test_other_jaxlib_versions_get_nothing(monkeypatch):
    # An unknown flag in XLA_FLAGS aborts JAX at start-up, so only the measured versions get it.
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.11.0")
    env = {}
    assert maskgen.set_cpu_xla_flags(env) == [] and env == {}


def test_this_process_runs_with_the_flag():
    import os

    assert FLAG in os.environ.get("XLA_FLAGS", "") or os.environ.get("MASKGEN_XLA_CPU_FLAGS") == "0"
