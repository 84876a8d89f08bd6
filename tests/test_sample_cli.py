"""``mm2latent sample`` with a small random generator: files, latents, determinism, errors."""

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mm2latent.common.errors import UserError
from mm2latent.models.stylegan2 import Generator, StyleGAN2Config, save_generator
from mm2latent.world.attributes import ATTRIBUTES

CLI = [sys.executable, "-m", "mm2latent.cli.main"]


def _tiny_generator(path):
    torch.manual_seed(0)
    cfg = StyleGAN2Config(resolution=16, z_dim=32, w_dim=32, mapping_layers=2, channels={4: 32, 8: 32, 16: 16})
    G = Generator(cfg)
    save_generator(path, G)
    return G


def test_sample_writes_images_and_latents_deterministically(tmp_path):
    _tiny_generator(tmp_path / "g")
    outs = []
    for name in ("a", "b"):
        r = subprocess.run(CLI + ["sample", "--num", "5", "--seed", "3", "--weights", str(tmp_path / "g.safetensors"),
                                  "--out", str(tmp_path / name), "--grid", str(tmp_path / f"{name}.png")],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        outs.append({p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / name).iterdir()})
    assert outs[0] == outs[1] and len(outs[0]) == 6
    w = np.load(tmp_path / "a" / "latents.npy")
    assert w.shape == (5, 32)


def test_sample_truncation_zero_gives_w_avg(tmp_path):
    from mm2latent.pipeline.sampling import sample_generator

    G = _tiny_generator(tmp_path / "g").eval()
    _, w = sample_generator(G, 4, 0, 0.0)
    assert np.allclose(w, G.w_avg.numpy()[None], atol=1e-6)


