"""The fleet control plane: device inventory, enrollment and signed reports, sketches.

Devices enroll with an operator's token and an Ed25519 key of their own, then sign every
report (installed versions, the last update cycle, health-gate figures, hardware, and
latency and drift as KLL sketches). The service (``edgeinfer fleet serve``) verifies and
stores them in SQLite or PostgreSQL. It can see the fleet but cannot make a device install
anything: models reach devices only through the TUF repository (the fleet trust ADR in
docs/adr/ says why).

Modules: ``reports`` (wire format, signatures), ``sketches``, ``store`` (+ ``migrations``),
``ingest`` (device requests), ``inventory`` (operator queries), ``api``, ``server``,
``client`` (the device side); staged rollouts: ``rollouts`` (the rules, pure, and the
read side), ``rollout_service`` (decisions under a row lock), ``rollout_docs`` (the signed
document devices verify), ``rollout_api``.
"""

from __future__ import annotations

import importlib.util

from edgeinfer.errors import MissingDependencyError

# found, not imported: the sketch parser's child process imports this package too
for _module in ("sqlalchemy", "alembic", "datasketches", "cryptography", "pydantic"):
    if importlib.util.find_spec(_module) is None:
        raise MissingDependencyError(_module, "fleet", "the fleet control plane")
