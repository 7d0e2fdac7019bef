"""labkit's TF-Serving-API server: TensorFlow Serving's documented REST and gRPC API, in Python.

No ``tensorflow_model_server`` binary can be installed here (it ships as a Docker image or a
Debian package from Google's own repository), so notebook 10 runs this protocol-compatible
stand-in instead. It loads real SavedModel versions from ``<base>/<model>/<version>``, answers
the official ``tensorflow_serving.apis`` protos over gRPC and TF Serving's JSON over REST, applies
version policies and labels, batches requests server-side, and picks up new versions while it
runs. Client code is exactly what you would write against the real server; when a real one is
on PATH or TFSERVING_URL is set, ``labkit.services.tfserving`` uses that instead.

    labkit tfserving --port=8500 --rest_api_port=8501 --model_name=digits --model_base_path=/models/digits
"""

from __future__ import annotations

__all__: list[str] = []
