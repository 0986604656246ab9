"""SpikeCLIP training on open_clip's own loop (the counterpart of ``open_clip_train``).

``python -m open_clip_spike.train`` (``spikeclip train``) runs ``open_clip_train.main`` with SpikeCLIP's losses;
its options are parsed in ``params.py``, the run is ``main.py`` and the hooks on the models ``hooks.py``; the
patches of upstream it needs live in ``patches.py``; ``resume.py`` makes an interrupted run resume exactly, and
``python -m open_clip_spike.train.upstream`` is open_clip_train's own loop with only that added.
"""
from .hooks import CaptionLabeler
from .main import main
from .params import LOGS_ENV, SpikeTrainConfig, SpikeTrainError, resolve_classnames_templates
from .patches import UPSTREAM_VERSION
