"""Faust agents. `register_all` wires every agent into an app made by streams.app.create_app."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import faust

    from models.clusters import ClusterSet
    from streams.app import AppContext


def register_all(app: "faust.App", context: "AppContext", clusters: "ClusterSet | None") -> None:
    from agents import ingest, knowledge_sync, pair_refresh, profiles, recommender, transitions

    ingest.register(app, context)
    if clusters is not None:
        runtime = transitions.register(app, context, clusters)
        knowledge_sync.register(app, context, clusters, runtime)
        user_profiles = profiles.register(app, context)
        if context.settings.recommendations_enabled:
            services = recommender.register(app, context, clusters, runtime, user_profiles)
            pair_refresh.register(app, context, services)  # re-infers only with pair_refresh_enabled
