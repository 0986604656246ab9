"""SpikeCLIP training on open_clip's own loop (the counterpart of ``open_clip_train``).

``python -m open_clip_spike.train`` (``spikeclip train``) runs ``open_clip_train.main`` with SpikeCLIP's losses;
the patches of upstream it needs live in ``patches.py``; ``resume.py`` makes an interrupted run resume exactly, and
``python -m open_clip_spike.train.upstream`` is open_clip_train's own loop with only that added.
"""
from .main import CaptionLabeler, LOGS_ENV, SpikeTrainConfig, SpikeTrainError, main, resolve_classnames_templates
from .patches import UPSTREAM_VERSION
