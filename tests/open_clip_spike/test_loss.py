import math
import os
import socket

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from open_clip_spike.loss import AlignmentLoss, DualLoss


def test_alignment_cosine_terms_exact():
    # Hand-picked vectors: cos = 1, 0, -1 -> 1 - cos = 0, 1, 2 -> mean 1.
    s = torch.tensor([[1., 0.], [0., 2.], [3., 0.]])
    t = torch.tensor([[2., 0.], [5., 0.], [-1., 0.]])
    loss = AlignmentLoss(image_weight=0.5, text_weight=2.0)
    out = loss(image_features=s, text_features=s[:2], logit_scale=torch.tensor(1.),
               dist_image_features=t, dist_text_features=t[:2], output_dict=True)
    assert set(out) == {'image_align_loss', 'text_align_loss'}
    assert out['image_align_loss'].item() == pytest.approx(0.5 * 1.0)
    assert out['text_align_loss'].item() == pytest.approx(2.0 * 0.5)   # (0 + 1) / 2
    total = loss(image_features=s, text_features=s[:2], logit_scale=torch.tensor(1.),
                 dist_image_features=t, dist_text_features=t[:2])
    assert total.item() == pytest.approx(1.5)


def test_alignment_zero_for_identical_features_and_gradient_flows():
    x = torch.randn(4, 8, requires_grad=True)
    y = torch.randn(4, 8, requires_grad=True)
    loss = AlignmentLoss()
    assert loss(x, y, torch.tensor(1.), dist_image_features=x.detach() * 3, dist_text_features=y.detach()).item() \
        == pytest.approx(0.0, abs=1e-6)
    out = loss(x, y, torch.tensor(1.), dist_image_features=torch.randn(4, 8), dist_text_features=torch.randn(4, 8))
    out.backward()
    assert x.grad.abs().sum() > 0 and y.grad.abs().sum() > 0


def test_alignment_contrastive_term_is_clip_loss():
    img, txt = F.normalize(torch.randn(5, 8), dim=-1), F.normalize(torch.randn(5, 8), dim=-1)
    scale = torch.tensor(10.)
    loss = AlignmentLoss(image_weight=0, text_weight=0, contrastive_weight=0.3)
    out = loss(img, txt, scale, output_dict=True)
    assert set(out) == {'contrastive_loss'}
    assert out['contrastive_loss'].item() == pytest.approx(0.3 * ClipLoss()(img, txt, scale).item(), rel=1e-6)


def test_alignment_errors():
    x = torch.randn(2, 4)
    with pytest.raises(ValueError, match="dist_image_features is missing: the loss needs the teacher's outputs"):
        AlignmentLoss()(x, x, torch.tensor(1.))
    with pytest.raises(ValueError, match='embedding size'):
        AlignmentLoss(text_weight=0)(x, x, torch.tensor(1.), dist_image_features=torch.randn(2, 5))
    with pytest.raises(ValueError, match='nothing to train'):
        AlignmentLoss(0, 0, 0)
    with pytest.raises(ValueError, match='>= 0'):
        AlignmentLoss(image_weight=-1)


def _class_embeddings(d=6, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(d, c, generator=g), dim=0)


def test_dual_kl_zero_when_teacher_equals_student():
    L = _class_embeddings()
    x = torch.randn(4, 6)
    out = DualLoss(L, kl_weight=3.0, kl_temperature=2.0)(
        image_features=x, logit_scale=torch.tensor(10.), labels=torch.tensor([0, 1, 2, 3]),
        dist_image_features=x * 5, output_dict=True)   # the norm makes the scale of the teacher's features irrelevant
    assert out['kl_loss'].item() == pytest.approx(0.0, abs=1e-6)
    assert out['ce_loss'].item() > 0


def test_dual_equals_manual_computation():
    L = _class_embeddings()
    s_img, t_img = torch.randn(3, 6), torch.randn(3, 6)
    y = torch.tensor([4, 0, 2])
    scale, t_scale, lam, tau = torch.tensor(7.), torch.tensor(20.), 0.7, 3.0
    out = DualLoss(L, kl_weight=lam, kl_temperature=tau)(
        image_features=s_img, logit_scale=scale, labels=y, dist_image_features=t_img, dist_logit_scale=t_scale,
        output_dict=True)
    # By hand, sample by sample, with plain tensor ops.
    ce = kl = 0.0
    for i in range(3):
        s = scale * (s_img[i] / s_img[i].norm()) @ L
        t = t_scale * (t_img[i] / t_img[i].norm()) @ L
        ce += -(s[y[i]] - torch.logsumexp(s, 0))
        p_s, p_t = torch.softmax(s / tau, 0), torch.softmax(t / tau, 0)
        kl += (p_t * (p_t.log() - p_s.log())).sum()
    ce, kl = ce / 3, kl / 3
    assert out['ce_loss'].item() == pytest.approx(ce.item(), rel=1e-5)
    assert out['kl_loss'].item() == pytest.approx(lam * tau ** 2 * kl.item(), rel=1e-5)


