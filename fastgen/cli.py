"""The ``fastgen`` command line (also ``python -m fastgen``).

    fastgen info [--json]     versions, devices, the compiled extension, and which implementation
                              each fused op uses on CPU and on CUDA (and why not the others)
    fastgen demo [options]    train a small diffusion model and a GAN on the embedded dataset for a few
                              minutes, sample, plot, and time fused vs plain PyTorch (fastgen.demo_train);
                              --quick: the few-second DDIM sampling demo (fastgen.demo)
    fastgen train ddpm ...    train a diffusion U-Net (torchrun-compatible; see fastgen.train.commands)
    fastgen train ldm ...     latent diffusion on a trained VAE's latents (torchrun-compatible)
    fastgen train stylegan .. train a StyleGAN2 / StyleGAN (torchrun-compatible)
    fastgen train vae ...     train a VAE (--adversarial: the VAE-GAN; torchrun-compatible)
    fastgen sample ...        a PNG grid of samples from a training checkpoint (diffusion, latent diffusion, GAN or VAE)
    fastgen bench [options]   run the benchmark suite (or read its JSON) and write a markdown report and
                              a PNG chart of the speedups (see fastgen.report)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch

from . import __version__, _extension, backend

# Environment variables that change what fastgen dispatches to (shown by `info` when set).
DISPATCH_ENV_VARS = ("FASTGEN_BACKEND", "TRITON_INTERPRET", "FASTGEN_NO_JIT", "FASTGEN_FORCE_JIT",
                     "THP_MEM_ALLOC_ENABLE")
DEVICE_TYPES = ("cpu", "cuda")


# ----------------------------------------------------------------------------- info
def _module_version(name: str) -> dict:
    """``{"version": ...}`` for an importable module, else ``{"version": None, "error": why}``."""
    try:
        mod = __import__(name)
    except Exception as exc:  # ImportError, or a broken install raising something else
        return {"version": None, "error": f"{type(exc).__name__}: {exc}"}
    return {"version": getattr(mod, "__version__", "unknown")}


def _cpu_model() -> Optional[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _devices() -> dict:
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    cpu = {"model": _cpu_model(), "cores": os.cpu_count(), "cores_usable": usable,
           "torch_threads": torch.get_num_threads()}
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append({"index": i, "name": p.name, "capability": f"{p.major}.{p.minor}",
                         "memory_gib": round(p.total_memory / 2**30, 1)})
    return {"cpu": cpu, "cuda": gpus}


def _ops_table() -> dict:
    """Per registered op: the impl chosen on each device type (or the error), and every impl's availability."""
    ops = {}
    for name, spec in sorted(backend.registered_ops().items()):
        chosen = {}
        for dev in DEVICE_TYPES:
            try:
                chosen[dev] = {"impl": backend.resolve(name, torch.device(dev)), "error": None}
            except backend.BackendUnavailableError as exc:
                chosen[dev] = {"impl": None, "error": str(exc)}
        impls = {}
        for impl in spec.impls:
            impls[impl] = {}
            for dev in DEVICE_TYPES:
                ok, why = backend.op_impl_available(name, impl, dev)
                impls[impl][dev] = {"available": ok, "reason": None if ok else why}
        ops[name] = {"uses": chosen, "impls": impls,
                     "preference": {k: list(v) for k, v in spec.preference.items()}, "notes": spec.notes}
    return ops


def collect_info() -> dict:
    """Everything ``fastgen info`` reports, as a JSON-serialisable dict."""
    ext = dict(_extension.status())
    ext.setdefault("file", None)
    ext.setdefault("cpu_capability", None)
    ext.setdefault("cpu_stream_threshold", None)
    ext.setdefault("built_with_cuda", None)
    return {
        "fastgen": {"version": __version__, "path": os.path.dirname(os.path.abspath(__file__))},
        "python": {"version": platform.python_version(), "executable": sys.executable,
                   "platform": platform.platform()},
        "torch": {"version": torch.__version__, "cuda": torch.version.cuda,
                  "cuda_available": torch.cuda.is_available()},
        "triton": _module_version("triton"),
        "numpy": _module_version("numpy"),
        "devices": _devices(),
        "extension": ext,
        "env": {k: os.environ[k] for k in DISPATCH_ENV_VARS if k in os.environ},
        "dispatch": backend.forced_backend(),
        "ops": _ops_table(),
    }


def _version_text(entry: dict) -> str:
    return entry["version"] if entry.get("version") else f"not importable ({entry['error']})"


