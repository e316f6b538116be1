"""Switchboard benchmarks: ingress and pipeline figures, each against a baseline of the same run.

``./run bench`` (``python -m benchmarks``) starts its own embedded Postgres, Redis and Temporal
dev server on free ports in a temp dir, runs the api and the worker as separate processes, offers
load from this process, and writes the table to ``benchmarks/results/latest.md``.

Modules:

* :mod:`benchmarks.ingress` — ack latency and throughput of ``POST /webhooks/{partner}`` at a fixed
  offered rate and at saturation, against a bare signature-checking app
  (:mod:`benchmarks.bare_ingress`).
* :mod:`benchmarks.pipeline` — receipt-to-published latency, end-to-end throughput of a burst and
  Temporal cost per webhook, against a no-op workflow on the same Temporal server
  (:mod:`benchmarks.temporal_baseline`).
* :mod:`benchmarks.deliveries` — outbound merchant webhooks to a stub merchant
  (:mod:`benchmarks.stub_merchant`): deliveries/s and first-attempt latency with 0 % and 20 %
  failing attempts, and a dead endpoint beside healthy ones, against the pipeline alone and the
  no-op workflow.
* :mod:`benchmarks.stack`, :mod:`benchmarks.harness` — starting the system, CPU accounting and
  repeated measurement; :mod:`benchmarks.pacing`, :mod:`benchmarks.http_load`,
  :mod:`benchmarks.workload` — offering load; :mod:`benchmarks.stats`,
  :mod:`benchmarks.actions`, :mod:`benchmarks.report` — turning results into the table.
"""
