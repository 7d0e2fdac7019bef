"""labkit: plumbing for the Model Parallel Inference lab.

Layout — one folder per concern (the README's Layout section says the same):

    config, errors      settings from the environment (every LABKIT_* variable); the error tree
    data, plots         data that ships or is generated; the one plot family
    show                labkit.show(): a named region of the source, or a public object's source
    models/             every model and how it is trained and cached (store: cache-or-train and the
                        fit loop; digit_nets, vision, tinygpt, wide: the float32 timing model,
                        savedmodels: Keras → TF SavedModel)
    runtime/            the machine and its processes: hardware, process (managed subprocesses,
                        die_with_parent, pid registry, process trees, assert_nothing_left),
                        environ (patch_environment), cache (files on disk)
    measure/            timing (now, spans, latency stats), load (the one load generator), batching
                        (the batching sweep), probe, verdicts, capstone (the harness), recovery,
                        report (the capstone's table, plots, files, advice)
    patterns/           the four patterns + the process pool, runnable (spawned workers live here)
    apps/               code that runs inside a server process: the Celery tasks, the FastAPI
                        gateway, the model server, the balancer, the TorchServe handler, the
                        TF-Serving-API stand-in (tfserving/); wire: the JSON each server speaks
    services/           start a real component and hand back a handle (url, pid, logs(), stop())
    llm/                serving a language model: decode (greedy, KV cache), kv_cache, paged,
                        trace, engine (static vs continuous batching), sweep, sharded decode
    kube/               Kubernetes: the HPA controller algorithm, the local emulator, kubectl
    bench/              ``labkit bench``: the target format and one module per benchmark
    cluster/            ``labkit cluster up|status|down``: a local multi-node cluster (Ray nodes,
                        brokers, Celery hosts, servers) owned by one supervisor; torchrun per node
    gpu_check/          ``labkit gpu-check``: the GPU paths in one capped run, its wheels, its report
    exercises/          the checks behind each notebook's exercises; the student edition
    needs               every optional component as data: how it is found, how to get it, which
                        notebook sections need it (the skip lines, ``labkit doctor``, the README)
    doctor, cli         ``labkit doctor`` and the ``labkit`` command

Importing labkit is cheap and changes nothing: no torch, no service clients, no directories
created. Import the module you need by name: ``from labkit.runtime import hardware``.
"""

from __future__ import annotations

from labkit.show import show

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "apps",
    "bench",
    "config",
    "data",
    "doctor",
    "errors",
    "exercises",
    "gpu_check",
    "kube",
    "measure",
    "models",
    "needs",
    "patterns",
    "plots",
    "runtime",
    "services",
    "show",
]
