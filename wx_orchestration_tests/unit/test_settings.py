"""One configuration surface: each component's variables, validated at start in one line, and the
timing rule that keeps healthy claims from being taken (`core.timing`)."""

from __future__ import annotations

import pytest

from wx_orchestration.core.timing import ClaimTimingError, check_fast_path, check_lease
from wx_orchestration.settings import LiveSettings, Settings, SettingsError

KEY = "lml-key-never-shown"
DATABASE_URL = "postgresql://wx:db-password-never-shown@db:5432/wxyc"


def test_defaults_need_nothing_set() -> None:
    settings = Settings.from_env({})
    assert settings.lml.timeout_s == 10
    assert settings.budget.burst == 50
    assert settings.enrich.max_budget_wait_s == 30
    assert settings.database.station_schema == "wxyc_schema"
    assert settings.live.cors_origins == ("*",)
    assert settings.sidecar.port == 8686


def test_each_component_reads_its_documented_variables() -> None:
    settings = Settings.from_env(
        {
            "DATABASE_URL": DATABASE_URL,
            "LIBRARY_METADATA_URL": "https://lml.example.org/api/v1/",
            "LML_API_KEY": KEY,
            "LML_RATE_PER_SECOND": "2.5",
            "WX_ENRICH_CONSUMERS": "2",
            "WX_LIVE_CORS_ORIGINS": "https://wxyc.org, https://dj.wxyc.org",
            "WX_SIDECAR_READYZ_DETAILS": "1",
            "WX_FLOWSHEET_MAX_LEAD_S": "0",
        }
    )
    assert settings.database.url == DATABASE_URL
    assert settings.lml.url == "https://lml.example.org"
    assert settings.lml.api_key.get_secret_value() == KEY
    assert settings.budget.rate_per_second == 2.5
    assert settings.enrich.consumers == 2
    assert settings.live.cors_origins == ("https://wxyc.org", "https://dj.wxyc.org")
    assert settings.sidecar.readyz_details is True
    assert Settings.from_env({"WX_LOG_LEVEL": "debug"}).sidecar.log_level == "DEBUG"
    assert settings.database.max_lead_s == 0


def test_an_empty_variable_is_an_unset_one_except_cors_which_it_turns_off() -> None:
    assert Settings.from_env({"LML_TIMEOUT_S": ""}).lml.timeout_s == 10
    assert LiveSettings.from_env({"WX_LIVE_CORS_ORIGINS": ""}).cors_origins == ()


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"LML_TIMEOUT_S": "soon"}, "LML_TIMEOUT_S: Input should be a valid number"),
        ({"LML_LIVE_RESERVE": "1"}, "LML_LIVE_RESERVE: Input should be less than 1"),
        ({"WX_LIVE_QUEUE_BYTES": "10"}, "WX_LIVE_QUEUE_BYTES"),
        ({"WX_SIDECAR_PORT": "70000"}, "WX_SIDECAR_PORT"),
        ({"WXYC_SCHEMA_NAME": "Robert'); DROP"}, "not a plain lower-case SQL identifier"),
        ({"WX_FLOWSHEET_MAX_LEAD_S": "2"}, "leaves no room for a claim"),
        ({"WX_SIDECAR_READYZ_DETAILS": "yes"}, "WX_SIDECAR_READYZ_DETAILS: Value error, use 1"),
        ({"WX_LOG_LEVEL": "verbose"}, "WX_LOG_LEVEL: Input should be 'DEBUG'"),
    ],
)
def test_a_bad_value_is_one_line_naming_its_variable(env: dict[str, str], names: str) -> None:
    with pytest.raises(SettingsError, match=names) as caught:
        Settings.from_env(env)
    assert "\n" not in str(caught.value)


def test_secrets_stay_out_of_errors_and_reprs() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"LML_API_KEY": KEY, "DATABASE_URL": DATABASE_URL, "LML_BURST": "0"})
    assert KEY not in str(caught.value)
    settings = Settings.from_env({"LML_API_KEY": KEY, "DATABASE_URL": DATABASE_URL})
    assert KEY not in repr(settings)
    assert "db-password-never-shown" not in repr(settings)


def test_the_claim_timing_rule_names_every_part() -> None:
    # Only the sidecar's fast path holds entries: other processes load these values unchecked.
    settings = Settings.from_env({"WX_ENRICH_MAX_BUDGET_WAIT_S": "40", "LML_TIMEOUT_S": "10"})
    with pytest.raises(SettingsError) as caught:
        settings.check_timing()
    message = str(caught.value)
    assert message.startswith("the reclaim idle (60 s) must be longer than")
    for part in ("the gather window (10 s)", "WX_ENRICH_MAX_BUDGET_WAIT_S (40 s)", "LML_TIMEOUT_S"):
        assert part in message
    assert "= 65 s" in message
    # A longer reclaim idle (a sidecar flag) makes room for a longer wait.
    settings.check_timing(reclaim_idle_s=120)
    Settings.from_env({"WX_ENRICH_MAX_BUDGET_WAIT_S": "30", "LML_TIMEOUT_S": "14"}).check_timing()


@pytest.mark.parametrize(
    ("lease_s", "lml_timeout_s", "fits"),
    [(60, 30, True), (60, 31, False), (30, 25, False), (120, 90, True)],
)
def test_a_backlog_claim_ends_inside_the_sweeps_lease(
    lease_s: float, lml_timeout_s: float, fits: bool
) -> None:
    if fits:
        check_lease(lease_s, lml_timeout_s)
    else:
        with pytest.raises(ClaimTimingError, match=rf"lease_s \({lease_s:g} s\) must be longer"):
            check_lease(lease_s, lml_timeout_s)


def test_the_fast_path_rule_counts_the_finalize_margin() -> None:
    check_fast_path(max_budget_wait_s=30, lml_timeout_s=14.9)
    with pytest.raises(ClaimTimingError, match="a 5 s margin = 60 s"):
        check_fast_path(max_budget_wait_s=30, lml_timeout_s=15)
