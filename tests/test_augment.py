"""``augment: basic`` on whole batches (``datamodules/augment.py``): the same distribution as torchvision's per-image
RandomCrop(padding) + RandomHorizontalFlip, black borders as served, training batches only, a draw per rank, and
the same draws after a resume."""

from __future__ import annotations

import pytest
import torch
from conftest import on_trainer
from torchvision.transforms import v2

from datamodules import CIFAR10DataModule, MNISTDataModule
from datamodules.augment import ShiftFlip
from datamodules.base import InMemoryImages

N, SIZE = 6000, 7


def marker_images(n: int) -> torch.Tensor:
    """(n, 1, 7, 7) uint8: one white pixel left of the centre, so a shift and a flip move it apart."""
    images = torch.zeros(n, 1, SIZE, SIZE, dtype=torch.uint8)
    images[:, :, 3, 2] = 255
    return images


def marker_counts(images: torch.Tensor) -> torch.Tensor:
    """How many images have their marker at each of the (7 x 7) positions (an image shifted off the edge: none)."""
    found = images.flatten(1).amax(1) > 0
    return torch.bincount(images[found].flatten(1).argmax(1), minlength=SIZE * SIZE).float()


def chi_square(counts: torch.Tensor, expected: torch.Tensor) -> float:
    cells = expected > 0
    assert counts[~cells].sum() == 0, "markers where neither path can put one"
    return float(((counts[cells] - expected[cells]) ** 2 / expected[cells]).sum())


def exact_law(padding: int, flip: bool) -> torch.Tensor:
    """Expected marker counts: shifts uniform on the (2 padding + 1)^2 offsets, flips (column 2 -> 4) with
    probability 1/2."""
    offsets = [(dy, dx) for dy in range(-padding, padding + 1) for dx in range(-padding, padding + 1)]
    columns = [2, 4] if flip else [2]
    expected = torch.zeros(SIZE * SIZE)
    for dy, dx in offsets:
        for column in columns:
            expected[(3 + dy) * SIZE + column + dx] += N / len(offsets) / len(columns)
    return expected


def limit(expected: torch.Tensor) -> float:
    """Chi-square's mean + 5 standard deviations at these degrees of freedom."""
    dof = int((expected > 0).sum()) - 1
    return dof + 5 * (2 * dof) ** 0.5


@pytest.mark.parametrize("augmentation", [ShiftFlip(padding=2, flip=False), ShiftFlip(padding=1, flip=True),
                                          ShiftFlip(padding=0, flip=True)])
def test_the_batched_draws_are_distributed_as_torchvisions_per_image_ones(augmentation):
    torch.manual_seed(0)
    per_image = v2.Compose(augmentation.per_image(SIZE))
    reference = marker_counts(torch.stack([per_image(image) for image in marker_images(N)]))
    batched = marker_counts(augmentation(marker_images(N).float(), torch.zeros(1), torch.Generator().manual_seed(1)))
    expected = exact_law(augmentation.padding, augmentation.flip)
    assert chi_square(reference, expected) < limit(expected) and chi_square(batched, expected) < limit(expected)


def test_the_check_tells_an_off_by_one_shift_apart():
    """Negative control: offsets from -2 to 1 (the last one never drawn) fail the same check."""
    top, left = torch.randint(0, 4, (2, N), generator=torch.Generator().manual_seed(1)) - 2
    counts = torch.bincount((3 + top) * SIZE + 2 + left, minlength=SIZE * SIZE).float()
    assert chi_square(counts, exact_law(2, flip=False)) > limit(exact_law(2, flip=False))


@pytest.fixture
def mnist(data_dir):
    data = MNISTDataModule(data_dir=str(data_dir), augment="basic", normalization="mean_std", batch_size=64,
                           num_workers=0, val_size=5000)
    data.setup("fit")
    return data


def test_basic_augments_training_batches_only_and_serves_them_from_memory(mnist, monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "7")
    assert isinstance(mnist.train_set.dataset, InMemoryImages)  # no per-image PIL pipeline for basic any more
    images, labels = next(iter(mnist.train_dataloader()))
    on_trainer(mnist, training=False)  # validation, test, predict (trainer.training False)
    assert mnist.on_after_batch_transfer((images, labels), 0)[0] is images
    mnist.trainer = None  # no trainer
    assert mnist.on_after_batch_transfer((images, labels), 0)[0] is images
    assert mnist.augmented_batches == 0
    example = torch.zeros(2, 1, 32, 32)  # what the model summary sends through the hook at the start of fit
    assert on_trainer(mnist, training=True).on_after_batch_transfer(example, 0) is example
    assert mnist.augmented_batches == 0
    augmented, kept = on_trainer(mnist, training=True).on_after_batch_transfer((images, labels), 0)
    assert kept is labels and augmented.shape == images.shape and not torch.equal(augmented, images)
    assert mnist.augmented_batches == 1 and mnist.state_dict() == {"augmented_batches": 1}
    black = -0.1307 / 0.3081  # a black pixel standardised: what RandomCrop's padding is served as
    assert torch.isclose(augmented.amin(), torch.tensor(black)) and torch.isclose(images.amin(), torch.tensor(black))


def test_ranks_draw_differently_and_a_resumed_run_draws_as_the_uninterrupted_one(mnist, monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "7")
    images, labels = next(iter(mnist.train_dataloader()))
    draws = [on_trainer(mnist, True, rank=0).on_after_batch_transfer([images, labels], 0)[0] for _ in range(3)]
    state = {"augmented_batches": 2}
    mnist.load_state_dict(state)  # a run resumed after two batches
    assert torch.equal(on_trainer(mnist, True).on_after_batch_transfer([images, labels], 0)[0], draws[2])
    mnist.load_state_dict({"augmented_batches": 0})
    other_rank = on_trainer(mnist, True, rank=1).on_after_batch_transfer([images, labels], 0)[0]
    assert not torch.equal(other_rank, draws[0])


def test_cifar_flips_mirror_the_image_and_keep_the_label(data_dir):
    data = CIFAR10DataModule(data_dir=str(data_dir), augment="basic", verify_integrity=False, num_workers=0,
                             normalization="zero_one", val_size=100)
    assert data.basic_augmentation() == ShiftFlip(padding=4, flip=True)
    flip_only = ShiftFlip(padding=0, flip=True)
    images = torch.rand(256, 3, 8, 8)
    out = flip_only(images, torch.zeros(3), torch.Generator().manual_seed(0))
    mirrored = (out == images.flip(-1)).flatten(1).all(1)
    assert ((out == images).flatten(1).all(1) | mirrored).all() and 0.35 < mirrored.float().mean() < 0.65
