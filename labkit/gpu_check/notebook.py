"""Run one notebook through nbclient and keep it executed: ``python -m labkit.gpu_check.notebook SRC DST CELL_TIMEOUT_S``.

gpu-check runs this in a child process (so its time cap can kill the kernel with it). The kernel
is this interpreter's ipykernel; the notebook runs in its own folder. The executed copy is written
to DST even when a cell fails; the exit code is 0 when every cell ran, 1 when one raised (its
error is the last line printed), 2 on bad arguments.
"""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["execute", "main"]


def execute(src: Path, dst: Path, cell_timeout_s: int) -> str | None:
    """Execute ``src`` cell by cell into ``dst``; return None, or the failing cell's error in one line."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    nb = nbformat.read(src, as_version=4)
    client = NotebookClient(nb, timeout=cell_timeout_s, kernel_name="python3", resources={"metadata": {"path": str(src.parent)}})
    error = None
    try:
        client.execute()
    except CellExecutionError as exc:
        cell = next((i for i, c in enumerate(nb.cells) if any(o.get("output_type") == "error" for o in c.get("outputs", []))), "?")
        error = f"cell {cell}: {exc.ename}: {str(exc.evalue).splitlines()[0] if exc.evalue else ''}"
    except (CellTimeoutError, DeadKernelError, TimeoutError) as exc:
        error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    finally:
        nbformat.write(nb, dst)
    return error


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3 or not args[2].isdigit():
        print("usage: python -m labkit.gpu_check.notebook SRC DST CELL_TIMEOUT_S", file=sys.stderr)
        return 2
    error = execute(Path(args[0]), Path(args[1]), int(args[2]))
    if error:
        print(error, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
