"""What ``spikeclip train`` hooks into every training step of open_clip_train's loop: the forward hooks that fit
the loop's batch to each model (image size and normalisation, token length), the caption -> class-index labeller
of stage 2, and the zero-shot folder relabelling. The run that installs them is ``main.py``.
"""
from typing import Any, Dict, List, Optional, Sequence, Tuple

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from .params import SpikeTrainError

__all__ = ['CaptionLabeler', 'InputAdapter', 'Relabel', 'SwitchableTransform', 'pp_cfg']


class CaptionLabeler:
    """Maps tokenized captions to class indices: a caption is a class name or a template filled with one.

    A lookup table keyed by the token ids (not by strings: open_clip_train hands the model tokens only).

    Args:
        tokenizer: The tokenizer the training data is tokenized with.
        classnames: The class names, in label order.
        templates: Templates with ``{}`` for the class name.
    """

    def __init__(self, tokenizer: Any, classnames: Sequence[str], templates: Sequence[str]):
        texts, idx = [], []
        for i, name in enumerate(classnames):
            for text in dict.fromkeys([name] + [t.format(name) for t in templates]):
                texts.append(text)
                idx.append(i)
        self.table: Dict[Tuple[int, ...], int] = {}
        for text, row, i in zip(texts, tokenizer(texts).tolist(), idx):
            prev = self.table.setdefault(tuple(row), i)
            if prev != i:
                raise SpikeTrainError(
                    f'caption {text!r} tokenizes like a caption of class {classnames[prev]!r} (duplicate class '
                    f'names, or prompts cut by the context length); labels would be ambiguous')
        self.tokenizer = tokenizer
        self.classnames = list(classnames)

    def __call__(self, text: torch.Tensor) -> torch.Tensor:
        labels = [self.table.get(tuple(row), -1) for row in text.tolist()]
        if -1 in labels:
            row = text[labels.index(-1)].tolist()
            decode = getattr(self.tokenizer, 'decode', None)
            shown = decode([t for t in row if t]) if callable(decode) else row
            raise SpikeTrainError(
                f'{labels.count(-1)} caption(s) in the batch match no class, e.g. {shown!r}: in stage 2 every '
                f'caption must be a class name of --spike-classnames or a --spike-templates prompt of one '
                f'(classes: {self.classnames[:5]}{"..." if len(self.classnames) > 5 else ""})')
        return torch.tensor(labels, dtype=torch.long, device=text.device)


# ---------------------------------------------------------------------------------------------------------------
# Input adaptation between data, student and teacher

class SwitchableTransform:
    """The transform main() got for the student; replaced by the teacher's when data is loaded at its size."""

    def __init__(self, transform: Any):
        self.transform = transform

    def __call__(self, x: Any) -> Any:
        return self.transform(x)

    def __repr__(self) -> str:
        return repr(self.transform)


def pp_cfg(model: nn.Module) -> Dict[str, Any]:
    cfg = dict(open_clip.get_model_preprocess_cfg(model))
    size = cfg.get('size', 224)
    cfg['size'] = (size, size) if isinstance(size, int) else tuple(size)
    return cfg


class InputAdapter:
    """Forward pre-/post-hook pair that fits the loop's batch to one model.

    Resizes and renormalises images from the data's preprocessing to the model's, pads tokens to the model's
    context length, optionally drops the text (stage 2, where text features are unused) and adds ``labels``
    derived from the captions to the output dict.
    """

    def __init__(self, model: nn.Module, drop_text: str = 'never'):
        cfg = pp_cfg(model)
        self.size = cfg['size']
        self.mean = torch.tensor(cfg.get('mean', open_clip.OPENAI_DATASET_MEAN)).view(1, -1, 1, 1)
        self.std = torch.tensor(cfg.get('std', open_clip.OPENAI_DATASET_STD)).view(1, -1, 1, 1)
        self.data_mean, self.data_std = self.mean, self.std
        self.context_length: Optional[int] = None
        self.drop_text = drop_text  # 'never' | 'train' (only in training mode) | 'always'
        self.labeler: Optional[CaptionLabeler] = None
        self._labels: Optional[torch.Tensor] = None

    def set_data_norm(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.data_mean, self.data_std = mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)

    def attach(self, model: nn.Module) -> None:
        model.register_forward_pre_hook(self.pre, with_kwargs=True)
        model.register_forward_hook(self.post)

    def adapt_image(self, image: torch.Tensor) -> torch.Tensor:
        if not (torch.equal(self.mean, self.data_mean) and torch.equal(self.std, self.data_std)):
            dev, dt = image.device, image.dtype
            raw = image * self.data_std.to(dev, dt) + self.data_mean.to(dev, dt)
            image = (raw - self.mean.to(dev, dt)) / self.std.to(dev, dt)
        if tuple(image.shape[-2:]) != self.size:
            image = F.interpolate(image, size=self.size, mode='bilinear', align_corners=False, antialias=True)
        return image

    def adapt_text(self, text: torch.Tensor) -> torch.Tensor:
        if self.context_length is not None and text.shape[-1] < self.context_length:
            text = F.pad(text, (0, self.context_length - text.shape[-1]))  # CLIP BPE pads with token 0
        return text

    def pre(self, module: nn.Module, args: tuple, kwargs: dict):
        image = args[0] if len(args) > 0 else kwargs.get('image')
        text = args[1] if len(args) > 1 else kwargs.get('text')
        rest = {k: v for k, v in kwargs.items() if k not in ('image', 'text')}
        self._labels = None
        if text is not None and self.labeler is not None and module.training:
            self._labels = self.labeler(text)  # only the training loop's loss needs them
        if image is not None:
            image = self.adapt_image(image)
        if text is not None:
            if self.drop_text == 'always' or (self.drop_text == 'train' and module.training):
                text = None
            else:
                text = self.adapt_text(text)
        return (), dict(rest, image=image, text=text)

    def post(self, module: nn.Module, args: tuple, output: Any) -> Any:
        if self._labels is not None and isinstance(output, dict):
            output['labels'] = self._labels
        self._labels = None
        return output




class Relabel:
    """ImageFolder target_transform: folder index -> class index (a class, so DataLoader workers can pickle it)."""

    def __init__(self, mapping: List[int]):
        self.mapping = mapping

    def __call__(self, target: int) -> int:
        return self.mapping[target]


