import os

pytest_plugins = [
    "wx_orchestration_tests.servers",
    "wx_orchestration_tests.lml_fixtures",
    "wx_orchestration_tests.scripted_lml",
]

# Tests claim and finalize many times a second; paced, each would wait a second. Pacing still
# runs (lock, read, move) but never waits, except where a test asks for it (test_paced_writes,
# the station day).
os.environ.setdefault("WX_FLOWSHEET_MAX_LEAD_S", "0")
