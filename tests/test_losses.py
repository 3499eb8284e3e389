"""Every loss term against numbers computed by hand on tiny tensors: each released form (docs/distillation.md:
Smooth-L1 with beta 1, or MSE, on latents as they are, log(depth + 1e-8) on both sides, raw flow
pixels, motion logits against the teacher's logits, raw rays) and each kept alternative (L1, flow over
the map side, motion as a BCE against the teacher's probability); the masking of invalid depth and of
samples without a target."""
from __future__ import annotations

from math import exp, log

import pytest
import torch

from student.losses import latent_loss_per_sample, map_loss_per_sample, masked_mean


def smooth_l1(d: float) -> float:
    """Smooth-L1 with beta 1, written out: 0.5 d^2 below 1, |d| - 0.5 from 1 on."""
    return 0.5 * d * d if abs(d) < 1 else abs(d) - 0.5


PENALTY = {"smooth_l1": smooth_l1, "mse": lambda d: d * d, "l1": abs}
# Two samples of four elements each: differences pred - target on both sides of the Smooth-L1 knee.
DIFFS = [[0.5, -2.0, 0.0, 1.0], [3.0, -0.25, 0.75, -1.5]]


def by_hand(kind: str, diffs: list[list[float]], scale: float = 1.0) -> list[float]:
    return [sum(PENALTY[kind](d * scale) for d in row) / len(row) for row in diffs]


def pair(shape: tuple[int, ...], diffs=DIFFS) -> tuple[torch.Tensor, torch.Tensor]:
    target = (torch.arange(8.0) * 0.25 - 1.0).reshape(shape)  # exact in bfloat16, as are the sums
    return target + torch.tensor(diffs).reshape(shape), target


# -- L_LD ------------------------------------------------------------------------------------------
def test_latent_loss_smooth_l1_and_mse_by_hand():
    pred, target = pair((2, 2, 1, 2))  # [B, hooks, tokens, C]
    # 0.125 + 1.5 + 0 + 0.5 = 2.125 / 4; 2.5 + 0.03125 + 0.28125 + 1.0 = 3.8125 / 4
    assert by_hand("smooth_l1", DIFFS) == pytest.approx([0.53125, 0.953125])
    torch.testing.assert_close(latent_loss_per_sample(pred, target), torch.tensor([0.53125, 0.953125]))
    torch.testing.assert_close(latent_loss_per_sample(pred, target, "smooth_l1"), torch.tensor([0.53125, 0.953125]))
    # 0.25 + 4 + 0 + 1 = 5.25 / 4; 9 + 0.0625 + 0.5625 + 2.25 = 11.875 / 4
    torch.testing.assert_close(latent_loss_per_sample(pred, target, "mse"), torch.tensor([1.3125, 2.96875]))
    with pytest.raises(ValueError, match="loss kind must be one of"):
        latent_loss_per_sample(pred, target, "huber")


def test_latent_loss_is_computed_in_float32_for_bfloat16_predictions():
    pred, target = pair((2, 2, 1, 2))
    loss = latent_loss_per_sample(pred.bfloat16(), target)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, torch.tensor([0.53125, 0.953125]))  # these values are exact in bfloat16


# -- L_ED, released forms ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["smooth_l1", "mse", "l1"])
def test_flow_dyn_mask_and_camray_compare_raw_values(kind):
    """flow in raw pixels, motion logits against the teacher's logits, camray's raw rays: the penalty of
    the plain difference."""
    expected = torch.tensor(by_hand(kind, DIFFS))
    shapes = {"flow": (2, 2, 1, 1, 2), "dyn_mask": (2, 1, 2, 2), "camray": (2, 1, 2, 1, 1, 1, 2)}
    for task, shape in shapes.items():
        pred, target = pair(shape)
        torch.testing.assert_close(map_loss_per_sample(task, pred, target, kind), expected, msg=task)


def test_the_released_forms_are_the_default_ones():
    for task, shape in {"flow": (2, 2, 1, 1, 2), "dyn_mask": (2, 1, 2, 2), "camray": (2, 1, 2, 1, 1, 1, 2)}.items():
        pred, target = pair(shape)
        torch.testing.assert_close(map_loss_per_sample(task, pred, target),
                                   torch.tensor(by_hand("smooth_l1", DIFFS)), msg=task)


