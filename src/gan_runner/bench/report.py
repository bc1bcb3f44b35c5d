"""The benchmark's results as JSON and as the Markdown tables the README shows."""

from __future__ import annotations

import json
import os
import platform
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

SCHEMA = 1


def machine(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on, and how busy it was when they started."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    return {
        "device": device.type,
        "device_name": name,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": _version("lightning"),
        "torch_fidelity": _version("torch-fidelity"),
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def stamp(results: dict[str, Any], argv: list[str]) -> dict[str, Any]:
    results["machine"] = {
        **results["machine"],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
    }
    return {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "make bench ARGS='" + " ".join(argv) + "'",
        **results,
    }


def write(results: dict[str, Any], out_dir: Path, name: str) -> tuple[Path, Path]:
    """`<name>.json` and `<name>.md` under out_dir; returns both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{name}.json", out_dir / f"{name}.md"
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    md_path.write_text(markdown(results))
    return json_path, md_path


def _n(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        f"Measured {results['created']} on {m['device_name']} ({m['device']}, "
        f"{m['torch_threads']} torch threads, {m['cpu_count']} cores, load "
        f"{m['loadavg_start'][0]} → {m['loadavg_end'][0]}), torch {m['torch']}, "
        f"lightning {m['lightning']}: `{results['command']}`",
        "",
        "Ratios are medians over interleaved rounds of one side's rate over the other's in the "
        "same round; in brackets, a 95% bootstrap interval of that median.",
        "",
    ]
    for title, section in (
        ("Training throughput: gan-run against a plain PyTorch loop", _cases),
        ("Fast paths, each measured before and after", _ablations),
        ("Data loading", _data),
        ("Metric feature extraction", _metrics),
    ):
        body = section(results)
        if body:
            lines += [f"#### {title}", "", *body, ""]
    failed = [r for key in ("cases", "ablations") for r in results.get(key, []) if "error" in r]
    lines += [f"Failed: `{r['name']}`: {r['error']}" for r in failed]
    return "\n".join(lines) + "\n"


def _cases(results: dict[str, Any]) -> list[str]:
    rows = [
        [
            f"`{c['case']}`",
            c["what"],
            str(c["batch_size"]),
            str(c["n_critic"]),
            _n(c["plain"]["images_per_s"]),
            _n(c["gan_run"]["images_per_s"]),
            _n(c["plain"]["g_steps_per_s"], 2),
            _n(c["gan_run"]["g_steps_per_s"], 2),
            f"**{c['ratio']:.3f}**{_ci(c.get('ratio_ci95'))}",
            f"{_n(c['peak_mib']['plain'], 0)} / {_n(c['peak_mib']['gan_run'], 0)}",
        ]
        for c in results.get("cases", [])
        if "error" not in c
    ]
    header = ["case", "what", "batch", "n_critic", "plain img/s", "gan-run img/s"]
    header += ["plain G/s", "gan-run G/s", "ratio", "peak MiB plain / gan-run"]
    return _table(header, rows) if rows else []


def _ci(interval: list[float] | None) -> str:
    return "" if not interval else f" ({interval[0]:.3f}–{interval[1]:.3f})"


def _ablations(results: dict[str, Any]) -> list[str]:
    rows = [
        [
            a["name"],
            f"`{a['case']}`",
            a["side"],
            a["before_label"],
            a["after_label"],
            _n(a["before"]["images_per_s"]),
            _n(a["after"]["images_per_s"]),
            f"**{a['speedup']:.3f}**{_ci(a.get('speedup_ci95'))}",
        ]
        for a in results.get("ablations", [])
        if "error" not in a
    ]
    header = ["fast path", "case", "side", "before", "after", "before img/s", "after img/s"]
    return _table([*header, "after / before"], rows) if rows else []


def _data(results: dict[str, Any]) -> list[str]:
    rows = [
        [d["path"], str(d["batch_size"]), _n(d["images_per_s"], 0)]
        for d in results.get("data", [])
    ]
    return _table(["path", "batch", "images/s"], rows) if rows else []


def _metrics(results: dict[str, Any]) -> list[str]:
    rows = [
        [
            e["extractor"],
            f"{e['n_images']} at {e['resolution']}² (batch {e['batch_size']})",
            _n(e["ours"]["images_per_s"], 2),
            _n(e["torch_fidelity"]["images_per_s"], 2),
            f"**{e['ratio']:.3f}**",
        ]
        for e in results.get("metrics", [])
    ]
    header = ["extractor", "images", "ours img/s", "torch-fidelity img/s", "ratio"]
    return _table(header, rows) if rows else []
