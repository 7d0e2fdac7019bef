"""labkit's stand-in for tensorflow_model_server 2.20.0: TF Serving's REST and gRPC API, in Python.

No ``tensorflow_model_server`` binary can be installed here (it ships as a Docker image or a
Debian package from Google's own repository), so notebook 10 runs this stand-in instead. It
follows **tensorflow_model_server 2.20.0** exactly where a client can tell: routes, verbs, HTTP
status codes, error bodies and gRPC status codes are ported from that tag's
``http_rest_api_handler.cc``, ``http_rest_api_util.cc``, ``http_server.cc``, ``json_tensor.cc``,
``predict_util.cc``, ``get_model_status_impl.cc``, ``get_model_metadata_impl.cc``,
``classifier.cc``/``regressor.cc`` and ``server_core.cc`` (modules ``rest``, ``json_tensor``,
``grpc_api``, ``signatures``, ``registry``, ``status``), and upstream's own test cases are
ported in tests/test_tfserving_upstream.py. Where it cannot be the real server: latency (Python,
not C++), SavedModels only, ``:classify``/``:regress`` are checked as upstream checks them but
not run (501 for a model that has such signatures), TF runtime error texts for shape mismatches. It loads real SavedModel versions from ``<base>/<model>/<version>``, answers
the official ``tensorflow_serving.apis`` protos over gRPC and TF Serving's JSON over REST, applies
version policies and labels, batches requests server-side, and picks up new versions while it
runs. Client code is exactly what you would write against the real server; when a real one is
on PATH or TFSERVING_URL is set, ``labkit.services.tfserving`` uses that instead.

    labkit tfserving --port=8500 --rest_api_port=8501 --model_name=digits --model_base_path=/models/digits
"""

from __future__ import annotations

__all__: list[str] = []
