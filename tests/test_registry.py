"""Networks named by import path: built, checked, and every way they can be wrong named by spec key."""

import pytest
import torch

from gan_models import build_models
from gan_models.registry import check_interface, import_network


def build(generator=None, discriminator=None):
    return build_models("dcgan", latent_dim=8, image_size=28, channels=1, g_width=16, d_width=16,
                        generator=generator, discriminator=discriminator)


def test_user_networks_replace_the_family():
    G, D = build("user_networks:MLPGenerator", "user_networks:MLPDiscriminator")
    assert type(G).__name__ == "MLPGenerator" and type(D).__name__ == "MLPDiscriminator"
    check_interface(G, D, latent_dim=8, image_size=28, channels=1)
    G, D = build(discriminator="user_networks:MLPDiscriminator")
    assert type(G).__name__ == "DCGANGenerator"


@pytest.mark.parametrize("path,message", [
    ("user_networks.MLPGenerator", "model.generator: got 'user_networks.MLPGenerator'; expected 'package.module:ClassName'"),
    ("no_such_module:G", "model.generator: cannot import module 'no_such_module': ModuleNotFoundError"),
    ("user_networks:Missing", "model.generator: module 'user_networks' has no 'Missing'"),
    ("user_networks:NotANetwork", "model.generator: user_networks:NotANetwork is not a torch.nn.Module subclass"),
])
def test_import_errors_name_the_key(path, message):
    with pytest.raises(ValueError) as info:
        import_network(path, "model.generator")
    assert str(info.value).startswith(message)


def test_module_that_fails_on_import(tmp_path, monkeypatch):
    (tmp_path / "broken_nets.py").write_text("raise RuntimeError('no GPU here')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match="model.discriminator: cannot import module 'broken_nets': RuntimeError: no GPU here"):
        import_network("broken_nets:D", "model.discriminator")


def test_wrong_interface_is_caught():
    G, D = build("user_networks:FlatGenerator")
    with pytest.raises(ValueError, match=r"model.generator: G\(z\) gave shape \(2, 784\); expected \(2, 1, 28, 28\)"):
        check_interface(G, D, latent_dim=8, image_size=28, channels=1)
    G, D = build()
    with pytest.raises(ValueError, match=r"model.generator: G\(z\) failed for z of shape \(2, 9\)"):
        check_interface(G, D, latent_dim=9, image_size=28, channels=1)
    with pytest.raises(ValueError, match=r"model.discriminator: D\(x\) failed"):
        check_interface(G, torch.nn.Linear(3, 1), latent_dim=8, image_size=28, channels=1)
