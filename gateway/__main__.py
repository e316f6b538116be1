"""``python -m gateway``: run one gateway instance (same as ``switchboard gateway``)."""

from gateway.server import main

main()
