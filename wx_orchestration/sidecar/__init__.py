"""The always-on sidecar: CDC bridge, stream consumers and their HTTP face. Never imports Dagster.

Data-flow order for a newcomer: `bridge.py` (NOTIFY → `wx:cdc`), `consumer.py` (the consumer
group runtime every reading role shares), `eventlog.py` (one such role), `runtime.py` (process
lifecycle), `roles.py` (which roles exist and how they plug in).
"""
