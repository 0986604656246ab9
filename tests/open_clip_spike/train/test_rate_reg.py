"""The firing-rate regulariser (energy-aware training): the term, the rate collector, its effect, the CLI flags."""
import pytest
import torch

import open_clip
from open_clip_spike.loss import AlignmentLoss, DualLoss, SpikeRateCollector, firing_rate_loss
from timm_spike.energy import FiringRateRecorder
from timm_spike.layers import is_spiking_neuron

from ..conftest import TINY
from . import test_train
from .test_train import _cmd, _csv, _losses, _ok, _run

digits = test_train.digits  # the module-scoped fixture of real images (scikit-learn digits as PNG)


def test_firing_rate_loss_by_hand():
    rates = torch.tensor([0.1, 0.3, 0.5])
    # ((0.1-0.2)^2 + (0.3-0.2)^2 + (0.5-0.2)^2) / 3 = (0.01 + 0.01 + 0.09) / 3
    assert firing_rate_loss(rates, 0.2).item() == pytest.approx(0.11 / 3)
    assert firing_rate_loss(rates, 0.2, 'hinge').item() == pytest.approx(0.10 / 3)  # 0.1 is below target: free
    assert firing_rate_loss(rates, 0.0).item() == pytest.approx((0.01 + 0.09 + 0.25) / 3)
    with pytest.raises(ValueError, match='Unknown firing-rate penalty'):
        firing_rate_loss(rates, 0.2, 'l1')
    with pytest.raises(ValueError, match='non-empty'):
        firing_rate_loss(torch.tensor([]), 0.2)


def test_both_losses_add_rate_loss():
    g = torch.Generator().manual_seed(0)
    f, t = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    rates = torch.tensor([0.4, 0.1])
    expected = 3.0 * ((0.4 - 0.1) ** 2 + 0.0) / 2
    align = AlignmentLoss(text_weight=0, rate_weight=3.0, rate_target=0.1)
    out = align(f, None, torch.tensor(10.), dist_image_features=t, spike_rates=rates, output_dict=True)
    assert set(out) == {'image_align_loss', 'rate_loss'}
    assert out['rate_loss'].item() == pytest.approx(expected)
    total = align(f, None, torch.tensor(10.), dist_image_features=t, spike_rates=rates)
    assert total.item() == pytest.approx(out['image_align_loss'].item() + expected)

    L = torch.nn.functional.normalize(torch.randn(8, 3, generator=g), dim=0)
    dual = DualLoss(L, kl_weight=0, rate_weight=3.0, rate_target=0.1)
    out = dual(f, torch.tensor(10.), labels=torch.tensor([0, 1, 2, 0]), spike_rates=rates, output_dict=True)
    assert set(out) == {'ce_loss', 'rate_loss'} and out['rate_loss'].item() == pytest.approx(expected)

    # off by default: no term, no rates needed
    assert set(DualLoss(L, kl_weight=0)(f, torch.tensor(10.), labels=torch.tensor([0, 1, 2, 0]),
                                        output_dict=True)) == {'ce_loss'}
    with pytest.raises(ValueError, match='spike_rates is missing.*SpikeRateCollector'):
        dual(f, torch.tensor(10.), labels=torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match='rate_weight must be >= 0'):
        AlignmentLoss(rate_weight=-1)
    with pytest.raises(ValueError, match=r'rate_target .* in \[0, 1\]'):
        DualLoss(L, rate_weight=1, rate_target=1.5)
    with pytest.raises(ValueError, match='Unknown rate_mode'):
        DualLoss(L, rate_weight=1, rate_mode='cubic')


