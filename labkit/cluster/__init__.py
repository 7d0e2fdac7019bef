"""A local multi-node cluster, started apart from the notebooks, the way a cluster's machines run it.

``up()`` starts a supervisor that owns Ray nodes (``ray start --head`` / ``--address``, token
auth), Redis and RabbitMQ, Celery workers on their own "hosts", TorchServe and TF Serving;
``torchrun.launch()`` runs one torchrun launcher per "node"; ``fingerprint`` hashes what must be
identical on every node. CLI: ``labkit cluster up|status|down``. Used in 04, 07, tests/test_cluster.py.
"""

from labkit.cluster.harness import Cluster, current, up

__all__ = ["Cluster", "current", "up"]
