"""``labkit doctor``: one screen on what this machine has for the lab, and how to get what it lacks.

Each component, how it is found and which notebook sections it enables come from ``labkit.needs``:
a missing one is listed with the sections it disables, in the words those sections print when
they skip. Used by the README's Troubleshooting section.
"""

from __future__ import annotations

from dataclasses import dataclass

from labkit import needs

__all__ = ["Check", "checks", "render"]


@dataclass(frozen=True)
class Check:
    """One component: is it here, what was found (or why not), how to get it, what it disables."""

    component: str
    ok: bool
    found: str
    how_to_get: str
    disables: tuple[str, ...]  # "06 · §5 Redis vs RabbitMQ, the RabbitMQ half: ...", the notebooks' words


def checks() -> list[Check]:
    """Check every component in ``labkit.needs`` now."""
    out = []
    for key, comp in needs.COMPONENTS.items():
        st = needs.status(key)
        where = [f"{'notebook ' if s.notebook.isdigit() else ''}{s.notebook} · {s.words}" for s in needs.sections_of(key)]
        out.append(Check(comp.name, st.ok, str(st.found.where) if st.ok else st.found.missing, needs.how_to_get(key), tuple(where)))
    return out


def render(measure: bool = True) -> str:
    """The doctor's screen as text: machine first, then one line per component."""
    from labkit import config
    from labkit.runtime import hardware

    info = hardware.report()
    lines = ["labkit doctor", "=" * 60]
    for key in ("labkit", "python", "torch", "platform", "cpu", "cores", "torch_threads", "device", "gpus"):
        lines.append(f"{key:>14}: {info[key]}")
    if "gpu_names" in info:
        lines.append(f"{'gpu names':>14}: {', '.join(info['gpu_names'])}")
    s = config.settings()
    lines.append(f"{'mode':>14}: {'fast' if s.fast else 'full'}{' strict' if s.strict else ''}; cache {s.cache_dir}")
    if s.external:
        lines.append(f"{'external':>14}: {', '.join(s.external)}")
    if measure:
        peaks = hardware.peak_gflops(size=512, repeats=3)
        lines.append(f"{'peak fp32':>14}: " + ", ".join(f"{n} thread{'s' if n > 1 else ''} {g:.0f} GFLOP/s" for n, g in peaks.items()))
    lines += ["", "components (labkit.needs)", "-" * 60]
    for c in checks():
        lines.append(f"{'ok ' if c.ok else '-- '}{c.component:<22} {c.found}")
        if not c.ok:
            for where in c.disables:
                lines.append(f"    disables: {where}")
            lines.append(f"    get it: {c.how_to_get}")
    return "\n".join(lines)