def test_sample_errors(tmp_path):
    r = subprocess.run(CLI + ["sample", "--num", "2", "--weights", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "not found" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run(CLI + ["sample", "--num", "0", "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr


# --------------------------------------------------------------------------- fitted latent prior


def test_gaussian_prior_fit_recovers_mean_and_covariance():
    from mm2latent.models.latent_prior import GaussianLatentPrior

    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 6, generator=g)
    cov = a @ a.T + 0.5 * torch.eye(6)
    mean = torch.arange(6.0)
    x = mean + torch.randn(40000, 6, generator=g) @ torch.linalg.cholesky(cov).T
    p = GaussianLatentPrior.fit(x)
    assert torch.allclose(p.mean, mean, atol=0.05)
    assert torch.allclose(p.chol @ p.chol.T, cov, atol=0.15)
    # samples follow the fitted law; psi = 0 gives the mean; same generator seed, same samples
    s = p.sample(20000, torch.Generator().manual_seed(1))
    assert torch.allclose(torch.cov(s.T), cov, atol=0.25)
    assert torch.allclose(p.sample(3, None, truncation=0.0), p.mean.expand(3, -1))
    assert torch.equal(p.sample(4, torch.Generator().manual_seed(5)), p.sample(4, torch.Generator().manual_seed(5)))
    # the density is highest at the mean and matches torch's MultivariateNormal
    ref = torch.distributions.MultivariateNormal(p.mean.double(), scale_tril=p.chol.double())
    pts = s[:5]
    assert torch.allclose(p.log_prob(pts).double(), ref.log_prob(pts.double()), atol=1e-3)
    with pytest.raises(UserError, match="more latents"):
        GaussianLatentPrior.fit(torch.randn(4, 6))


def test_mixture_prior_keeps_modes_and_truncates_towards_its_components():
    """Two well-separated clusters: the mixture finds both (weights, means), fits them better
    than one Gaussian, samples from both in the right shares, and psi = 0 gives the component
    means, not the overall mean between them; it survives a save/load round trip."""
    import tempfile

    from mm2latent.models.latent_prior import GaussianLatentPrior
    from mm2latent.models.registry import load_module_file, save_module

    g = torch.Generator().manual_seed(0)
    centres = torch.stack([torch.full((5,), 4.0), torch.full((5,), -4.0)])
    x = torch.cat([centres[0] + torch.randn(3000, 5, generator=g), centres[1] + 0.5 * torch.randn(1000, 5, generator=g)])
    one, mix = GaussianLatentPrior.fit(x), GaussianLatentPrior.fit(x, components=2)
    assert mix.log_prob(x).mean() > one.log_prob(x).mean() + 1.0
    order = mix.means[:, 0].argsort(descending=True)
    assert torch.allclose(mix.means[order], centres, atol=0.1)
    assert torch.allclose(mix.log_weights[order].exp(), torch.tensor([0.75, 0.25]), atol=0.01)
    assert torch.allclose(mix.mean, x.mean(0), atol=1e-3)  # overall mean: where the pipeline truncates
    s = mix.sample(4000, torch.Generator().manual_seed(1))
    assert abs((s[:, 0] > 0).float().mean().item() - 0.75) < 0.03
    assert torch.equal(s, mix.sample(4000, torch.Generator().manual_seed(1)))
    t0 = mix.sample(50, torch.Generator().manual_seed(2), truncation=0.0)
    near = torch.cdist(t0, centres).min(1).values
    assert near.max() < 0.1  # every psi=0 sample sits on a component's mean; one Gaussian's sits between
    assert torch.cdist(one.sample(5, None, truncation=0.0), centres).min() > 3
    with tempfile.TemporaryDirectory() as d:
        save_module(mix, Path(d) / "p.safetensors", half=False)
        back = load_module_file(Path(d) / "p.safetensors", "latent_prior")
    assert back.config.components == 2 and torch.equal(back.sample(7, torch.Generator().manual_seed(3)),
                                                        mix.sample(7, torch.Generator().manual_seed(3)))
    with pytest.raises(UserError, match="components"):
        GaussianLatentPrior.fit(x[:20], components=15)


def test_stratified_prior_samples_a_rare_group_as_often_as_it_occurs():
    """A rare group (8 %) that sits next to a broad common one: an unstratified 2-component mixture
    may spend both components on the broad cloud and blend the rare one away; stratified by the
    group labels, each group gets its own components, its weight is its share, and samples land
    in it as often as it occurs (nearest-group test), also at psi = 0.7."""
    from mm2latent.models.latent_prior import GaussianLatentPrior

    g = torch.Generator().manual_seed(0)
    d = 8
    common = torch.randn(4600, d, generator=g) * 2.0
    rare = torch.randn(400, d, generator=g) * 0.3 + torch.tensor([3.0] + [0.0] * (d - 1))
    x, groups = torch.cat([common, rare]), torch.cat([torch.zeros(4600), torch.ones(400)]).long()
    strat = GaussianLatentPrior.fit(x, components=3, groups=groups)
    assert strat.config.components == 3
    weights = strat.log_weights.exp()
    assert torch.allclose(weights.sum(), torch.tensor(1.0), atol=1e-5)
    rare_comp = torch.cdist(strat.means, rare.mean(0, keepdim=True))[:, 0].argmin()
    assert abs(weights[rare_comp].item() - 0.08) < 1e-4  # the rare group's own component, at its share
    assert torch.allclose(strat.mean, x.mean(0), atol=1e-3)
    for psi in (1.0, 0.7):
        s = strat.sample(20000, torch.Generator().manual_seed(1), truncation=psi)
        in_rare = (s - rare.mean(0)).norm(dim=1) < 3 * 0.3 * d ** 0.5 * psi
        assert abs(in_rare.float().mean().item() - 0.08) < 0.02
    with pytest.raises(UserError, match="groups"):
        GaussianLatentPrior.fit(x, components=1, groups=groups)
    with pytest.raises(UserError, match="group labels"):
        GaussianLatentPrior.fit(x, components=3, groups=groups[:10])


def test_mixture_components_are_drawn_in_proportion_to_their_weights():
    """Systematic component draws: in any batch each component appears floor or ceil of num * weight
    times (independent draws put a 7.5 % component anywhere from ~6 % to ~9 % of 2,000 samples), in
    shuffled order, while each single draw still follows the weights (checked over many seeds)."""
    from mm2latent.models.latent_prior import systematic_components

    w = torch.tensor([0.6, 0.25, 0.075, 0.075])
    for num in (1, 7, 40, 2000):
        for seed in range(5):
            c = systematic_components(w, num, torch.Generator().manual_seed(seed))
            counts = torch.bincount(c, minlength=4).double()
            assert c.shape == (num,) and counts.sum() == num
            assert ((counts - num * w.double()).abs() < 1 + 1e-9).all(), counts
    c = systematic_components(w, 2000, torch.Generator().manual_seed(0))
    assert not torch.equal(c, c.sort().values)  # shuffled, not in component order
    first = torch.stack([systematic_components(w, 3, torch.Generator().manual_seed(s)) for s in range(8000)])
    for j in range(3):  # every position's marginal is the mixture's
        assert torch.allclose(torch.bincount(first[:, j], minlength=4) / 8000.0, w, atol=0.02)
    same = [systematic_components(w, 50, torch.Generator().manual_seed(9)) for _ in range(2)]
    assert torch.equal(*same)


def test_split_components_over_groups():
    from mm2latent.models.latent_prior import split_components

    assert split_components(16, [16000, 1700, 2100, 200]) == [13, 1, 1, 1]
    assert sum(split_components(10, [500, 500])) == 10 and split_components(10, [500, 500]) == [5, 5]
    assert split_components(5, [3, 3]) == [1, 1]  # never more than half a group's latents
    assert split_components(4, [3, 3, 3, 3]) == [1, 1, 1, 1]


def test_sample_uses_the_fitted_prior_beside_the_generator(tmp_path):
    from mm2latent.pipeline.sampling import load_prior, sample_generator
    from mm2latent.models.latent_prior import GaussianLatentPrior
    from mm2latent.models.registry import save_module

    G = _tiny_generator(tmp_path / "generator").eval()
    gpath = tmp_path / "generator.safetensors"
    assert load_prior(gpath, "auto") is None
    r = subprocess.run(CLI + ["sample", "--num", "2", "--weights", str(gpath), "--prior", "fitted",
                              "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 2 and "latent prior" in r.stderr and "Traceback" not in r.stderr
    prior = GaussianLatentPrior.fit(torch.randn(500, 32) * 0.01 + 3.0)  # a narrow law far from mapping(z)
    save_module(prior, tmp_path / "latent_prior.safetensors", half=False)
    r = subprocess.run(CLI + ["sample", "--num", "3", "--weights", str(gpath), "--out", str(tmp_path / "f")],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "fitted latent prior" in r.stdout, r.stderr
    w = np.load(tmp_path / "f" / "latents.npy")
    assert np.allclose(w, 3.0, atol=0.1)
    r = subprocess.run(CLI + ["sample", "--num", "3", "--weights", str(gpath), "--prior", "normal",
                              "--out", str(tmp_path / "n")], capture_output=True, text=True)
    assert r.returncode == 0 and not np.allclose(np.load(tmp_path / "n" / "latents.npy"), 3.0, atol=0.1)
    _, w0 = sample_generator(G, 2, 0, 0.0, prior=load_prior(gpath, "auto"))
    assert np.allclose(w0, prior.mean.numpy()[None], atol=1e-6)


def test_fit_latent_prior_command(tmp_path):
    from helpers import build_tiny_weights, write_world_cache

    from mm2latent.models.registry import load_module_file

    weights = build_tiny_weights(tmp_path / "w")
    cache = write_world_cache(tmp_path / "cache", 40, 64)
    out = weights / "latent_prior.safetensors"
    r = subprocess.run(CLI + ["train", "latent-prior", "--data", str(cache), "--weights", str(weights),
                              "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    prior = load_module_file(out, "latent_prior")
    assert prior.config.dim == 16 and torch.isfinite(prior.chol).all()
    info = __import__("json").loads(out.with_suffix(".json").read_text())["fitted"]
    assert info["num"] == 40
    r = subprocess.run(CLI + ["train", "latent-prior", "--data", str(cache), "--weights", str(weights), "--num", "10",
                              "--out", str(tmp_path / "p.safetensors")], capture_output=True, text=True)
    assert r.returncode == 2 and "more than 16" in r.stderr
    r = subprocess.run(CLI + ["train", "latent-prior", "--data", str(cache), "--weights", str(weights),
                              "--components", "2", "--out", str(tmp_path / "m.safetensors")], capture_output=True, text=True)
    assert r.returncode == 0 and "mixture of 2" in r.stdout, r.stderr
    mix = load_module_file(tmp_path / "m.safetensors", "latent_prior")
    assert mix.config.components == 2 and mix.means.shape == (2, 16) and torch.isfinite(mix.chols).all()
    r = subprocess.run(CLI + ["train", "latent-prior", "--data", str(cache), "--weights", str(weights), "--components",
                              "4", "--stratify", "Male", "--out", str(tmp_path / "s.safetensors")],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "stratified by Male" in r.stdout, r.stderr
    info = __import__("json").loads((tmp_path / "s.json").read_text())["fitted"]
    assert info["stratified_by"] == ["Male"] and info["components"] == 4
    strat = load_module_file(tmp_path / "s.safetensors", "latent_prior")
    male_share = float(np.load(cache / "attributes.npy")[:, ATTRIBUTES.index("Male")].mean())
    assert male_share not in (0.0, 1.0) and torch.isfinite(strat.chols).all()
    assert torch.allclose(strat.log_weights.exp().sum(), torch.tensor(1.0), atol=1e-5)
    for args, msg in ((["--stratify", "Wearing_Crown"], "unknown attribute"),
                      (["--stratify", "Male,Eyeglasses", "--components", "1"], "fewer than")):
        r = subprocess.run(CLI + ["train", "latent-prior", "--data", str(cache), "--weights", str(weights), *args,
                                  "--out", str(tmp_path / "bad.safetensors")], capture_output=True, text=True)
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "bad.safetensors").exists()
