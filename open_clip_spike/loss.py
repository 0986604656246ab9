"""SpikeCLIP's two training losses, with open_clip's loss interface.

Lv et al., "SpikeCLIP: A Contrastive Language-Image Pretrained Spiking Neural Network" (arXiv 2310.06488):
- stage 1, alignment pre-training: `AlignmentLoss`, the spiking towers distilled to a CLIP teacher's features;
- stage 2, dual-loss fine-tuning with the text tower frozen: `DualLoss`, cross-entropy over the class set plus a
  KL term that keeps the student's class distribution close to the teacher's.

Both take keyword tensors as open_clip_train passes them (the model's output dict, the teacher's outputs as
``dist_*`` keys, plus ``labels`` for `DualLoss`) and return ``{"<name>_loss": tensor}`` with ``output_dict=True``
(open_clip_train sums the values) or the total otherwise.

Energy-aware training: both losses take an optional firing-rate regulariser (``rate_weight``, ``rate_target``),
``rate_weight * mean over neuron layers of (rate - target)^2`` (or of ``max(0, rate - target)^2``, 'hinge'),
on the per-layer rates a `SpikeRateCollector` adds to the model's output dict as ``spike_rates``. The rates
are means of the spike tensors, differentiable through the neurons' surrogate gradient, so the term lowers
(or raises) the firing rates, i.e. the synaptic operations and the energy per image.
"""
import logging
from typing import Any, Dict, List, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from timm_spike.layers import is_spiking_neuron

__all__ = ['AlignmentLoss', 'DualLoss', 'SpikeRateCollector', 'firing_rate_loss', 'RATE_MODES']

_logger = logging.getLogger(__name__)

LossOutput = Union[torch.Tensor, Dict[str, torch.Tensor]]


def _finish(losses: Dict[str, torch.Tensor], output_dict: bool) -> LossOutput:
    return losses if output_dict else sum(losses.values())


def _require(name: str, value: Optional[torch.Tensor], hint: str) -> torch.Tensor:
    if value is None:
        raise ValueError(f'{name} is missing: {hint}')
    return value


RATE_MODES = ('squared', 'hinge')
SPIKE_RATES_KEY = 'spike_rates'  # the output-dict key (and loss keyword) of the per-layer firing rates


def firing_rate_loss(rates: torch.Tensor, target: float = 0.0, mode: str = 'squared') -> torch.Tensor:
    """Mean over neuron layers of ``(rate - target)^2`` ('squared') or ``max(0, rate - target)^2`` ('hinge').

    Args:
        rates: Firing rate of each neuron layer [L] (spikes per neuron per time step, in [0, 1]).
        target: Target rate; 'hinge' penalises only rates above it.
        mode: 'squared' or 'hinge'.
    """
    if mode not in RATE_MODES:
        raise ValueError(f'Unknown firing-rate penalty {mode!r}; choose one of {RATE_MODES}')
    if rates.ndim != 1 or not len(rates):
        raise ValueError(f'rates must be a non-empty [num_layers] tensor, got shape {tuple(rates.shape)}')
    diff = rates.float() - target
    if mode == 'hinge':
        diff = diff.clamp(min=0)
    return diff.pow(2).mean()


