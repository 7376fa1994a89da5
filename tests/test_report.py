"""``fastgen bench``'s report (fastgen.report) on a sample pytest-benchmark JSON file.

tests/data/bench_sample.json: the first benchmark is a real run of
``pytest benchmarks/bench_ddim_step.py -k out-cache-cpu --benchmark-only --benchmark-json=...`` (the
stats' raw timings and the CPU flags trimmed); the others are hand-made in the same shape (a second
case of the same group, an extra baseline, a benchmark slower than eager, the THP re-run, a CUDA row
with peak memory, a run without timing) to exercise the report, not measurements.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from fastgen import report
from fastgen.cli import main

SAMPLE = Path(__file__).parent / "data" / "bench_sample.json"


def _png_size(path):
    from PIL import Image

    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        return im.size


def test_rows_read_the_harness_fields():
    rows = report.benchmark_rows(report.load_benchmark_json(SAMPLE))
    assert len(rows) == 7
    first = rows[0]
    assert first["label"] == "ddim_step fp32 cache (16, 4, 64, 64) [fastgen-out-cache-cpu]"  # made unique
    assert first["device"] == "cpu" and first["allocator"] == "default" and first["threads"] == 2
    assert first["fastgen_ms"] == 0.0384 and first["GBps"] == 109.3 and first["pct_copy"] == 65.4
    assert list(first["baselines"]) == ["eager", "compile"]
    assert first["baselines"]["eager"] == {"ms": 0.1153, "speedup": 3.0, "peak_MB": None}
    attn = next(r for r in rows if r["label"].startswith("attention"))
    assert list(attn["baselines"]) == ["eager", "sdpa"] and attn["baselines"]["sdpa"]["speedup"] == 2.01
    cuda = next(r for r in rows if r["device"] == "cuda")
    assert cuda["peak_MB"] == 8.0 and cuda["baselines"]["eager"]["peak_MB"] == 40.0
    untimed = rows[-1]
    assert untimed["fastgen_ms"] is None and untimed["baselines"] == {}


def test_markdown_table():
    data = report.load_benchmark_json(SAMPLE)
    text = report.markdown_report(report.benchmark_rows(data), machine=report.machine_summary(data),
                                  command="python -m pytest benchmarks/ --benchmark-only")
    assert "CPU AMD EPYC (2 cores)" in text and "commit 0123456789" in text
    assert "## cpu, CPU allocator default, 2 threads" in text and "## cpu, CPU allocator thp, 2 threads" in text
    assert "## cuda" in text
    header = ("| benchmark | device | fastgen ms | eager ms (speedup) | torch.compile ms (speedup) | SDPA ms (speedup) "
              "| GB/s | % copy |")
    assert header in text
    assert ("| ddim_step fp32 cache (16, 4, 64, 64) [fastgen-out-cache-cpu] | cpu | 0.0384 | 0.115 (3.00x) "
            "| 0.047 (1.22x) | – | 109.3 | 65% |") in text
    assert "| attention fwd fp32 N=1024 | cpu | 12.2 | 39.2 (3.21x) | – | 24.5 (2.01x) | – | – |" in text
    assert "| U-Net cifar10 training step | cpu | 1600 | 1580 (0.99x) |" in text
    assert "| bias_act fwd (16, 512, 32, 32) | cpu | – | – | – | – | – | – |" in text
    assert "peak MB (fastgen)" in text.split("## cuda")[1] and "peak MB" not in text.split("## cuda")[0]
    assert "| group_norm fwd scale_shift (8, 256, 32, 32) | cuda | 0.05 | 0.2 (4.00x) | 0.06 (1.20x) | 1350.0 | 50% | 8.0 |" in text
    assert "geometric mean 2.42x over 4 benchmarks (min 0.99x, max 3.58x; 1 slower than eager)" in text


def test_chart_is_a_png(tmp_path):
    rows = report.benchmark_rows(report.load_benchmark_json(SAMPLE))
    w, h = report.speedup_chart(rows, tmp_path / "sub" / "chart.png")
    assert _png_size(tmp_path / "sub" / "chart.png") == (w, h)
    assert w > 600 and h > 6 * 12  # one group of bars per timed benchmark
    w2, h2 = report.speedup_chart(rows[-1:], tmp_path / "empty.png")  # nothing timed: still a PNG, saying so
    assert _png_size(tmp_path / "empty.png") == (w2, h2)


def test_cli_bench_from_json(tmp_path, capsys):
    md, png = tmp_path / "r" / "report.md", tmp_path / "chart.png"
    assert main(["bench", "--from-json", str(SAMPLE), "--report", str(md), "--chart", str(png)]) == 0
    out = capsys.readouterr().out
    assert "| benchmark | device | fastgen ms |" in out and f"wrote {md}" in out and f"wrote {png}" in out
    assert "| benchmark | device | fastgen ms |" in md.read_text()
    _png_size(png)


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"), ("{not json", "not readable JSON"), ('{"a": 1}', "not a pytest-benchmark JSON"),
    ('{"benchmarks": [{"extra_info": {}}]}', "has no 'name'"),
])
def test_cli_bench_bad_json_is_one_line(tmp_path, capsys, content, message):
    f = tmp_path / "b.json"
    if content is not None:
        f.write_text(content)
    assert main(["bench", "--from-json", str(f), "--chart", str(tmp_path / "never.png")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("fastgen bench: error: --from-json") and message in err and "\n" not in err
    assert str(f) in err and not (tmp_path / "never.png").exists()


def test_benchmark_command(tmp_path, monkeypatch, capsys):
    cmd = report.benchmark_command(tmp_path / "b.json", keyword="ddim and cpu")
    assert cmd[:3] == [sys.executable, "-m", "pytest"] and Path(cmd[3]).name == "benchmarks"
    assert "--benchmark-only" in cmd and f"--benchmark-json={(tmp_path / 'b.json').resolve()}" in cmd
    assert cmd[-2:] == ["-k", "ddim and cpu"]
    monkeypatch.setattr(report, "benchmarks_dir", lambda: None)  # fastgen installed from a wheel
    with pytest.raises(FileNotFoundError, match="--from-json"):
        report.benchmark_command(tmp_path / "b.json")
    assert main(["bench", "--json", str(tmp_path / "b.json")]) == 1
    assert "not installed with fastgen" in capsys.readouterr().err
