"""The one ``labkit`` command: doctor, bench, services, student.

    labkit doctor                     what this machine has, and how to get what it lacks
    labkit bench baseline --fast      run a benchmark; prints target lines, writes JSON
    labkit services --list|--stop-all processes labkit started
    labkit student OUT_DIR            write the student edition of the notebooks
    labkit tfserving --port=G --rest_api_port=P --model_name=M --model_base_path=DIR
    labkit gpu-check --out DIR        the GPU paths in one capped run on a GPU machine (--needs, --list)
    labkit cluster up|status|down     a local multi-node cluster (Ray nodes, brokers, Celery hosts, servers)
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from labkit.bench import BENCHMARKS
from labkit.errors import LabkitError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Model Parallel Inference lab helpers.")


@app.command()
def doctor(measure: bool = typer.Option(True, help="Measure peak matmul GFLOP/s (a few seconds).")) -> None:
    """Python, torch, devices, cores, threads, peak GFLOP/s, and each service's availability."""
    from labkit import doctor as doc

    typer.echo(doc.render(measure=measure))


@app.command()
def bench(
    name: str = typer.Argument(..., help=", ".join(BENCHMARKS) + ", or all"),
    fast: bool = typer.Option(False, "--fast", help="Small sizes: the same code paths, quicker."),
    json_path: Path | None = typer.Option(None, "--json", help="Write results here (default: bench-<name>.json in the cache dir)."),
) -> None:
    """Run benchmarks side by side and print one target line per figure."""
    from labkit import bench as b
    from labkit import config

    names = [n for n, ok in b.available().items() if ok] if name == "all" else [name]
    results = []
    for n in names:
        typer.echo(f"== bench {n}{' (fast)' if fast else ''}")
        r = b.run(n, fast=fast)
        for line in r.lines():
            typer.echo(line)
        results.append(r)
    out = b.write_json(results, json_path or config.cache_dir("bench") / f"bench-{name}.json")
    typer.echo(f"results written to {out}")
    missed = [t.line() for r in results for t in r.targets if t.met is False]
    if missed:
        typer.echo(f"{len(missed)} target(s) missed", err=True)
        raise typer.Exit(1)


@app.command()
def services(
    stop_all: bool = typer.Option(False, "--stop-all", help="Stop every process labkit started (by pid)."),
) -> None:
    """List (or stop) the servers, brokers and workers labkit started."""
    from labkit.runtime import process

    if stop_all:
        stopped = process.stop_all()
        typer.echo("stopped: " + ", ".join(stopped) if stopped else "nothing to stop")
        return
    rows = process.running()
    if not rows:
        typer.echo("no labkit process is running")
    for r in rows:
        typer.echo(f"{r['name']:<20} pid {r['pid']:<8} {' '.join(r['cmd'])[:80]}")


@app.command()
def student(
    out_dir: Path = typer.Argument(..., help="Where to write the student edition."),
    src: Path = typer.Option(Path("notebooks"), help="Folder of the instructor notebooks."),
    paired: bool = typer.Option(False, "--paired", help="Write what `make test` runs: each lesson once, then its exercises unsolved, then solved."),
) -> None:
    """Write the student edition: solutions replaced by stubs, outputs cleared, checks kept."""
    from labkit.exercises.student import make_paired_edition, make_student_edition

    for p in (make_paired_edition if paired else make_student_edition)(src, out_dir):
        typer.echo(f"wrote {p}")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []})
def tfserving(ctx: typer.Context) -> None:
    """TF-Serving-API server with tensorflow_model_server's flags (--port, --rest_api_port, --model_name, --model_base_path, ...; --help for all)."""
    from labkit.apps.tfserving.main import main as serve

    serve(list(ctx.args))


@app.command("gpu-check", context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []})
def gpu_check(ctx: typer.Context) -> None:
    """Run the GPU paths (doctor, benchmarks, notebooks, nccl cells) capped, and write a report (--help for all)."""
    from labkit.gpu_check import main as run

    raise typer.Exit(run(list(ctx.args)))


@app.command()
def cluster(
    action: str = typer.Argument(..., help="up, status or down"),
    ray_nodes: int = typer.Option(2, help="Ray nodes (a head and N-1 workers); 0: no Ray."),
    celery_workers: int = typer.Option(2, help="Celery workers per broker, each on its own host folder; 0: no Celery."),
    rabbitmq: bool = typer.Option(True, help="A RabbitMQ broker (and its workers) besides Redis."),
    torchserve: bool = typer.Option(True, help="A TorchServe server."),
    tfserving: bool = typer.Option(True, help="A TF Serving server."),
) -> None:
    """Start, check or stop a local multi-node cluster; `up` prints the export lines a notebook needs."""
    from labkit.cluster import harness

    if action == "up":
        if harness.current() is not None:
            raise LabkitError("a cluster is already running: labkit cluster down first")
        started = harness.up(ray_nodes, 1, celery_workers, rabbitmq, torchserve, tfserving, detach=True)
        typer.echo(f"# {started}")
        typer.echo(started.exports())
        return
    c = harness.current()
    if c is None:
        typer.echo("no local cluster is running")
        raise typer.Exit(0 if action == "down" else 1)
    if action == "status":
        health = c.health()
        for name, verdict in health.items():
            typer.echo(f"{name:<22} {verdict}")
        raise typer.Exit(0 if all(v == "ok" for v in health.values()) else 1)
    if action == "down":
        pids = c.pids()
        killed = c.down()
        typer.echo(f"stopped {len(pids)} processes" + (f" ({len(killed)} needed SIGKILL)" if killed else "") + "; none left")
        return
    raise LabkitError(f"unknown action {action!r}: use up, status or down")


def main() -> None:
    """Entry point: run the CLI, turning labkit's own errors into one clear line."""
    try:
        app()
    except LabkitError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
