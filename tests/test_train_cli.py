"""``fastgen train ddpm`` and ``fastgen sample`` with tiny settings (seconds)."""
from __future__ import annotations

import pytest

from fastgen.cli import main
from fastgen.train import checkpoint as ckpt

TINY = ["--size", "8", "--batch-size", "8", "--sample-steps", "2", "--no-progress", "--log-every", "1"]


def _png_ok(path):
    from PIL import Image
    with Image.open(path) as im:
        im.verify()
        return im.size


def test_train_resume_and_sample(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "ddpm", *TINY, "--steps", "4", "--checkpoint-every", "2", "--sample-every", "2",
                 "--out", str(out)]) == 0
    assert [s for s, _ in ckpt.list_checkpoints(out / "checkpoints")] == [2, 4]
    _png_ok(out / "samples" / "step_00000002.png")
    _png_ok(out / "samples" / "final.png")
    assert "trained 4 steps" in capsys.readouterr().out

    assert main(["train", "ddpm", *TINY, "--steps", "2", "--out", str(out), "--resume", "--lr-schedule", "cosine",
                 "--decay-steps", "200"]) == 0
    assert ckpt.list_checkpoints(out / "checkpoints")[-1][0] == 6
    assert "resumed from step 4" in capsys.readouterr().err

    png = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(out), "--steps", "2", "--num-images", "4", "--guidance", "2",
                 "--out", str(png), "--no-progress"]) == 0
    assert _png_ok(png) == (2 + 2 * (8 * 8 + 2),) * 2  # 2x2 cells of 8px upscaled 8x, 2px padding
    assert main(["sample", "--checkpoint", str(out / "checkpoints" / "step_00000006.safetensors"), "--steps", "2",
                 "--num-images", "2", "--class-label", "3", "--sampler", "euler", "--no-ema",
                 "--out", str(png), "--no-progress"]) == 0


@pytest.mark.parametrize("argv, message", [
    (["train", "ddpm", "--data", "/no/such/folder", "--steps", "1"], "/no/such/folder"),
    (["train", "ddpm", "--size", "8", "--lr-schedule", "cosine", "--steps", "1"], "decay_steps"),
    (["sample", "--checkpoint", "/no/such.safetensors"], "does not exist"),
])
def test_user_errors_are_one_line(argv, message, capsys):
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err


def test_bad_checkpoint_file_and_class_label(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage" * 20)
    assert main(["sample", "--checkpoint", str(bad)]) == 1
    assert "bad.safetensors" in capsys.readouterr().err
    out = tmp_path / "run"
    assert main(["train", "ddpm", *TINY, "--steps", "1", "--out", str(out), "--sample-every", "0"]) == 0
    assert main(["sample", "--checkpoint", str(out), "--class-label", "7", "--steps", "1"]) == 1
    assert "--class-label" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["sample", "--checkpoint", str(empty)]) == 1
    assert "no step_" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["train", "ddpm", "--steps", "-1"], ["train", "ddpm", "--batch-size", "0"], ["train", "gan"],
    ["sample"], ["sample", "--checkpoint", "x", "--sampler", "nope"],
])
def test_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "usage:" in capsys.readouterr().err


SG_TINY = ["--size", "8", "--preset", "tiny", "--batch-size", "8", "--no-progress", "--log-every", "1",
           "--r1-interval", "2"]


