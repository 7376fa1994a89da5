"""The performance report of ``fastgen bench``: pytest-benchmark JSON -> a markdown table and a PNG
bar chart of speedups (Pillow only).

The benchmark harness (``benchmarks/harness.py``, ``compare``) records in each benchmark's
``extra_info``: ``device``, ``threads``, ``allocator``, ``fastgen_ms`` (interleaved median), for every
baseline ``B`` (``eager``, ``compile`` = torch.compile of the eager formula, ``diffusers``, ``sdpa``,
...) ``B_ms`` and ``speedup_vs_B`` (= B time / fastgen time), and for memory-bound ops
``fastgen_GBps``, ``copy_GBps`` and ``pct_of_copy_bw``; on CUDA ``fastgen_peak_MB`` / ``B_peak_MB``
(extra device memory of one call). This module only reads those fields:

    data = load_benchmark_json("bench.json")
    rows = benchmark_rows(data)
    text = markdown_report(rows, machine=machine_summary(data))
    speedup_chart(rows, "chart.png")

A benchmark run without timing (``--benchmark-disable``) has no ``fastgen_ms``; its row shows
dashes.
"""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

PathLike = Union[str, os.PathLike]

# Baselines with their own columns, in this order; any other baseline found in extra_info
# (diffusers, sdpa, aten_flash, ...) gets a column after them.
MAIN_BASELINES = ("eager", "compile")
BASELINE_TITLES = {"eager": "eager", "compile": "torch.compile", "diffusers": "diffusers", "sdpa": "SDPA",
                   "aten_flash": "ATen flash"}
_GROUP_SUFFIX = re.compile(r"\s*\[[^\]]*alloc=[^\]]*\]\s*$")


class ReportError(ValueError):
    """A benchmark JSON file that cannot be reported (the message names the file)."""