def depth_case() -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """[1, 1, 1, 5]: log-depth predictions, metric targets, and each pixel's difference of
    log(depth + 1e-8) by hand (None: the pixel has no depth)."""
    cases = [
        (log(2.0), 8.0, log(2.0) - log(8.0)),  # -1.386: past the knee
        (log(3.0), 3.3, log(3.0 / 3.3)),  # -0.095: below it
        (log(1e-8), 1e-8, log(2e-8) - log(2e-8)),  # the epsilon on both sides: exactly 0
        (-50.0, 3e-8, log(1e-8) - log(4e-8)),  # exp(-50) vanishes beside 1e-8: -log 4
        (5.0, 0.0, None),  # depth 0: the cache's "no depth", left out
    ]
    pred = torch.tensor([[[[c[0] for c in cases]]]])
    target = torch.tensor([[[[c[1] for c in cases]]]])
    return pred, target, [c[2] for c in cases]


@pytest.mark.parametrize("kind", ["smooth_l1", "mse", "l1"])
def test_depth_compares_log_depth_plus_1e_8_on_both_sides_where_there_is_depth(kind):
    pred, target, diffs = depth_case()
    valid = [d for d in diffs if d is not None]
    expected = sum(PENALTY[kind](d) for d in valid) / len(valid)
    loss = map_loss_per_sample("depth", pred, target, kind)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    if kind == "smooth_l1":
        assert expected == pytest.approx((0.886294 + 0.004542 + 0.0 + 0.886294) / 4, rel=1e-5)


def test_depth_is_a_mean_over_each_samples_own_pixels_with_depth():
    pred, target, _ = depth_case()
    one = torch.zeros_like(target)
    one[..., 0] = 8.0  # a single pixel with depth: its own error, log(2) - log(8)
    empty = torch.zeros_like(target)
    loss = map_loss_per_sample("depth", torch.cat([pred, pred, pred]), torch.cat([target, one, empty]))
    assert loss[0].item() == pytest.approx((0.886294 + 0.004542 + 0.886294) / 4, rel=1e-5)
    assert loss[1].item() == pytest.approx(0.886294, rel=1e-5)
    assert loss[2].item() == 0.0


# -- L_ED, kept alternatives ----------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["smooth_l1", "l1"])
def test_flow_over_the_map_side(kind):
    pred, target = pair((1, 2, 1, 1, 4))  # one sample, 2 channels; the map's side (width) is 4
    diffs = [DIFFS[0] + DIFFS[1]]
    torch.testing.assert_close(map_loss_per_sample("flow", pred, target, kind, "map_side"),
                               torch.tensor(by_hand(kind, diffs, scale=0.25)))


def test_motion_bce_against_the_sigmoid_of_the_cached_logit():
    z, teacher_logit = 1.0, log(3.0)  # the teacher's probability is 0.75
    p = 1 / (1 + exp(-teacher_logit))
    bce = p * log(1 + exp(-z)) + (1 - p) * log(1 + exp(z))  # BCE of sigmoid(z) against p: 0.5633
    pred, target = torch.full((1, 2, 3, 3), z), torch.full((1, 2, 3, 3), teacher_logit)
    for kind in ("smooth_l1", "mse"):  # the BCE is its own penalty
        assert map_loss_per_sample("dyn_mask", pred, target, kind, "bce").item() == pytest.approx(bce, rel=1e-6)
    # The released form on the same numbers: Smooth-L1 of the logits' difference 1 - log 3 = -0.0986.
    released = map_loss_per_sample("dyn_mask", pred, target).item()
    assert released == pytest.approx(0.5 * (1 - log(3.0)) ** 2, rel=1e-5)


def test_unknown_tasks_and_forms_are_refused():
    pred, target = pair((2, 1, 2, 2))
    with pytest.raises(ValueError, match="unknown map task 'normals'"):
        map_loss_per_sample("normals", pred, target)
    with pytest.raises(ValueError, match=r"camray: form must be one of \('rays',\), got 'bce'"):
        map_loss_per_sample("camray", pred, target, "smooth_l1", "bce")


# -- masking ----------------------------------------------------------------------------------------
def test_masked_mean_counts_only_valid_samples_or_the_given_count():
    values = torch.tensor([2.0, 100.0, 5.0], requires_grad=True)
    valid = torch.tensor([True, False, True])
    assert masked_mean(values, valid).item() == 3.5  # (2 + 5) / 2
    assert masked_mean(values, torch.tensor([False, False, True])).item() == 5.0
    assert masked_mean(values, valid, torch.tensor(4.0)).item() == 1.75  # the global count
    none = masked_mean(values, torch.zeros(3, dtype=torch.bool))
    none.backward()
    assert none.item() == 0.0 and values.grad.tolist() == [0.0, 0.0, 0.0]
