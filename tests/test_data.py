import torch

from orchestrator.data import ShardedBatches, load_dataset, load_mnist5k
from orchestrator.spec import DataSpec, ModelSpec


def test_mnist5k_is_real_scaled_and_labelled():
    images, labels = load_mnist5k()
    assert images.shape == (5000, 1, 28, 28)
    assert images.min() == -1 and images.max() == 1
    assert torch.bincount(labels).tolist() == [500] * 10
    # real digits: mostly background, a stroke in the middle
    assert (images == -1).float().mean() > 0.7
    assert images[:, :, 10:18, 10:18].mean() > images[:, :, :4, :].mean()


def test_resized_to_model_size():
    images, _ = load_dataset(DataSpec("mnist5k"), ModelSpec(image_size=32))
    assert images.shape == (5000, 1, 32, 32) and images.min() >= -1 and images.max() <= 1


def epoch_batches(images, labels, rank, world, batch, seed=0, epochs=1):
    it = iter(ShardedBatches(images, labels, batch_size=batch, rank=rank, world_size=world, seed=seed,
                             device=torch.device("cpu")))
    per_epoch = (len(images) // world) // batch
    return [next(it) for _ in range(per_epoch * epochs)]


def test_shards_are_disjoint_cover_the_epoch_and_reshuffle():
    ids = torch.arange(100, dtype=torch.float32).reshape(100, 1, 1, 1)
    labels = torch.arange(100)
    shards = [epoch_batches(ids, labels, rank, 2, 10, epochs=2) for rank in range(2)]
    first = [set(torch.cat([l for _, l in s[:5]]).tolist()) for s in shards]
    second = [set(torch.cat([l for _, l in s[5:]]).tolist()) for s in shards]
    assert first[0].isdisjoint(first[1]) and first[0] | first[1] == set(range(100))
    assert second[0] | second[1] == set(range(100))
    assert first[0] != second[0], "each epoch reshuffles"
    assert torch.equal(shards[0][0][0].flatten().long(), shards[0][0][1]), "images and labels stay paired"


def test_n_workers_times_b_sees_what_one_worker_times_nb_sees():
    ids = torch.arange(103, dtype=torch.float32).reshape(103, 1, 1, 1)
    labels = torch.arange(103)
    one = epoch_batches(ids, labels, 0, 1, 8, epochs=2)
    two = [epoch_batches(ids, labels, r, 2, 4, epochs=2) for r in range(2)]
    assert len(one) == len(two[0]) == len(two[1])
    for k, (_, big) in enumerate(one):
        assert set(big.tolist()) == set(two[0][k][1].tolist()) | set(two[1][k][1].tolist())