def format_info(info: dict) -> str:
    """The human-readable report of :func:`collect_info`."""
    t, ext, dev = info["torch"], info["extension"], info["devices"]
    lines = [
        f"fastgen {info['fastgen']['version']} ({info['fastgen']['path']})",
        f"python  {info['python']['version']} ({info['python']['executable']}; {info['python']['platform']})",
        f"torch   {t['version']} ({'CUDA ' + t['cuda'] if t['cuda'] else 'CPU build'})",
        f"triton  {_version_text(info['triton'])}",
        f"numpy   {_version_text(info['numpy'])}",
        "",
        "devices:",
    ]
    cpu = dev["cpu"]
    lines.append(f"  cpu: {cpu['model'] or 'unknown model'}; {cpu['cores']} cores ({cpu['cores_usable']} usable), "
                 f"torch uses {cpu['torch_threads']} threads")
    if dev["cuda"]:
        for g in dev["cuda"]:
            lines.append(f"  cuda:{g['index']}: {g['name']} (compute capability {g['capability']}, "
                         f"{g['memory_gib']} GiB)")
    else:
        lines.append("  cuda: no CUDA GPU visible")

    lines += ["", "extension:"]
    if ext["loaded"]:
        lines.append(f"  fastgen._C: loaded ({ext['how']}) from {ext['file']}")
        lines.append(f"  cpu_capability: {ext['cpu_capability']} (vector ISA picked at run time)")
        thr = ext["cpu_stream_threshold"]
        lines.append("  cpu_streaming_stores: " + ("never" if thr is None or thr < 0 else
                     f"for working sets > {thr / 2**20:.1f} MiB (last-level cache; FASTGEN_CPU_STREAM_BYTES)"))
        lines.append(f"  built_with_cuda: {ext['built_with_cuda']}")
    else:
        lines.append(f"  fastgen._C: NOT loaded ({ext['how']}); fused ops fall back to the PyTorch references")
        lines.append(f"  error: {ext['error']}")

    lines += ["", "environment:"]
    if info["env"]:
        lines += [f"  {k}={v}" for k, v in info["env"].items()]
    else:
        lines.append(f"  (none of {', '.join(DISPATCH_ENV_VARS)} is set)")

    forced = info["dispatch"]
    lines += ["", f"ops (dispatch: {'auto' if forced == 'auto' else 'forced to ' + repr(forced)}):"]
    rows = [("op", "cpu", "cuda")]
    for name, op in info["ops"].items():
        rows.append((name,) + tuple(op["uses"][d]["impl"] or "ERROR" for d in DEVICE_TYPES))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    lines += ["", "implementations (available on cpu / cuda, and why not):"]
    for name, op in info["ops"].items():
        lines.append(f"  {name}:")
        for d in DEVICE_TYPES:
            if op["uses"][d]["error"]:
                lines.append(f"    ERROR on {d}: {op['uses'][d]['error']}")
        iw = max(len(i) for i in op["impls"])
        for impl, avail in op["impls"].items():
            parts = [f"{d}: yes" if avail[d]["available"] else f"{d}: no ({avail[d]['reason']})"
                     for d in DEVICE_TYPES]
            if all(avail[d]["available"] for d in DEVICE_TYPES):
                lines.append(f"    {impl.ljust(iw)}  " + "  ".join(parts))
            else:  # one line per device type: the reasons are long
                lines.append(f"    {impl.ljust(iw)}  {parts[0]}")
                lines += [f"    {' ' * iw}  {p}" for p in parts[1:]]
    return "\n".join(lines)


def cmd_info(args: argparse.Namespace) -> int:
    info = collect_info()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(format_info(info))
    return 0


# ----------------------------------------------------------------------------- demo
QUICK_DEMO_FLAGS = ("steps", "num_images", "eta", "impl")
TRAIN_DEMO_FLAGS = ("minutes", "device", "threads", "max_steps", "no_progress")


def demo_mode(args: argparse.Namespace) -> str:
    """``"quick"`` (the DDIM sampling demo) when ``--quick``, any of its own flags (--steps,
    --num-images, --eta, --impl) or an ``--out`` ending in .png is given; else ``"train"``."""
    if args.quick or any(getattr(args, f) is not None for f in QUICK_DEMO_FLAGS):
        return "quick"
    if args.out is not None and str(args.out).lower().endswith(".png"):
        return "quick"
    return "train"


