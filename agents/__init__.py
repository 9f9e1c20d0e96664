"""Faust agents, each a small class with its dependencies injected, wired into an app by streams/app.py:

* ingest (agents/ingest.py): validation, dead letters, rerouting, the partition state (agents/state.py);
* knowledge sync (agents/knowledge_sync.py): changed counts to the LanceDB knowledge store;
* recommender (agents/recommender.py, agents/serving.py): requests to grounded recommendations;
* pair refresher and model watcher (agents/pair_refresh.py).

agents/batching.py gives them one event per fetched run of a partition; agents/outbox.py, agents/acks.py and
agents/health.py are how their outputs are delivered, their inputs acked, and the worker stopped when it must.
"""