class SpikeRateCollector:
    """Forward hooks that put the differentiable firing rate of every spiking neuron layer into the output dict.

    During each forward of ``model`` in training mode with gradients on, every spikingjelly neuron's output
    (its spikes, [T, B, ...]) is reduced to its mean, which carries the surrogate gradient; the model's output
    dict gains ``spike_rates`` [num_layers] (layers that ran, in call order), which open_clip_train hands to
    the loss as a keyword. Reducing in the hook keeps one scalar per layer instead of every spike tensor.
    Evaluation (eval mode or ``torch.no_grad``) is left untouched.

    Args:
        model: The student (before any DDP wrap); it must contain spiking neurons.
        key: Output-dict key for the rates.
    """

    def __init__(self, model: nn.Module, key: str = SPIKE_RATES_KEY):
        self.key = key
        self.neurons = [m for m in model.modules() if is_spiking_neuron(m)]
        if not self.neurons:
            raise ValueError(f'{type(model).__name__} has no spiking neurons: a firing-rate regulariser needs a '
                             f'spiking model (e.g. a SpikeCLIP config)')
        self._rates: List[torch.Tensor] = []
        self._handles = [model.register_forward_pre_hook(self._start), model.register_forward_hook(self._finish)]
        self._handles += [n.register_forward_hook(self._record) for n in self.neurons]

    @staticmethod
    def _active(module: nn.Module) -> bool:
        return module.training and torch.is_grad_enabled()

    def _start(self, module: nn.Module, args: Any) -> None:
        self._rates = []

    def _record(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._active(module) and isinstance(output, torch.Tensor):
            self._rates.append(output.float().mean())

    def _finish(self, module: nn.Module, args: Any, output: Any) -> Any:
        if self._rates and isinstance(output, dict):
            output[self.key] = torch.stack(self._rates)
        self._rates = []
        return output

    def remove(self) -> None:
        """Detach every hook."""
        for h in self._handles:
            h.remove()
        self._handles = []


class _RateTerm(nn.Module):
    """The optional ``rate_loss`` term shared by both stage losses."""

    def __init__(self, weight: float, target: float, mode: str):
        super().__init__()
        if weight < 0:
            raise ValueError(f'rate_weight must be >= 0, got {weight}')
        if not 0 <= target <= 1:
            raise ValueError(f'rate_target is a firing rate (spikes per neuron per step) in [0, 1], got {target}')
        if mode not in RATE_MODES:
            raise ValueError(f'Unknown rate_mode {mode!r}; choose one of {RATE_MODES}')
        self.weight, self.target, self.mode = weight, target, mode

    def add_to(self, losses: Dict[str, torch.Tensor], spike_rates: Optional[torch.Tensor]) -> None:
        if self.weight == 0:
            return
        rates = _require(SPIKE_RATES_KEY, spike_rates,
                         'the firing-rate regulariser needs the per-layer rates in the model output: attach '
                         'open_clip_spike.loss.SpikeRateCollector(model) (spikeclip train does so), and run the '
                         'model in training mode with gradients on')
        losses['rate_loss'] = self.weight * firing_rate_loss(rates, self.target, self.mode)

    def extra_repr(self) -> str:
        return f'weight={self.weight}, target={self.target}, mode={self.mode!r}'


_TEACHER_HINT = ("the loss needs the teacher's outputs (the dist_* keys of open_clip's distillation): pass the "
                 "teacher's embeddings of the same batch")


class AlignmentLoss(nn.Module):
    """Stage 1 (alignment pre-training): distil both spiking towers to the teacher's embeddings.

    ``image_weight * mean(1 - cos(student_img, teacher_img)) + text_weight * mean(1 - cos(student_txt,
    teacher_txt)) [+ contrastive_weight * CLIP contrastive loss of the student]``. The cosine terms are
    per-sample means, so under DDP each rank's term is the mean of its shard and DDP's gradient averaging
    gives the global mean; the optional contrastive term needs the whole batch and gathers like `ClipLoss`.

    Args:
        image_weight: Weight of the image-feature cosine term (0 disables it).
        text_weight: Weight of the text-feature cosine term (0 disables it).
        contrastive_weight: Weight of open_clip's contrastive `ClipLoss` on the student's features (0: off).
        local_loss: Passed to `ClipLoss` (logits of the local shard against all features).
        gather_with_grad: Passed to `ClipLoss`.
        rank: Rank of this process.
        world_size: Number of processes.
        use_horovod: Passed to `ClipLoss`.
        rate_weight: Weight of the firing-rate regulariser ``rate_loss`` (0: off).
        rate_target: Target firing rate of the regulariser.
        rate_mode: 'squared' (pull every layer's rate to the target) or 'hinge' (penalise rates above it).
    """

    def __init__(
            self,
            image_weight: float = 1.0,
            text_weight: float = 1.0,
            contrastive_weight: float = 0.0,
            local_loss: bool = False,
            gather_with_grad: bool = False,
            rank: int = 0,
            world_size: int = 1,
            use_horovod: bool = False,
            rate_weight: float = 0.0,
            rate_target: float = 0.0,
            rate_mode: str = 'squared',
    ):
        super().__init__()
        self.rate = _RateTerm(rate_weight, rate_target, rate_mode)
        if min(image_weight, text_weight, contrastive_weight) < 0:
            raise ValueError('AlignmentLoss weights must be >= 0, got '
                             f'image={image_weight}, text={text_weight}, contrastive={contrastive_weight}')
        if image_weight == text_weight == contrastive_weight == 0:
            raise ValueError('AlignmentLoss: image_weight, text_weight and contrastive_weight are all 0, nothing '
                             'to train; set at least one above 0')
        self.image_weight = image_weight
        self.text_weight = text_weight
        self.contrastive_weight = contrastive_weight
        self.clip_loss = ClipLoss(
            local_loss=local_loss,
            gather_with_grad=gather_with_grad,
            cache_labels=True,
            rank=rank,
            world_size=world_size,
            use_horovod=use_horovod,
        ) if contrastive_weight > 0 else None

    @staticmethod
    def cosine_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """Mean over the batch of ``1 - cos(student, teacher)`` (float32, whatever the autocast dtype)."""
        if student.shape != teacher.shape:
            raise ValueError(
                f'student features {tuple(student.shape)} and teacher features {tuple(teacher.shape)} differ in '
                'shape: the teacher must have the student\'s embedding size')
        return (1 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)).mean()

    def forward(
            self,
            image_features: Optional[torch.Tensor],
            text_features: Optional[torch.Tensor],
            logit_scale: torch.Tensor,
            dist_image_features: Optional[torch.Tensor] = None,
            dist_text_features: Optional[torch.Tensor] = None,
            logit_bias: Optional[torch.Tensor] = None,
            spike_rates: Optional[torch.Tensor] = None,
            output_dict: bool = False,
            **kwargs,
    ) -> LossOutput:
        """Compute the weighted terms.

        Args:
            image_features: Student image embeddings [B, D].
            text_features: Student text embeddings [B, D].
            logit_scale: Student logit scale (only used by the contrastive term).
            dist_image_features: Teacher image embeddings [B, D].
            dist_text_features: Teacher text embeddings [B, D].
            logit_bias: Optional logit bias for the contrastive term.
            spike_rates: Per-layer firing rates of the student [L] (`SpikeRateCollector`), for ``rate_loss``.
            output_dict: Return ``{"image_align_loss", "text_align_loss", "contrastive_loss", "rate_loss"}``
                (the enabled ones) instead of their sum.
            **kwargs: Other model outputs (e.g. ``dist_logit_scale``), ignored.
        """
        losses = {}
        if self.image_weight > 0:
            img = _require('image_features', image_features, 'the student produced no image features')
            t_img = _require('dist_image_features', dist_image_features, _TEACHER_HINT)
            losses['image_align_loss'] = self.image_weight * self.cosine_distance(img, t_img)
        if self.text_weight > 0:
            txt = _require('text_features', text_features, 'the student produced no text features')
            t_txt = _require('dist_text_features', dist_text_features, _TEACHER_HINT)
            losses['text_align_loss'] = self.text_weight * self.cosine_distance(txt, t_txt)
        if self.clip_loss is not None:
            losses['contrastive_loss'] = self.contrastive_weight * self.clip_loss(
                image_features.float(), text_features.float(), logit_scale.float(), logit_bias)
        self.rate.add_to(losses, spike_rates)
        return _finish(losses, output_dict)


