"""Standard backbones: torchvision's published key layout, weights files that load exactly (and
ones that do not, refused in one line), the greyscale stem, and the offline download error.

No real published weights are available offline: every file here is written by the test from a
randomly initialised network in the published layout, as torchvision's ``.pth`` files are.
"""

import urllib.request

import numpy as np
import onnxruntime as ort
import pytest
import torch
from safetensors.torch import save_file

from training.backbones import REGISTRY
from training.config import BACKBONES
from training.models import EncoderConfig, build_encoder
from training.weights import download, fits, load_backbone, read_weights
from twinstream.errors import ModelError

# torchvision's documented parameter counts (``Weights.meta["num_params"]``): a block, a width or
# a squeeze size that differs from the published network changes them.
PUBLISHED_PARAMS = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
                    "mobilenet_v3_small": 2_542_856, "mobilenet_v3_large": 5_483_032}
# Keys anyone who has opened these files recognises, with their shapes.
WELL_KNOWN = {
    "resnet18": {"conv1.weight": [64, 3, 7, 7], "bn1.running_mean": [64],
                 "layer1.0.bn1.running_mean": [64], "layer2.0.downsample.0.weight": [128, 64, 1, 1],
                 "layer4.1.bn2.num_batches_tracked": [], "fc.weight": [1000, 512],
                 "fc.bias": [1000]},
    "resnet34": {"layer3.5.conv2.weight": [256, 256, 3, 3], "layer4.2.bn2.weight": [512],
                 "fc.weight": [1000, 512]},
    "resnet50": {"layer1.0.conv3.weight": [256, 64, 1, 1],
                 "layer1.0.downsample.1.running_var": [256], "layer2.0.conv2.weight":
                 [128, 128, 3, 3], "layer3.5.bn3.weight": [1024], "fc.weight": [1000, 2048]},
    "mobilenet_v3_small": {"features.0.0.weight": [16, 3, 3, 3],
                           "features.1.block.1.fc1.weight": [8, 16, 1, 1],
                           "features.12.0.weight": [576, 96, 1, 1],
                           "classifier.0.weight": [1024, 576], "classifier.3.weight": [1000, 1024]},
    "mobilenet_v3_large": {"features.0.1.running_var": [16], "features.1.block.0.0.weight":
                           [16, 1, 3, 3], "features.4.block.2.fc1.weight": [24, 72, 1, 1],
                           "features.16.0.weight": [960, 160, 1, 1],
                           "classifier.0.weight": [1280, 960], "classifier.3.weight": [1000, 1280]},
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def published(arch: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict in the published layout, of a randomly initialised network whose batch-norm
    statistics are not the trivial 0 and 1 (so a buffer that fails to load would show)."""
    torch.manual_seed(seed)
    net = REGISTRY[arch].build(3)
    state = net.state_dict()
    for key, value in state.items():
        if key.endswith("running_mean"):
            value.normal_(0, 0.1)
        elif key.endswith("running_var"):
            value.uniform_(0.5, 1.5)
        elif key.endswith("num_batches_tracked"):
            value.fill_(1234)
    return state


def encoder(arch: str, channels: int = 3, dim: int = 16):
    return build_encoder(EncoderConfig(arch, channels, 32, 32, dim))


def test_the_registry_is_the_config_list():
    assert tuple(REGISTRY) == BACKBONES


@pytest.mark.parametrize("arch", BACKBONES)
def test_state_dict_has_the_published_keys_shapes_and_parameter_count(arch):
    with torch.device("meta"):  # shapes only
        net = REGISTRY[arch].build(3)
    state = net.state_dict()
    assert sum(p.numel() for p in net.parameters()) == PUBLISHED_PARAMS[arch]
    for key, shape in WELL_KNOWN[arch].items():
        assert list(state[key].shape) == shape, key
    # the encoder keeps every key but the 1000-class layer, under "features."
    with torch.device("meta"):
        model = build_encoder(EncoderConfig(arch, 3, 32, 32, 8))
    kept = {k.removeprefix("features.") for k in model.state_dict() if k.startswith("features.")}
    assert kept == {k for k in state if not k.startswith(REGISTRY[arch].head)}


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small"])
def test_published_layout_weights_load_exactly_from_pth_and_safetensors(arch, tmp_path):
    state = published(arch)
    torch.save(state, tmp_path / "w.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "w.safetensors")
    reference = REGISTRY[arch].features(3)
    reference.load_state_dict({k: v for k, v in state.items()
                               if not k.startswith(REGISTRY[arch].head)})
    reference.eval()
    x = torch.randn(4, 3, 32, 32)
    for name in ("w.pth", "w.safetensors"):
        model = encoder(arch)
        load_backbone(model.features, arch, read_weights(tmp_path / name), name)
        for key, value in model.features.state_dict().items():
            assert torch.equal(value, state[key]), (name, key)
        with torch.no_grad():  # the encoder's features are the network's own, before its head
            assert torch.allclose(model.eval().features(x), reference(x), atol=1e-6)


def test_wrapped_checkpoints_and_ddp_prefixes_are_unwrapped(tmp_path):
    state = published("resnet18")
    torch.save({"epoch": 90, "state_dict": {f"module.{k}": v for k, v in state.items()}},
               tmp_path / "ckpt.pth")
    model = encoder("resnet18")
    load_backbone(model.features, "resnet18", read_weights(tmp_path / "ckpt.pth"), "ckpt.pth")
    assert torch.equal(model.features.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])


def test_a_greyscale_encoder_gets_the_rgb_stem_summed(tmp_path):
    state = published("resnet18")
    model = encoder("resnet18", channels=1)
    load_backbone(model.features, "resnet18", state, "w.pth")
    assert torch.allclose(model.features.conv1.weight,
                          state["conv1.weight"].sum(dim=1, keepdim=True))
    # grey input through the summed stem = the same grey on all three RGB channels
    rgb = REGISTRY["resnet18"].features(3)
    rgb.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")})
    grey = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.features.eval()(grey), rgb.eval()(grey.expand(-1, 3, -1, -1)),
                              atol=1e-5)


def test_another_backbones_weights_are_refused_naming_the_right_arch(tmp_path):
    state = published("resnet34")
    model = encoder("resnet18")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ModelError, match="are resnet34 weights, not resnet18: pass --arch "
                                         "resnet34") as info:
        load_backbone(model.features, "resnet18", state, "r34.pth")
    assert "\n" not in str(info.value)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # untouched
    assert fits(state) == ["resnet34"]


def test_missing_unexpected_and_misshapen_keys_are_named_in_one_line():
    state = published("resnet18")
    del state["bn1.running_var"]
    state["extra.weight"] = torch.zeros(3)
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 5, 5)
    state["fc.weight"] = torch.zeros(10, 512)  # a fine-tune's own head: dropped, never a problem
    with pytest.raises(ModelError) as info:
        load_backbone(encoder("resnet18").features, "resnet18", state, "bad.pth")
    message = str(info.value)
    assert message == ("weights bad.pth do not fit resnet18: 1 missing (bn1.running_var); "
                       "1 unexpected (extra.weight); 1 of the wrong shape "
                       "(layer1.0.conv1.weight [64, 64, 5, 5] (needs [64, 64, 3, 3]))")


def test_unreadable_files_are_model_errors(tmp_path):
    good = tmp_path / "good.pth"
    torch.save(published("resnet18"), good)
    (tmp_path / "cut.pth").write_bytes(good.read_bytes()[:100_000])
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    torch.save(REGISTRY["resnet18"].build(3), tmp_path / "pickled.pth")  # a whole module
    torch.save({"lr": 0.1}, tmp_path / "empty.pth")
    (tmp_path / "text.pth").write_text("not weights")
    cases = {"cut.pth": "cut.pth: the file is truncated or corrupt",
             "text.pth": "text.pth: not a PyTorch weights file",
             "junk.safetensors": "junk.safetensors: not a valid safetensors file",
             "pickled.pth": "pickled training.backbones.resnet.ResNet, not a state dict",
             "empty.pth": "holds no tensors",
             "absent.pth": "weights file not found"}
    for name, expected in cases.items():
        with pytest.raises(ModelError, match=expected) as info:
            read_weights(tmp_path / name)
        assert "\n" not in str(info.value), name


def test_pretrained_download_offline_is_one_clear_line(tmp_path, monkeypatch):
    # Offline for real: every HTTPS request goes to a proxy port where nothing listens.
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    # urllib builds its default opener, proxies included, on first use and keeps it: start from
    # none and have the one built here dropped afterwards, or later tests in this process would
    # still go through the dead proxy.
    monkeypatch.setattr(urllib.request, "_opener", None)
    with pytest.raises(ModelError, match=r"cannot download the resnet18 weights from "
                       r"https://download\.pytorch\.org/models/resnet18-f37072fd\.pth: .*"
                       r"pass --weights FILE") as info:
        download("resnet18", progress=False, model_dir=str(tmp_path))
    assert "\n" not in str(info.value)
    assert not list(tmp_path.glob("*.pth"))


def test_mobilenet_exports_to_onnx_with_parity_on_real_statistics(tmp_path):
    """A fresh MobileNetV3's batch norms (momentum 0.01) barely move in a few steps, so its
    outputs are nearly constant and any parity check would pass: give it real statistics."""
    torch.manual_seed(0)
    model = encoder("mobilenet_v3_small", dim=32)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # cumulative average: exact statistics of what it saw
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.rand(16, 3, 32, 32))
    model.eval()
    x = torch.rand(6, 3, 32, 32)
    with torch.no_grad():
        expected = model(x).numpy()
    cosines = expected @ expected.T
    assert cosines[np.triu_indices(6, 1)].min() < 0.99  # not collapsed: parity means something
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, (x[:2],), str(path), input_names=["images"],
                      output_names=["embeddings"], opset_version=17, dynamo=False,
                      dynamic_axes={"images": {0: "N"}, "embeddings": {0: "N"}})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"images": x.numpy()})
    assert np.max(np.abs(got - expected)) < 1e-4


def test_a_frozen_epoch_keeps_the_backbone_and_its_statistics_and_trains_the_head(tmp_path):
    from training.shapes import generate_shapes
    from training.train import TrainConfig, train

    generate_shapes(tmp_path / "data", per_class=6, size=32, seed=1)
    state = published("resnet18")
    torch.save(state, tmp_path / "w.pth")
    torch.manual_seed(0)  # the run's seed: the head starts as this one does
    head = encoder("resnet18").project.state_dict()
    logs: list[str] = []
    train(TrainConfig(data=str(tmp_path / "data"), out=str(tmp_path / "run"), arch="resnet18",
                      weights=str(tmp_path / "w.pth"), image_size=32, embedding_dim=16,
                      epochs=1, steps_per_epoch=2, freeze_epochs=1, classes_per_batch=9,
                      images_per_class=4, split="images", test_fraction=0.0, ways=5,
                      val_episodes=10, threads=1, seed=0), log=logs.append)
    assert "backbone frozen: only the projection head trains" in logs
    saved = torch.load(tmp_path / "run" / "best.pt", weights_only=True)["state_dict"]
    for key, value in saved.items():
        if key.startswith("features."):  # weights and batch-norm buffers exactly the file's
            assert torch.equal(value, state[key.removeprefix("features.")]), key
    moved = [k for k, v in head.items() if not torch.equal(saved[f"project.{k}"], v)]
    assert moved  # the projection head did train
