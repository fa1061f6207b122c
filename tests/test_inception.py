"""Standard Inception FID weights: the torch hub cache, the download, and the offline message, without a network."""

from __future__ import annotations

from urllib.error import URLError

import pytest
import torch
import torch.nn as nn

import lightning_modules.metrics as metrics

pytest.importorskip("torch_fidelity")  # the module14[inception] extra (in [dev])


class FakeInception(nn.Module):
    """Stands in for torchmetrics' NoTrainInceptionV3: records the weights file it was given, loads nothing."""

    weights_paths: list[str] = []

    def __init__(self, name: str, features_list: list[str], feature_extractor_weights_path: str) -> None:
        super().__init__()
        FakeInception.weights_paths.append(feature_extractor_weights_path)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.float().flatten(1)[:, :2048]


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """torch hub's folder in tmp_path, a fake Inception network, and no download unless a test allows one."""
    import torchmetrics.image.fid

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torchmetrics.image.fid, "NoTrainInceptionV3", FakeInception)
    FakeInception.weights_paths = []

    def offline(url, dst, *args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return tmp_path / "hub" / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth"


def test_offline_without_cached_weights_names_the_file_the_url_and_the_cache_path(hub):
    with pytest.raises(FileNotFoundError) as err:
        metrics.SampleQuality(features="inception")
    message = str(err.value)
    assert "weights-inception-2015-12-05-6726825d.pth" in message
    assert metrics.INCEPTION_URL in message
    assert f"put it at {hub} " in message
    assert FakeInception.weights_paths == []


def test_cached_weights_are_found_and_used_without_a_download(hub):
    hub.parent.mkdir(parents=True)
    hub.write_bytes(b"fake weights")
    quality = metrics.SampleQuality(features="inception")
    assert FakeInception.weights_paths == [str(hub)]
    quality.update(torch.rand(4, 3, 32, 32), real=True)
    quality.update(torch.rand(4, 3, 32, 32), real=False)
    assert set(quality.compute()) == {"fid_inception", "kid_inception", "kid_std_inception"}


def test_missing_weights_are_downloaded_once_into_the_cache(hub, monkeypatch):
    downloads = []

    def download(url, dst, *args, **kwargs):
        downloads.append(url)
        with open(dst, "wb") as f:
            f.write(b"fake weights")

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    metrics.InceptionFeatures()
    metrics.InceptionFeatures()
    assert downloads == [metrics.INCEPTION_URL]
    assert FakeInception.weights_paths == [str(hub), str(hub)]


def test_a_given_weights_file_is_used_and_a_missing_one_is_an_error(hub, tmp_path):
    weights = tmp_path / "my_inception.pth"
    with pytest.raises(FileNotFoundError, match="my_inception.pth"):
        metrics.InceptionFeatures(str(weights))
    weights.write_bytes(b"fake weights")
    metrics.InceptionFeatures(str(weights))
    assert FakeInception.weights_paths == [str(weights)]