class DualLoss(nn.Module):
    """Stage 2 (dual-loss fine-tuning): ``CE(s, y) + kl_weight * tau^2 * KL(softmax(t / tau) || softmax(s / tau))``.

    ``s = logit_scale * norm(student_img) @ L`` and ``t = teacher_scale * norm(teacher_img) @ L``, where ``L``
    [D, C] are the class embeddings of the full class set from the frozen spiking text tower (mean of the
    normalised template embeddings, renormalised: open_clip's `build_zero_shot_classifier`). Differences from
    the reference code, on purpose: the logits carry a logit scale (the reference uses raw cosines in [-1, 1],
    which makes the softmax nearly uniform), and both terms are means over the batch (the reference sums the KL
    over the batch, so its weight grows with the batch size). The KL is scaled by ``tau^2`` (Hinton et al.) so
    that its gradient does not shrink as the temperature grows. The teacher's logit scale is its own
    (``dist_logit_scale``) when given, else the student's, detached either way. Both terms are per-sample
    means, so under DDP no gather is needed (DDP averages the shards' gradients).

    Args:
        class_embeddings: ``L`` as [D, C] (columns are unit-norm class embeddings).
        kl_weight: lambda, the weight of the KL term.
        kl_temperature: tau, the temperature of both distributions in the KL term.
        label_smoothing: Passed to `F.cross_entropy`.
        rate_weight: Weight of the firing-rate regulariser ``rate_loss`` (0: off).
        rate_target: Target firing rate of the regulariser.
        rate_mode: 'squared' or 'hinge' (see `firing_rate_loss`).
    """

    def __init__(
            self,
            class_embeddings: torch.Tensor,
            kl_weight: float = 1.0,
            kl_temperature: float = 1.0,
            label_smoothing: float = 0.0,
            rate_weight: float = 0.0,
            rate_target: float = 0.0,
            rate_mode: str = 'squared',
    ):
        super().__init__()
        self.rate = _RateTerm(rate_weight, rate_target, rate_mode)
        if class_embeddings.ndim != 2:
            raise ValueError(f'class_embeddings must be [embed_dim, num_classes], got {tuple(class_embeddings.shape)}')
        if kl_weight < 0:
            raise ValueError(f'kl_weight must be >= 0, got {kl_weight}')
        if kl_temperature <= 0:
            raise ValueError(f'kl_temperature must be > 0, got {kl_temperature}')
        self.register_buffer('class_embeddings', class_embeddings.detach().float().clone(), persistent=False)
        self.kl_weight = kl_weight
        self.kl_temperature = kl_temperature
        self.label_smoothing = label_smoothing

    @property
    def num_classes(self) -> int:
        return self.class_embeddings.shape[1]

    def set_class_embeddings(self, class_embeddings: torch.Tensor) -> None:
        """Replace ``L`` (e.g. after the text tower changed); same embedding size required."""
        if class_embeddings.shape[0] != self.class_embeddings.shape[0]:
            raise ValueError(f'embedding size {class_embeddings.shape[0]} != {self.class_embeddings.shape[0]}')
        self.class_embeddings = class_embeddings.detach().float().to(self.class_embeddings.device)

    def logits(self, features: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """``scale * norm(features) @ L`` in float32."""
        if features.shape[-1] != self.class_embeddings.shape[0]:
            raise ValueError(
                f'features of size {features.shape[-1]} do not match class embeddings of size '
                f'{self.class_embeddings.shape[0]}: the teacher must have the student\'s embedding size')
        L = self.class_embeddings.to(features.device)
        return scale.float() * F.normalize(features.float(), dim=-1) @ L

    def forward(
            self,
            image_features: torch.Tensor,
            logit_scale: torch.Tensor,
            labels: Optional[torch.Tensor] = None,
            dist_image_features: Optional[torch.Tensor] = None,
            dist_logit_scale: Optional[torch.Tensor] = None,
            spike_rates: Optional[torch.Tensor] = None,
            output_dict: bool = False,
            **kwargs,
    ) -> LossOutput:
        """Compute ``ce_loss`` and ``kl_loss`` (already multiplied by ``kl_weight``).

        Args:
            image_features: Student image embeddings [B, D].
            logit_scale: Student logit scale (exp'ed, as open_clip models return it).
            labels: Class indices [B] into the columns of ``L``.
            dist_image_features: Teacher image embeddings [B, D].
            dist_logit_scale: Teacher logit scale; the student's is used when absent.
            spike_rates: Per-layer firing rates of the student [L] (`SpikeRateCollector`), for ``rate_loss``.
            output_dict: Return ``{"ce_loss", "kl_loss", "rate_loss"}`` (the enabled ones) instead of their sum.
            **kwargs: Other model outputs (text features etc.), ignored.
        """
        labels = _require('labels', labels, 'DualLoss needs the class index of every image (labels [B] into '
                                            'the columns of class_embeddings)')
        if labels.min() < 0 or labels.max() >= self.num_classes:
            raise ValueError(f'labels must lie in [0, {self.num_classes}), got [{int(labels.min())}, '
                             f'{int(labels.max())}]')
        s = self.logits(image_features, logit_scale)
        losses = {'ce_loss': F.cross_entropy(s, labels, label_smoothing=self.label_smoothing)}
        if self.kl_weight > 0:
            t_img = _require('dist_image_features', dist_image_features, _TEACHER_HINT)
            t_scale = (dist_logit_scale if dist_logit_scale is not None else logit_scale).detach()
            t = self.logits(t_img.detach(), t_scale)
            tau = self.kl_temperature
            # KL(p_t || p_s), summed over classes and averaged over the batch ('batchmean').
            kl = F.kl_div(F.log_softmax(s / tau, dim=-1), F.log_softmax(t / tau, dim=-1),
                          reduction='batchmean', log_target=True)
            losses['kl_loss'] = self.kl_weight * tau ** 2 * kl
        self.rate.add_to(losses, spike_rates)
        return _finish(losses, output_dict)
