import pytest
import torch

from mae.errors import UserError
from mae.models.masking import BlockSampler, GridSampler, RandomSampler, build_sampler, num_kept, sample_from_mask


def reference_random_masking(n, num_patches, ratio, device="cpu"):
    """The reference masking (docs/ARCHITECTURE.md, "Reference facts"), transcribed directly."""
    len_keep = int(num_patches * (1 - ratio))
    noise = torch.rand(n, num_patches, device=device)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(n, num_patches)
    mask[:, :len_keep] = 0
    return ids_shuffle[:, :len_keep], torch.gather(mask, 1, ids_restore), ids_restore


@pytest.mark.parametrize("ratio", [0.75, 0.5, 0.9, 0.0])
def test_random_sampler_is_the_reference_draw(ratio):
    torch.manual_seed(3)
    got = RandomSampler()(5, (8, 8), ratio)
    torch.manual_seed(3)
    keep, mask, restore = reference_random_masking(5, 64, ratio)
    assert torch.equal(got.ids_keep, keep) and torch.equal(got.mask, mask) and torch.equal(got.ids_restore, restore)
    assert (got.mask.sum(1) == 64 - int(64 * (1 - ratio))).all()


def test_same_seed_same_mask_different_seed_differs():
    s = RandomSampler()
    torch.manual_seed(0)
    a = s(4, (8, 8), 0.75).mask
    torch.manual_seed(0)
    b = s(4, (8, 8), 0.75).mask
    torch.manual_seed(1)
    c = s(4, (8, 8), 0.75).mask
    assert torch.equal(a, b) and not torch.equal(a, c)


def _check_consistent(sample, num_patches):
    n, k = sample.ids_keep.shape
    kept_from_mask = [set((sample.mask[i] == 0).nonzero().flatten().tolist()) for i in range(n)]
    for i in range(n):
        assert set(sample.ids_keep[i].tolist()) == kept_from_mask[i]
    # [kept, removed] gathered with ids_restore is the original order
    order = torch.arange(num_patches).expand(n, -1)
    removed_ids = torch.stack([(sample.mask[i] == 1).nonzero().flatten() for i in range(n)])
    shuffled = torch.cat([sample.ids_keep, removed_ids], dim=1)
    assert torch.equal(torch.gather(shuffled, 1, sample.ids_restore), order)


@pytest.mark.parametrize("ratio", [0.75, 0.5, 0.4])
def test_block_sampler_exact_count_and_clustered(ratio):
    torch.manual_seed(0)
    sample = BlockSampler()(64, (8, 8), ratio)
    expected = 64 - num_kept(64, ratio)
    assert (sample.mask.sum(1) == expected).all()
    _check_consistent(sample, 64)
    torch.manual_seed(0)
    rnd = RandomSampler()(64, (8, 8), ratio)

    def right_neighbour_agreement(m):
        g = m.view(-1, 8, 8)
        return ((g[:, :, 1:] == 1) & (g[:, :, :-1] == 1)).float().sum() / (g == 1).float().sum()

    assert right_neighbour_agreement(sample.mask) > right_neighbour_agreement(rnd.mask) + 0.05
    torch.manual_seed(0)
    again = BlockSampler()(64, (8, 8), ratio)
    assert torch.equal(again.mask, sample.mask)


def test_block_sampler_larger_grid():
    torch.manual_seed(1)
    sample = BlockSampler()(8, (14, 14), 0.75)
    assert (sample.mask.sum(1) == 196 - 49).all()


def test_grid_sampler_keeps_one_of_each_2x2():
    sample = GridSampler()(3, (8, 8), 0.75)
    assert sample.ids_keep.shape == (3, 16)
    kept = (1 - sample.mask).view(3, 4, 2, 4, 2).sum(dim=(2, 4))
    assert (kept == 1).all()
    _check_consistent(sample, 64)
    torch.manual_seed(0)
    rnd = GridSampler(random_offset=True)(16, (8, 8), 0.75)
    assert ((1 - rnd.mask).view(16, 4, 2, 4, 2).sum(dim=(2, 4)) == 1).all()


def test_grid_sampler_rejects_other_ratios():
    with pytest.raises(UserError, match="grid"):
        GridSampler()(2, (8, 8), 0.5)
    assert GridSampler()(1, (9, 9), 8 / 9).ids_keep.shape == (1, 9)


def test_build_sampler_errors_and_mask_helper():
    with pytest.raises(UserError, match="unknown sampler 'x'"):
        build_sampler("x")
    with pytest.raises(ValueError):
        sample_from_mask(torch.tensor([[True, False], [True, True]]))
    with pytest.raises(UserError, match="mask_ratio"):
        RandomSampler()(1, (2, 2), 1.0)
