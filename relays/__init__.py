"""Relays: worker-hosted loops that turn durable Postgres outbox rows into Temporal work."""
