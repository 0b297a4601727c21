"""Random and tube mask generators: exact ratios, determinism, structure, batch validation."""

from __future__ import annotations

import pytest
import torch

from tgmae.config import MaskingConfig
from tgmae.masking import MaskContext, RandomMask, TubeMask, build_mask_generator, check_mask, num_masked
from tgmae.mask_contract import CropParams

GRID = (8, 14, 14)


@pytest.mark.parametrize("cls", [RandomMask, TubeMask])
@pytest.mark.parametrize("ratio", [0.5, 0.6, 0.75, 0.9])
def test_exact_count_and_determinism(cls, ratio):
    gen = cls(ratio)
    ctx = MaskContext(grid=GRID)
    a = gen(ctx, torch.Generator().manual_seed(1))
    b = gen(ctx, torch.Generator().manual_seed(1))
    c = gen(ctx, torch.Generator().manual_seed(2))
    assert a.dtype == torch.bool and a.shape == (8 * 14 * 14,)
    assert torch.equal(a, b) and not torch.equal(a, c)
    per = 14 * 14 if cls is TubeMask else 8 * 14 * 14
    assert int(a.sum()) == num_masked(per, ratio) * (8 if cls is TubeMask else 1)


def test_tube_mask_is_constant_over_time_random_is_not():
    g = torch.Generator().manual_seed(0)
    tube = TubeMask(0.9)(MaskContext(grid=GRID), g).view(GRID)
    assert all(torch.equal(tube[0], tube[t]) for t in range(8))
    rand = RandomMask(0.9)(MaskContext(grid=GRID), g).view(GRID)
    assert not all(torch.equal(rand[0], rand[t]) for t in range(8))


def test_generators_do_not_touch_global_rng():
    torch.manual_seed(5)
    before = torch.get_rng_state()
    RandomMask(0.5)(MaskContext(grid=GRID), torch.Generator().manual_seed(0))
    TubeMask(0.5)(MaskContext(grid=GRID), torch.Generator().manual_seed(0))
    assert torch.equal(before, torch.get_rng_state())


def test_num_masked_keeps_one_visible_token():
    assert num_masked(196, 0.9) == 176
    assert num_masked(4, 0.99) == 3 and num_masked(4, 0.01) == 1


def test_check_mask_rejects_unequal_visible_counts():
    m = torch.zeros(2, 10, dtype=torch.bool)
    m[0, :5] = True
    m[1, :4] = True
    with pytest.raises(ValueError, match=r"same number of visible tokens.*\[5, 6\]"):
        check_mask(m)
    m[1, 4] = True
    assert check_mask(m, 10) == 5
    with pytest.raises(ValueError, match="expects 12"):
        check_mask(m, 12)
    with pytest.raises(ValueError, match="bool"):
        check_mask(m.float())
    with pytest.raises(ValueError, match="hides every token"):
        check_mask(torch.ones(2, 10, dtype=torch.bool))


def test_crop_roundtrip():
    crop = CropParams(1.0, 2.0, 30.0, 40.0, True, 100, 120)
    assert CropParams.from_tensor(crop.as_tensor()) == crop


def test_factory():
    assert isinstance(build_mask_generator(MaskingConfig(name="tube", ratio=0.9)), TubeMask)
    assert isinstance(build_mask_generator(MaskingConfig(name="random", ratio=0.5)), RandomMask)
