"""The WebSocket gateway: streams each topic's events (a merchant's, the exchange desk's, one
exchange request's) from Redis to its dashboards, gaplessly.

* :mod:`gateway.protocol` — close codes and the messages on the wire.
* :mod:`gateway.admission` — Origin checks, handshake rate limits and connection caps.
* :mod:`gateway.redis_feed` — one Redis pub/sub connection per instance, with reconnects.
* :mod:`gateway.hub` — topic feeds: shared subscriptions, ordering, gap fills, fan-out.
* :mod:`gateway.server` — the ``websockets`` server, sessions, health, metrics and shutdown.

It reads Redis and Postgres and writes nothing but its own alert row.
"""
