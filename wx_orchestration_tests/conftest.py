pytest_plugins = [
    "wx_orchestration_tests.servers",
    "wx_orchestration_tests.lml_fixtures",
    "wx_orchestration_tests.scripted_lml",
]