# ----------------------------------------------------------------------------- reading
def load_benchmark_json(path: PathLike) -> Dict[str, Any]:
    """The parsed pytest-benchmark JSON at ``path``; ReportError if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise ReportError(f"{str(path)!r} does not exist (or is not a file)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportError(f"{str(path)!r} is not readable JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise ReportError(f"{str(path)!r} is not a pytest-benchmark JSON file (no 'benchmarks' list)")
    for i, b in enumerate(data["benchmarks"]):
        if not isinstance(b, dict) or not isinstance(b.get("name"), str):
            raise ReportError(f"{str(path)!r}: benchmarks[{i}] has no 'name'")
        if not isinstance(b.get("extra_info", {}), dict):
            raise ReportError(f"{str(path)!r}: benchmarks[{i}] ({b['name']}) has a non-dict 'extra_info'")
    return data


def _num(v) -> Optional[float]:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _label(b: Dict[str, Any]) -> str:
    group = b.get("group") or ""
    group = _GROUP_SUFFIX.sub("", group).strip()
    return group or b["name"]


def benchmark_rows(data: Dict[str, Any]) -> List[Dict[str, Any]]:
    """One dict per benchmark: ``label`` (the benchmark's group without its ``[device, alloc]`` tag,
    made unique with the test's parameters), ``name``, ``device``, ``allocator``, ``threads``,
    ``fastgen_ms``, ``baselines`` ({name: {"ms", "speedup", "peak_MB"}}), ``GBps``, ``pct_copy``,
    ``peak_MB`` (None where not recorded), ``impl``."""
    rows = []
    for b in data["benchmarks"]:
        info = b.get("extra_info") or {}
        names = sorted({k[:-3] for k in info if k.endswith("_ms") and k != "fastgen_ms" and k[:-3]},
                       key=lambda n: (MAIN_BASELINES.index(n) if n in MAIN_BASELINES else len(MAIN_BASELINES), n))
        fast = _num(info.get("fastgen_ms"))
        baselines = {}
        for n in names:
            ms = _num(info.get(f"{n}_ms"))
            sp = _num(info.get(f"speedup_vs_{n}"))
            if sp is None and ms is not None and fast:
                sp = ms / fast
            baselines[n] = {"ms": ms, "speedup": sp, "peak_MB": _num(info.get(f"{n}_peak_MB"))}
        device = info.get("device") or (b.get("params") or {}).get("device") or "?"
        rows.append({"label": _label(b), "name": b["name"], "param": b.get("param"), "device": str(device),
                     "allocator": info.get("allocator"), "threads": info.get("threads"), "fastgen_ms": fast,
                     "baselines": baselines, "GBps": _num(info.get("fastgen_GBps")),
                     "pct_copy": _num(info.get("pct_of_copy_bw")), "peak_MB": _num(info.get("fastgen_peak_MB")),
                     "impl": info.get("impl")})
    seen: Dict[tuple, int] = {}
    for r in rows:
        key = (r["label"], r["device"], r["allocator"])
        seen[key] = seen.get(key, 0) + 1
    for r in rows:
        if seen[(r["label"], r["device"], r["allocator"])] > 1 and r["param"]:
            r["label"] = f"{r['label']} [{r['param']}]"
    return rows


def machine_summary(data: Dict[str, Any]) -> str:
    """One line: CPU, cores, Python, when, and the commit, from pytest-benchmark's machine/commit info."""
    m = data.get("machine_info") or {}
    cpu = m.get("cpu") or {}
    parts = []
    brand = cpu.get("brand_raw") or m.get("processor") or m.get("machine")
    if brand:
        parts.append(f"CPU {brand}" + (f" ({cpu['count']} cores)" if cpu.get("count") else ""))
    if m.get("python_version"):
        parts.append(f"Python {m['python_version']}")
    if data.get("datetime"):
        parts.append(str(data["datetime"])[:19].replace("T", " "))
    c = data.get("commit_info") or {}
    if c.get("id"):
        parts.append(f"commit {str(c['id'])[:10]}{' (dirty)' if c.get('dirty') else ''}")
    return "; ".join(parts)


# ----------------------------------------------------------------------------- markdown
def _ms(v: Optional[float]) -> str:
    if v is None:
        return "–"
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def _baseline_cell(b: Optional[Dict[str, Any]]) -> str:
    if not b or b["ms"] is None:
        return "–"
    return f"{_ms(b['ms'])} ({b['speedup']:.2f}x)" if b["speedup"] is not None else _ms(b["ms"])


def markdown_report(rows: Sequence[Dict[str, Any]], *, title: str = "fastgen benchmarks",
                    machine: str = "", command: str = "") -> str:
    """A markdown table per (allocator, device): benchmark, fastgen ms, each baseline's ms and
    fastgen's speedup over it, GB/s, % of copy bandwidth, peak memory where recorded."""
    lines = [f"# {title}", ""]
    if machine:
        lines += [machine, ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    lines += ["Times are medians in ms (the contenders interleaved in one process); `(Nx)` = baseline time / "
              "fastgen time, so > 1 means fastgen is faster. GB/s counts the bytes the op must move once; "
              "% copy = fastgen's bandwidth over a `dst.copy_(src)` of the same working set in the same run.", ""]
    groups: Dict[Tuple[str, str], List[Dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["allocator"] or "-", r["device"]), []).append(r)
    for (alloc, device), rs in groups.items():
        threads = sorted({str(r["threads"]) for r in rs if r["threads"] is not None})
        head = f"## {device}" + (f", CPU allocator {alloc}" if device.startswith("cpu") and alloc != "-" else "")
        if threads and device.startswith("cpu"):
            head += f", {'/'.join(threads)} threads"
        lines += [head, ""]
        cols = list(MAIN_BASELINES) + sorted({n for r in rs for n in r["baselines"] if n not in MAIN_BASELINES})
        has_mem = any(r["peak_MB"] is not None for r in rs)
        header = ["benchmark", "device", "fastgen ms"] + [f"{BASELINE_TITLES.get(c, c)} ms (speedup)" for c in cols]
        header += ["GB/s", "% copy"] + (["peak MB (fastgen)"] if has_mem else [])
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join("---" for _ in header) + "|")
        for r in rs:
            cells = [r["label"].replace("|", "\\|"), r["device"], _ms(r["fastgen_ms"])]
            cells += [_baseline_cell(r["baselines"].get(c)) for c in cols]
            cells += [f"{r['GBps']:.1f}" if r["GBps"] is not None else "–",
                      f"{r['pct_copy']:.0f}%" if r["pct_copy"] is not None else "–"]
            if has_mem:
                cells.append(f"{r['peak_MB']:.1f}" if r["peak_MB"] is not None else "–")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        sp = [r["baselines"]["eager"]["speedup"] for r in rs
              if r["baselines"].get("eager") and r["baselines"]["eager"]["speedup"]]
        if sp:
            geo = math.exp(sum(math.log(s) for s in sp) / len(sp))
            slower = sum(s < 1 for s in sp)
            lines += [f"Speedup over eager PyTorch: geometric mean {geo:.2f}x over {len(sp)} benchmarks "
                      f"(min {min(sp):.2f}x, max {max(sp):.2f}x; {slower} slower than eager)."
                      .replace("over 1 benchmarks", "over 1 benchmark"), ""]
    if not rows:
        lines += ["(no benchmarks in the file)", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- chart
_COLOURS = {"eager": (214, 96, 77), "compile": (67, 147, 195)}
_EXTRA_COLOURS = [(120, 180, 90), (160, 110, 190), (230, 170, 60), (110, 110, 110)]


def speedup_chart(rows: Sequence[Dict[str, Any]], path: PathLike, *, title: str = "fastgen speedup",
                  max_rows: int = 80) -> Tuple[int, int]:
    """A horizontal bar chart of fastgen's speedup over each baseline, one group of bars per
    benchmark and device, on a log2 axis with a line at 1x (left of it fastgen is slower). Writes a
    PNG at ``path`` (parent folders created); returns (width, height)."""
    from PIL import Image, ImageDraw

    from .images import pil_font as _font
    from .images import pil_to_pixels as _to_tensor
    from .images import save_png

    items = [r for r in rows if any(b["speedup"] for b in r["baselines"].values())][:max_rows]
    names = []
    for r in items:
        for n, b in r["baselines"].items():
            if b["speedup"] and n not in names:
                names.append(n)
    names.sort(key=lambda n: (MAIN_BASELINES.index(n) if n in MAIN_BASELINES else len(MAIN_BASELINES), n))
    colours = {n: _COLOURS.get(n) or _EXTRA_COLOURS[i % len(_EXTRA_COLOURS)] for i, n in enumerate(names)}
    font, small, big = _font(13), _font(11), _font(16)
    bar_h, gap = 12, 10
    labels = [f"{r['label']} [{r['device']}" + (f", alloc={r['allocator']}" if r["allocator"] not in (None, "default")
                                                 else "") + "]" for r in items]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max([int(probe.textlength(t, font=font)) for t in labels] + [120])
    text_w = min(text_w, 560)
    plot_w, left, top = 520, text_w + 20, 60
    group_h = [max(1, sum(1 for b in r["baselines"].values() if b["speedup"])) * bar_h + gap for r in items]
    height = top + sum(group_h) + 50 if items else top + 60
    width = left + plot_w + 90
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    d.text((10, 10), title, fill="black", font=big)
    x = 10 + int(d.textlength(title, font=big)) + 20
    for n in names:  # legend
        d.rectangle([x, 16, x + 12, 28], fill=colours[n])
        t = f"vs {BASELINE_TITLES.get(n, n)}"
        d.text((x + 16, 14), t, fill="black", font=font)
        x += 16 + int(d.textlength(t, font=font)) + 18
    if not items:
        d.text((10, top), "no timed benchmarks (run with --benchmark-only)", fill="black", font=font)
        return save_png(_to_tensor(img), path)

    sps = [b["speedup"] for r in items for b in r["baselines"].values() if b["speedup"]]
    lo = math.floor(min(0.0, math.log2(min(sps))))
    hi = math.ceil(max(1.0, math.log2(max(sps))))
    if hi - lo < 2:
        hi = lo + 2

    def xpos(s: float) -> int:
        return left + int(round((math.log2(s) - lo) / (hi - lo) * plot_w))

    bottom = height - 40
    for e in range(lo, hi + 1):  # grid lines at powers of two
        gx = xpos(2.0 ** e)
        d.line([gx, top - 6, gx, bottom], fill=(225, 225, 225) if e else (0, 0, 0), width=1 if e else 2)
        t = f"{2.0 ** e:g}x"
        d.text((gx - d.textlength(t, font=small) / 2, bottom + 6), t, fill="black", font=small)
    y = top
    for r, label, gh in zip(items, labels, group_h):
        shown = label
        while d.textlength(shown, font=font) > text_w and len(shown) > 4:
            shown = shown[:-2]
        if shown != label:
            shown = shown[:-1] + "…"
        d.text((10, y + (gh - gap) / 2 - 7), shown, fill="black", font=font)
        for n in names:
            b = r["baselines"].get(n)
            if not b or not b["speedup"]:
                continue
            x0, x1 = sorted((xpos(1.0), xpos(b["speedup"])))
            d.rectangle([x0, y, max(x1, x0 + 1), y + bar_h - 2], fill=colours[n])
            t = f"{b['speedup']:.2f}x"
            d.text((max(x1, xpos(1.0)) + 4, y - 1), t, fill="black", font=small)
            y += bar_h
        y += gap
    d.text((left, height - 18), "speedup = baseline time / fastgen time (log scale; right of the bold line "
           "fastgen is faster)", fill=(80, 80, 80), font=small)
    return save_png(_to_tensor(img), path)


# ----------------------------------------------------------------------------- running the suite
def benchmarks_dir() -> Optional[Path]:
    """The ``benchmarks/`` folder of a source checkout next to this package (None when fastgen is
    installed from a wheel, which does not ship the suite)."""
    d = Path(__file__).resolve().parent.parent / "benchmarks"
    return d if (d / "harness.py").is_file() else None


def benchmark_command(json_path: PathLike, *, keyword: Optional[str] = None, bench_dir: Optional[PathLike] = None,
                      extra: Sequence[str] = ()) -> List[str]:
    """The pytest command that runs the suite and writes pytest-benchmark JSON to ``json_path``."""
    bench_dir = Path(bench_dir) if bench_dir is not None else benchmarks_dir()
    if bench_dir is None:
        raise FileNotFoundError("the benchmark suite (benchmarks/) is not installed with fastgen: run `fastgen bench` "
                                "from a source checkout, or pass --from-json FILE")
    cmd = [sys.executable, "-m", "pytest", str(bench_dir), "--benchmark-only",
           f"--benchmark-json={Path(json_path).resolve()}", "-q"]
    if keyword:
        cmd += ["-k", keyword]
    return cmd + list(extra)


def run_benchmarks(json_path: PathLike, *, keyword: Optional[str] = None, thp_rerun: bool = True,
                   extra: Sequence[str] = ()) -> Tuple[int, List[Path]]:
    """Run the suite in a subprocess (its output goes to this terminal). Returns pytest's exit status
    and the JSON files written: ``json_path`` and, for the CPU huge-page re-run the suite does by
    itself (``benchmarks/conftest.py``), ``json_path + '.thp.json'``."""
    cmd = benchmark_command(json_path, keyword=keyword, extra=extra)
    env = dict(os.environ)
    if not thp_rerun:
        env["FASTGEN_BENCH_NO_THP_RERUN"] = "1"
    Path(json_path).parent.mkdir(parents=True, exist_ok=True)
    for stale in (Path(json_path), Path(str(json_path) + ".thp.json")):  # never report an older run's file
        stale.unlink(missing_ok=True)
    rc = subprocess.run(cmd, cwd=Path(cmd[3]).parent, env=env).returncode
    written = [p for p in (Path(json_path), Path(str(json_path) + ".thp.json")) if p.is_file()]
    return rc, written
