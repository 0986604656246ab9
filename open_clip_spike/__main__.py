import sys

from open_clip_spike.cli import main

sys.exit(main())
