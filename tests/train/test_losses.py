import numpy as np
import torch
import torch.nn.functional as F
from sklearn.utils.class_weight import compute_class_weight

from cnnlab.config import TrainConfig
from cnnlab.train.losses import FocalLoss, build_loss, class_weight_tensor


def test_focal_with_gamma_zero_is_cross_entropy():
    logits, y = torch.randn(20, 5), torch.randint(0, 5, (20,))
    torch.testing.assert_close(FocalLoss(0.0, None, 0.0)(logits, y), F.cross_entropy(logits, y))
    w = torch.rand(5) + 0.5
    torch.testing.assert_close(FocalLoss(0.0, w, 0.0)(logits, y), F.cross_entropy(logits, y, weight=w))
    torch.testing.assert_close(FocalLoss(0.0, None, 0.1)(logits, y), F.cross_entropy(logits, y, label_smoothing=0.1))


def test_focal_down_weights_easy_examples():
    logits = torch.tensor([[5.0, 0.0], [0.2, 0.0]])
    y = torch.tensor([0, 0])
    per = [FocalLoss(2.0, None, 0.0)(logits[i:i + 1], y[i:i + 1]) / F.cross_entropy(logits[i:i + 1], y[i:i + 1])
           for i in range(2)]
    assert per[0] < per[1]


def test_balanced_class_weights_match_sklearn():
    y = np.array([0] * 50 + [1] * 30 + [2] * 5)
    counts = np.bincount(y)
    ours = class_weight_tensor("balanced", counts).numpy()
    ref = compute_class_weight("balanced", classes=np.arange(3), y=y)
    np.testing.assert_allclose(ours, ref, rtol=1e-6)


def test_build_loss_uses_config():
    t = TrainConfig.model_validate({"loss": {"name": "focal", "gamma": 1.5}, "class_weights": [1.0, 2.0]})
    loss = build_loss(t, np.array([10, 10]))
    assert isinstance(loss, FocalLoss) and loss.gamma == 1.5
    assert torch.equal(loss.weight, torch.tensor([1.0, 2.0]))


def test_soft_targets_one_hot_equal_the_labels_loss_and_mixtures_interpolate():
    torch.manual_seed(0)
    logits, y = torch.randn(8, 5), torch.randint(0, 5, (8,))
    one_hot = F.one_hot(y, 5).float()
    for w in (None, torch.rand(5) + 0.5):
        focal = FocalLoss(2.0, w, 0.0)
        if w is None:  # the labels' mean and the soft mean agree when every image weighs 1
            assert torch.allclose(focal(logits, one_hot), focal(logits, y), atol=1e-6)
    # mixup's targets: the loss of a 0.3/0.7 mixture is the 0.3/0.7 mixture of the two losses
    y2 = torch.randint(0, 5, (8,))
    mixed = 0.3 * one_hot + 0.7 * F.one_hot(y2, 5).float()
    focal = FocalLoss(2.0, None, 0.0)
    per = lambda t: focal._soft(F.log_softmax(logits, 1), t)
    assert torch.allclose(per(mixed), 0.3 * per(one_hot) + 0.7 * per(F.one_hot(y2, 5).float()), atol=1e-6)
    ce = build_loss(TrainConfig(), np.ones(5))
    assert torch.allclose(ce(logits, mixed), 0.3 * ce(logits, y) + 0.7 * ce(logits, y2), atol=1e-6)


def test_one_hot_soft_targets_with_class_weights_give_the_labels_loss():
    """Mixup switched on without mixing anything must not change the loss: torch divides soft
    targets by the batch size, labels by the batch's class-weight mass (12.09 against 2.30 here)."""
    w = torch.arange(1.0, 11.0)
    logits, y = torch.randn(4, 10), torch.tensor([0, 3, 5, 9])
    one_hot = F.one_hot(y, 10).float()
    for smoothing in (0.0, 0.1):
        ce = build_loss(TrainConfig(class_weights=w.tolist(), label_smoothing=smoothing), np.ones(10))
        assert torch.allclose(ce(logits, one_hot), ce(logits, y), atol=1e-5)
    focal = FocalLoss(2.0, w, 0.0)
    assert torch.allclose(focal(logits, one_hot), focal(logits, y), atol=1e-5)


def test_focal_gradients_stay_finite_when_a_probability_rounds_to_one():
    for target in (torch.tensor([[0.0, 0.6, 0.4, 0.0]]), torch.tensor([0])):  # confidently wrong / right
        logits = torch.tensor([[30.0, 0.0, 0.0, 0.0]], requires_grad=True)
        FocalLoss(0.5, None, 0.0)(logits, target).backward()
        assert torch.isfinite(logits.grad).all()