def test_collector_rates_match_measured_rates_and_carry_gradients(images):
    model = open_clip.create_model(TINY, output_dict=True).train()
    neurons = [m for m in model.modules() if is_spiking_neuron(m)]
    collector = SpikeRateCollector(model)
    text = open_clip.get_tokenizer(TINY)(['a photo of a cat.'] * len(images))
    with FiringRateRecorder(model) as rec:
        out = model(images, text)
    rates = out['spike_rates']
    assert rates.shape == (len(neurons),) and rates.requires_grad  # every neuron of both towers ran once
    measured = rec.rates()
    assert sorted(rates.tolist()) == pytest.approx(sorted(measured.values()), abs=1e-6)
    assert 0 < rates.max().item() <= 1
    rates.sum().backward()
    stem = next(p for n, p in model.visual.named_parameters() if p.ndim == 4)  # the first conv
    assert stem.grad is not None and stem.grad.abs().sum() > 0  # surrogate gradient reaches the input conv
    # evaluation is untouched: no rates in eval mode or without gradients
    with torch.no_grad():
        assert 'spike_rates' not in model(images, text)
    assert 'spike_rates' not in model.eval()(images, text)
    collector.remove()
    assert 'spike_rates' not in model.train()(images, text)
    with pytest.raises(ValueError, match='no spiking neurons'):
        SpikeRateCollector(torch.nn.Linear(2, 2))


def _train_steps(rate_weight, images, steps=4):
    torch.manual_seed(0)
    model = open_clip.create_model(TINY, output_dict=True).train()
    SpikeRateCollector(model)
    with torch.no_grad():
        teacher = model(images, None)['image_features'].detach()  # the starting point: alignment near 0
    loss_fn = AlignmentLoss(text_weight=0, rate_weight=rate_weight, rate_target=0.0)
    opt = torch.optim.Adam([p for p in model.visual.parameters()], lr=5e-2)
    first = None
    for _ in range(steps):
        out = model(images, None)
        rate = out['spike_rates'].mean().item()
        first = rate if first is None else first
        loss = loss_fn(**out, dist_image_features=teacher)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        model.train()
        with FiringRateRecorder(model.visual) as rec:
            model(images, None)
    return first, rec.mean_rate()


def test_large_rate_weight_lowers_the_firing_rate(images):
    start, regularised = _train_steps(100.0, images)
    _, control = _train_steps(0.0, images)
    assert start > 0.02
    assert regularised < 0.65 * start  # four Adam steps already silence a third of the spikes
    assert regularised < 0.65 * control  # and not because of the alignment steps alone


def test_train_cli_logs_rate_loss(digits, capsys):
    _ok(_run(_cmd(digits, 'rate', *_csv(digits), '--epochs', '1', '--spike-text-weight', '0',
                  '--spike-rate-weight', '2', '--spike-rate-target', '0.05')))
    rate = _losses(digits, 'rate', 'Rate_loss')
    align = _losses(digits, 'rate', 'Image_align_loss')
    assert len(rate) == len(align) == 3  # 12 images / batch 4: one value per step
    assert all(r > 0 for r in rate)
    # stage 2: rate_loss next to ce and kl, and the total is their sum
    _ok(_run(_cmd(digits, 'rate2', *_csv(digits), '--epochs', '1', '--spike-loss', 'dual',
                  '--spike-classnames', str(digits / 'classes.txt'), '--spike-templates', str(digits / 'templates.txt'),
                  '--spike-rate-weight', '2', '--spike-rate-target', '0.05', '--spike-rate-mode', 'hinge')))
    total, ce, kl, rate2 = (_losses(digits, 'rate2', k) for k in ('Loss', 'Ce_loss', 'Kl_loss', 'Rate_loss'))
    assert len(total) == len(rate2) == 3 and all(r >= 0 for r in rate2)
    assert all(abs(t - (c + k + r)) < 1e-4 * t for t, c, k, r in zip(total, ce, kl, rate2))
    from open_clip_spike.train import main
    assert main(_cmd(digits, 'bad_rate', *_csv(digits), '--spike-rate-target', '2', module=False)) == 2
    assert 'in [0, 1]' in capsys.readouterr().err
