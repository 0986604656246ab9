import sys

from timm_spike.utils import tune_allocator

from .main import main

tune_allocator()  # as every spikeclip command (open_clip_spike.cli)

sys.exit(main())
