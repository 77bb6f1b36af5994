"""The asset graph reads from where the data comes from (issue: Dagster tells the truth)."""

from __future__ import annotations

from wx_orchestration.definitions import defs


def test_the_station_feeds_the_graph() -> None:
    graph = defs.get_repository_def().asset_graph

    def parents(key: str) -> set[str]:
        (node,) = [graph.get(k) for k in graph.get_all_asset_keys() if k.to_user_string() == key]
        return {p.to_user_string() for p in node.parent_keys}

    assert parents("wx_cdc_stream") == {"flowsheet"}
    assert parents("flowsheet_enrichment") == {"wx_cdc_stream", "lml"}
    assert parents("library_identity") == {"library", "lml"}
    for external in ("flowsheet", "library", "lml"):
        assert not graph.get(
            next(k for k in graph.get_all_asset_keys() if k.to_user_string() == external)
        ).is_materializable
