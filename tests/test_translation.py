"""Image-to-image translation: two-domain datasets, pix2pix and CycleGAN recipes (a few steps,
losses fall, exact resume through GANTrainer, sample grids)."""
import pytest
import torch

from fastgen.data import (PairedDataset, UnpairedDataset, edge_map, load_translation_dataset, shapes_edges_dataset,
                          shapes_inverted_dataset)
from fastgen.gan import CycleGANTraining, Pix2PixTraining
from fastgen.models import PatchGANDiscriminator, ResnetGenerator, UNetGenerator
from fastgen.train import GANTrainer, load_generator


def test_paired_and_unpaired_datasets(tmp_path):
    a, b = torch.rand(5, 1, 8, 8) * 2 - 1, torch.rand(7, 3, 8, 8) * 2 - 1
    with pytest.raises(ValueError, match="same length"):
        PairedDataset(a, b)
    p = PairedDataset(a, b[:5])
    x, y = p[2]
    assert x.shape == (4, 8, 8) and int(y) == -1 and torch.equal(x[:1], a[2]) and torch.equal(x[1:], b[2])
    u = UnpairedDataset(a, b, seed=1)
    assert len(u) == 7 and p.channels_a == 1 and u.channels == 4
    seen_b = {tuple(u[i][0][1:, 0, 0].tolist()) for i in range(7)}
    assert len(seen_b) == 7  # a permutation of b
    assert torch.equal(u[6][0][:1], a[6 % 5])
    with pytest.raises(ValueError, match="same size"):
        PairedDataset(a, torch.zeros(5, 3, 4, 4))
    e = edge_map(torch.rand(2, 3, 8, 8) * 2 - 1)
    assert e.shape == (2, 1, 8, 8) and float(e.min()) >= -1 and float(e.max()) <= 1
    d = shapes_edges_dataset(16, 8)
    assert d[0][0].shape == (2, 16, 16) and d.channels_a == 1 and d.channels_b == 1
    assert shapes_inverted_dataset(16, 8)[0][0].shape == (6, 16, 16)
    # folders: A/ and B/ of PNGs
    from PIL import Image
    for dom in ("A", "B"):
        (tmp_path / dom).mkdir()
        for i in range(3):
            Image.new("RGB", (10, 10), (40 * i, 80, 120)).save(tmp_path / dom / f"{i}.png")
    assert len(load_translation_dataset(tmp_path, 8, paired=True)) == 3
    assert load_translation_dataset(tmp_path, 8)[1][0].shape == (6, 8, 8)
    with pytest.raises(FileNotFoundError, match="subfolders"):
        load_translation_dataset(tmp_path / "A", 8)
    with pytest.raises(FileNotFoundError):
        load_translation_dataset("nowhere", 8)


def _pix2pix(seed=0):
    torch.manual_seed(seed)
    G = UNetGenerator(in_channels=1, out_channels=1, img_resolution=16, base_channels=8)
    D = PatchGANDiscriminator(in_channels=2, base_channels=8, n_layers=2)
    return Pix2PixTraining(G, D, batch_size=8, lr=1e-3)


def _cyclegan(seed=0, **kw):
    torch.manual_seed(seed)
    mk = lambda: ResnetGenerator(base_channels=8, n_blocks=1)  # noqa: E731
    md = lambda: PatchGANDiscriminator(in_channels=3, base_channels=8, n_layers=2)  # noqa: E731
    return CycleGANTraining(mk(), mk(), md(), md(), batch_size=8, lr=1e-3, pool_size=4, **kw)


def test_pix2pix_learns_the_mapping():
    data = shapes_edges_dataset(16, 64)
    batch = torch.stack([data[i][0] for i in range(8)])
    r = _pix2pix()
    hist = [r.step(batch) for _ in range(15)]
    assert all(torch.isfinite(v).all() for h in hist for v in h.values())
    assert float(hist[-1]["l1"]) < 0.9 * float(hist[0]["l1"]), [float(h["l1"]) for h in hist]
    grid = r.sample(6)
    assert grid.shape == (6, 3, 16, 16)  # rows of (edges, output, target), grey as RGB
    with pytest.raises(ValueError, match="C_a \\+ C_b"):
        r.step(torch.zeros(2, 1, 16, 16))


def test_cyclegan_cycle_loss_falls_and_pool_resumes(tmp_path):
    data = shapes_inverted_dataset(16, 32)
    r = _cyclegan()
    batch = torch.stack([data[i][0] for i in range(8)])
    hist = [r.step(batch) for _ in range(10)]
    assert all(torch.isfinite(v).all() for h in hist for v in h.values())
    assert float(hist[-1]["cycle"]) < float(hist[0]["cycle"])
    assert {"identity", "d_a", "d_b"} <= hist[0].keys()

    def trainer(seed=0):
        return GANTrainer(_cyclegan(seed), data, batch_size=8, progress=False, log_every=0)

    a = trainer()
    for _ in range(2):
        a.step()
    a.save_checkpoint(tmp_path / "c.safetensors")
    rng = torch.get_rng_state()
    for _ in range(2):
        a.step()
    b = trainer(seed=3)
    b.load_checkpoint(tmp_path / "c.safetensors")
    torch.set_rng_state(rng)
    for _ in range(2):
        b.step()
    for ma, mb in zip(a.recipe.models().values(), b.recipe.models().values()):
        for (k, v), w in zip(ma.state_dict().items(), mb.state_dict().values()):
            assert torch.equal(v, w), k
    assert torch.equal(a.recipe.pool_A.images, b.recipe.pool_A.images)
    G = load_generator(a.save_checkpoint(tmp_path / "d.safetensors"))
    assert type(G).__name__ == "ResnetGenerator"
    assert type(load_generator(tmp_path / "d.safetensors", name="G_BA")).__name__ == "ResnetGenerator"
    with pytest.raises(ValueError, match="no network"):
        load_generator(tmp_path / "d.safetensors", name="D")


def test_cyclegan_identity_needs_equal_channels():
    torch.manual_seed(0)
    r = CycleGANTraining(ResnetGenerator(in_channels=1, out_channels=3, base_channels=4, n_blocks=1),
                         ResnetGenerator(in_channels=3, out_channels=1, base_channels=4, n_blocks=1),
                         PatchGANDiscriminator(in_channels=1, base_channels=4, n_layers=1),
                         PatchGANDiscriminator(in_channels=3, base_channels=4, n_layers=1), batch_size=2)
    with pytest.raises(ValueError, match="lambda_identity=0"):
        r.step(torch.zeros(2, 4, 16, 16))
