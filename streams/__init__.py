"""Kafka side of interest-explorer: settings, topics and records, codec, the Faust app, producers and the CLI."""
