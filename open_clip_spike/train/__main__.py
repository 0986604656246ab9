import sys

from timm_spike.utils import tune_allocator

from .main import main

tune_allocator()  # as every spikeclip command: glibc keeps freed tensor memory for reuse (torchrun launches this)
sys.exit(main())