def test_train_stylegan_resume_and_sample(tmp_path, capsys):
    out = tmp_path / "sg"
    assert main(["train", "stylegan", *SG_TINY, "--steps", "2", "--checkpoint-every", "1", "--sample-every", "2",
                 "--out", str(out)]) == 0
    assert [s for s, _ in ckpt.list_checkpoints(out / "checkpoints")] == [1, 2]
    _png_ok(out / "samples" / "step_00000002.png")
    assert "trained 2 steps" in capsys.readouterr().out
    assert main(["train", "stylegan", *SG_TINY, "--steps", "1", "--out", str(out), "--resume"]) == 0
    assert "resumed from step 2" in capsys.readouterr().err
    png = tmp_path / "g.png"
    assert main(["sample", "--checkpoint", str(out), "--num-images", "4", "--truncation", "0.5",
                 "--out", str(png)]) == 0
    assert _png_ok(png) == (2 + 2 * (8 * 8 + 2),) * 2
    assert main(["sample", "--checkpoint", str(out), "--class-label", "9", "--out", str(png)]) == 1
    assert "--class-label" in capsys.readouterr().err
    assert main(["train", "stylegan", "--size", "24", "--steps", "1", "--out", str(tmp_path / "x")]) == 1
    assert "power of two" in capsys.readouterr().err
    assert main(["train", "stylegan", *SG_TINY, "--steps", "2", "--cond-transition", "0", "0.008",
                 "--out", str(tmp_path / "ct")]) == 0
    assert "trained 2 steps" in capsys.readouterr().out
    assert main(["train", "stylegan", *SG_TINY, "--steps", "1", "--cond-transition", "2", "1",
                 "--out", str(tmp_path / "ct2")]) == 1
    assert "start <= end" in capsys.readouterr().err


@pytest.mark.parametrize("model", ["dcgan", "wgan-gp", "pix2pix", "cyclegan"])
def test_train_gan_zoo(model, tmp_path, capsys):
    out = tmp_path / model
    argv = ["train", model, "--size", "16", "--base-channels", "4", "--batch-size", "4", "--steps", "2",
            "--no-progress", "--sample-every", "2", "--out", str(out)]
    if model == "wgan-gp":
        argv += ["--d-steps", "2"]
    if model == "cyclegan":
        argv += ["--n-blocks", "1"]
    assert main(argv) == 0
    assert "trained 2 steps" in capsys.readouterr().out
    _png_ok(out / "samples" / "final.png")
    assert [s for s, _ in ckpt.list_checkpoints(out / "checkpoints")] == [2]
    png = tmp_path / "s.png"
    rc = main(["sample", "--checkpoint", str(out), "--num-images", "4", "--out", str(png)])
    if model in ("dcgan", "wgan-gp"):
        assert rc == 0 and _png_ok(png)
    else:  # image-to-image models need inputs: a one-line error
        assert rc == 1 and "translates images" in capsys.readouterr().err


def _tampered_checkpoints(src, tmp_path):
    """Checkpoints that read as safetensors but do not rebuild: (file, what the error must name)."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(src), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(src))
    m = json.loads(meta["fastgen"])
    cases = {
        "wider": ({**m, "model_config": {**m["model_config"], "model_channels": 2 * m["model_config"]["model_channels"]}},
                  tensors, "does not fit"),
        "no_diffusion": ({k: v for k, v in m.items() if k != "diffusion"}, tensors, "'diffusion'"),
        "no_betas": (m, {k: v for k, v in tensors.items() if k != "schedule/betas"}, "schedule/betas"),
        "zero_betas": (m, {**tensors, "schedule/betas": tensors["schedule/betas"] * 0}, "bad diffusion setting"),
    }
    for name, (mm, tt, msg) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        save_file(tt, str(path), metadata={**meta, "fastgen": json.dumps(mm)})
        yield path, msg


def test_tampered_checkpoints_and_bad_device_are_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "ddpm", *TINY, "--steps", "1", "--out", str(out), "--sample-every", "0"]) == 0
    capsys.readouterr()
    for path, msg in _tampered_checkpoints(ckpt.list_checkpoints(out / "checkpoints")[-1][1], tmp_path):
        assert main(["sample", "--checkpoint", str(path), "--steps", "1", "--no-progress",
                     "--out", str(tmp_path / "never.png")]) == 1, path
        err = capsys.readouterr().err.strip()
        assert path.name in err and msg in err and "\n" not in err and "Traceback" not in err, err
    assert not (tmp_path / "never.png").exists()
    for argv in (["train", "ddpm", *TINY, "--steps", "1", "--out", str(tmp_path / "x"), "--device", "tpu"],
                 ["sample", "--checkpoint", str(out), "--device", "nonsense"]):
        assert main(argv) == 1
        err = capsys.readouterr().err.strip()
        assert "--device" in err and "\n" not in err and "Traceback" not in err, err