def test_dual_balance_independent_of_batch_size():
    L = _class_embeddings()
    s_img, t_img = torch.randn(4, 6), torch.randn(4, 6)
    y = torch.tensor([1, 2, 3, 4])
    loss = DualLoss(L, kl_weight=0.5, kl_temperature=2.0)
    one = loss(s_img, torch.tensor(10.), y, t_img, output_dict=True)
    # The same samples repeated 8 times: a batch 8x larger must give the same terms (the reference code's summed
    # KL would grow 8x).
    many = loss(s_img.repeat(8, 1), torch.tensor(10.), y.repeat(8), t_img.repeat(8, 1), output_dict=True)
    for k in ('ce_loss', 'kl_loss'):
        assert many[k].item() == pytest.approx(one[k].item(), rel=1e-5)
    # ... and the mean of two half batches equals the full batch (what DDP's gradient averaging relies on).
    a = loss(s_img[:2], torch.tensor(10.), y[:2], t_img[:2])
    b = loss(s_img[2:], torch.tensor(10.), y[2:], t_img[2:])
    assert ((a + b) / 2).item() == pytest.approx(loss(s_img, torch.tensor(10.), y, t_img).item(), rel=1e-5)


def test_dual_logit_scale_changes_ce_and_gets_gradient():
    L = _class_embeddings()
    x = torch.randn(4, 6)
    y = torch.tensor([0, 1, 2, 3])
    log_scale = torch.tensor(math.log(10.), requires_grad=True)
    ce = DualLoss(L, kl_weight=0)(x, log_scale.exp(), y, output_dict=True)
    assert set(ce) == {'ce_loss'}
    ce['ce_loss'].backward()
    assert log_scale.grad.abs() > 0
    ce1 = DualLoss(L, kl_weight=0)(x, torch.tensor(1.), y)
    assert ce1.item() != pytest.approx(ce['ce_loss'].item())


def test_dual_errors():
    L = _class_embeddings(c=3)
    x = torch.randn(2, 6)
    with pytest.raises(ValueError, match='labels'):
        DualLoss(L)(x, torch.tensor(1.), None, x)
    with pytest.raises(ValueError, match=r'\[0, 3\)'):
        DualLoss(L)(x, torch.tensor(1.), torch.tensor([0, 3]), x)
    with pytest.raises(ValueError, match="dist_image_features is missing: the loss needs the teacher's outputs"):
        DualLoss(L)(x, torch.tensor(1.), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match='embedding size'):
        DualLoss(L)(torch.randn(2, 5), torch.tensor(1.), torch.tensor([0, 1]), x)
    with pytest.raises(ValueError, match='temperature'):
        DualLoss(L, kl_temperature=0)


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world_size, port, img, txt, scale, result):
    import torch.distributed as dist
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group('gloo', rank=rank, world_size=world_size)
    try:
        n = img.shape[0] // world_size
        loss = AlignmentLoss(image_weight=0, text_weight=0, contrastive_weight=1.0, rank=rank,
                             world_size=world_size)
        out = loss(img[rank * n:(rank + 1) * n], txt[rank * n:(rank + 1) * n], scale)
        result[rank] = out.item()
    finally:
        dist.destroy_process_group()


def test_alignment_contrastive_gathers_across_ranks():
    """Two gloo processes, each with half the batch, see the contrastive loss of the whole batch. The processes are
    forks of this one (a spawned process would import torch and open_clip again, 10-15 s here)."""
    import torch.multiprocessing as mp
    img, txt = F.normalize(torch.randn(6, 8), dim=-1), F.normalize(torch.randn(6, 8), dim=-1)
    scale = torch.tensor(5.)
    result = mp.Manager().dict()
    mp.start_processes(_ddp_worker, args=(2, _free_port(), img, txt, scale, result), nprocs=2, join=True,
                       start_method='fork')
    expected = ClipLoss()(img, txt, scale).item()
    assert result[0] == pytest.approx(expected, rel=1e-5)
    assert result[1] == pytest.approx(expected, rel=1e-5)
