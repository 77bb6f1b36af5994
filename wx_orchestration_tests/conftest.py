pytest_plugins = [
    "wx_orchestration_tests.servers",
    "wx_orchestration_tests.lml_fixtures",
]
