"""What runs the embedded development stack: ``switchboard dev``, the tests and the benchmarks.

Backing services from installed wheels (``postgres``, ``redis``, ``temporal``) and the SMTP sink
(``mailsink``), Switchboard's own processes and how settings reach them (``processes``), free
ports for a whole stack (``ports``) and the dev supervisor (``supervisor``). Importing it starts
nothing.
"""