def cmd_demo(args: argparse.Namespace) -> int:
    from . import demo

    def flag(name):
        return "--" + name.replace("_", "-")

    mode = demo_mode(args)
    if mode == "quick":
        clash = [f for f in TRAIN_DEMO_FLAGS if getattr(args, f) not in (None, False)]
        if clash:
            given = [flag(f) for f in QUICK_DEMO_FLAGS if getattr(args, f) is not None] or \
                ["--quick" if args.quick else "--out *.png"]
            args.subparser.error(f"argument {flag(clash[0])}: belongs to the training demo, but {', '.join(given)} "
                                 "selected the quick sampling demo")
        return _demo_quick(args, demo)
    from . import demo_train

    size = 16 if args.size is None else args.size
    minutes = demo_train.DEFAULT_MINUTES if args.minutes is None else args.minutes
    try:
        demo_train.validate_train_args(minutes, size, args.device, args.seed, args.max_steps, args.threads)
        result = demo_train.run_training_demo(minutes, args.out or "fastgen_demo", size=size, device=args.device,
                                              seed=args.seed, max_steps=args.max_steps, threads=args.threads,
                                              progress=not args.no_progress)
    except demo.DemoArgumentError as exc:
        args.subparser.error(f"argument {flag(exc.argument)}: {exc}")  # exits with status 2
    except (backend.BackendUnavailableError, OSError) as exc:
        print(f"fastgen demo: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    print(demo_train.format_training_summary(result))
    return 0


def _demo_quick(args: argparse.Namespace, demo) -> int:
    steps = 25 if args.steps is None else args.steps
    num_images = 16 if args.num_images is None else args.num_images
    size = 32 if args.size is None else args.size
    eta = 0.0 if args.eta is None else args.eta
    out = args.out or "fastgen_demo.png"
    impl = None if args.impl in (None, "auto") else args.impl
    try:
        demo.validate_args(steps, num_images, size, eta, impl)
    except demo.DemoArgumentError as exc:
        args.subparser.error(f"argument --{exc.argument.replace('_', '-')}: {exc}")  # exits with status 2
    try:
        result = demo.run_demo(steps=steps, num_images=num_images, size=size, eta=eta,
                               seed=args.seed, out=out, impl=impl)
    except backend.BackendUnavailableError as exc:
        print(f"fastgen demo: {exc}", file=sys.stderr)
        return 1
    print(demo.format_summary(result))
    return 0


# ----------------------------------------------------------------------------- bench
def cmd_bench(args: argparse.Namespace) -> int:
    from . import report

    def fail(msg) -> int:
        print(f"fastgen bench: error: {' '.join(str(msg).split())}", file=sys.stderr)
        return 1

    if args.from_json:
        files = [Path(f) for f in args.from_json]
        command = ""
    else:
        json_path = Path(args.json or "fastgen_bench.json")
        try:
            cmd = report.benchmark_command(json_path, keyword=args.k)
        except FileNotFoundError as exc:
            return fail(exc)
        print("fastgen bench: " + " ".join(cmd), flush=True)
        rc, files = report.run_benchmarks(json_path, keyword=args.k, thp_rerun=not args.no_thp)
        if not files:
            return fail(f"the benchmark run (exit status {rc}) wrote no JSON; see its output above")
        command = "python -m pytest benchmarks/ --benchmark-only" + (f" -k {args.k!r}" if args.k else "")
        if rc not in (0, 5):
            print(f"fastgen bench: warning: the benchmark run exited with status {rc}; reporting what it wrote",
                  file=sys.stderr)
    rows, machine = [], ""
    try:
        for f in files:
            data = report.load_benchmark_json(f)
            rows += report.benchmark_rows(data)
            machine = machine or report.machine_summary(data)
    except report.ReportError as exc:
        return fail(f"--from-json {exc}" if args.from_json else exc)
    text = report.markdown_report(rows, machine=machine, command=command)
    print(text)
    try:
        if args.report:
            Path(args.report).parent.mkdir(parents=True, exist_ok=True)
            Path(args.report).write_text(text + "\n", encoding="utf-8")
            print(f"wrote {args.report}")
        if args.chart:
            w, h = report.speedup_chart(rows, args.chart)
            print(f"wrote {args.chart} ({w}x{h})")
    except OSError as exc:
        return fail(exc)
    return 0


# ----------------------------------------------------------------------------- entry point
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastgen", description="fastgen: fused kernels for generative image models.")
    parser.add_argument("--version", action="version", version=f"fastgen {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p_info = sub.add_parser("info", help="what is available on this machine, and which kernels each op uses",
                            description="Versions, devices, the compiled extension, and the implementation "
                                        "each fused op dispatches to on CPU and CUDA (with reasons).")
    p_info.add_argument("--json", action="store_true", help="print the report as JSON")
    p_info.set_defaults(func=cmd_info, subparser=p_info)

    p_demo = sub.add_parser(
        "demo", help="train a small diffusion model and a GAN on the embedded dataset, sample, compare speed",
        description="Training demo (default): train fastgen's tiny diffusion U-Net and a small DCGAN on the "
                    "embedded shapes dataset for --minutes (nothing is downloaded), write a grid of samples "
                    "(DDIM with the fused sampler) and the loss curves as PNGs into --out, and print how much "
                    "faster the fused path ran than the same networks on plain PyTorch ops on this machine. "
                    "Quick demo (--quick, or any of --steps/--num-images/--eta/--impl, or an --out ending in "
                    ".png): a few-second DDIM sampling run with the embedded dataset's exact Bayes denoiser, "
                    "the fused update checked and timed against plain PyTorch, written to one PNG.")
    p_demo.add_argument("--minutes", type=float, default=None,
                        help="training demo: time budget in minutes, about 60%% for the diffusion model, 25%% "
                             "for the GAN, the rest for sampling and the speed comparison (default 3)")
    p_demo.add_argument("--out", default=None,
                        help="training demo: output folder (default fastgen_demo/); quick demo: the PNG "
                             "(default fastgen_demo.png)")
    p_demo.add_argument("--device", default=None,
                        help="training demo: cpu or cuda (default: cuda when available, else cpu)")
    p_demo.add_argument("--seed", type=int, default=0, help="RNG seed (default 0)")
    p_demo.add_argument("--size", type=int, default=None,
                        help="image size: training demo 8, 16 or 32 (default 16); quick demo 16, 32 or 64 (default 32)")
    p_demo.add_argument("--threads", type=int, default=None,
                        help="training demo: CPU threads for torch and fastgen's kernels (default: torch's choice)")
    p_demo.add_argument("--no-progress", action="store_true", help="training demo: no progress bars")
    p_demo.add_argument("--max-steps", type=int, default=None, help=argparse.SUPPRESS)  # tests: cap the steps
    q = p_demo.add_argument_group("quick sampling demo")
    q.add_argument("--quick", action="store_true", help="run the quick DDIM sampling demo instead of training")
    q.add_argument("--steps", type=int, default=None, help="DDIM steps, 1..1000 (default 25)")
    q.add_argument("--num-images", type=int, default=None, help="images to sample, >= 1 (default 16)")
    q.add_argument("--eta", type=float, default=None, help="0 = DDIM, 1 = DDPM ancestral (default 0)")
    q.add_argument("--impl", choices=backend.IMPLS + ("auto",), default=None,
                   help="force the ddim_step implementation (default: automatic)")
    p_demo.set_defaults(func=cmd_demo, subparser=p_demo)

    p_bench = sub.add_parser("bench", help="run the benchmark suite and write a performance report",
                             description="Run `pytest benchmarks/ --benchmark-only` (a source checkout) or read "
                                         "pytest-benchmark JSON (--from-json), then print a markdown table of "
                                         "fastgen vs eager PyTorch and torch.compile, and optionally write it "
                                         "(--report) and a PNG chart of the speedups (--chart).")
    p_bench.add_argument("--json", default=None, metavar="FILE",
                         help="where the run writes pytest-benchmark JSON (default fastgen_bench.json; the CPU "
                              "huge-page re-run writes FILE.thp.json next to it)")
    p_bench.add_argument("--from-json", nargs="+", default=None, metavar="FILE",
                         help="report existing pytest-benchmark JSON file(s) instead of running the suite")
    p_bench.add_argument("--report", default=None, metavar="FILE.md", help="write the markdown report here")
    p_bench.add_argument("--chart", default=None, metavar="FILE.png", help="write a PNG bar chart of the speedups")
    p_bench.add_argument("-k", default=None, metavar="EXPR", help="only benchmarks matching this pytest -k expression")
    p_bench.add_argument("--no-thp", action="store_true",
                         help="skip the suite's CPU re-run under THP_MEM_ALLOC_ENABLE=1")
    p_bench.set_defaults(func=cmd_bench, subparser=p_bench)

    from .train.commands import add_parsers
    add_parsers(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status (argument errors exit via argparse, status 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    return args.func(args)
