"""Faust agents. `register_all` wires every agent into an app made by streams.app.create_app."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import faust

    from streams.app import AppContext


def register_all(app: "faust.App", context: "AppContext") -> None:
    from agents import ingest, transitions

    ingest.register(app, context)
    transitions.register(app, context)
