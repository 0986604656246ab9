"""``spikeclip bench-cache``."""
import argparse
import json
import logging
import os
import sys
import tempfile
import time
from typing import List, Optional

from timm_spike.utils import atomic_write
from open_clip_spike.experiments.bench import LoadMonitor, machine_info
from open_clip_spike.experiments.bench_cache import PAIRS, bench_teacher_cache, to_markdown
from open_clip_spike.experiments import bench_cache as _experiment


def main(argv: Optional[List[str]] = None) -> int:
    from open_clip_spike.experiments.demo import find_fashion_mnist, write_captioned_csv

    p = argparse.ArgumentParser(prog='spikeclip bench-cache', description=_experiment.__doc__.split('\n\n')[0])
    p.add_argument('--pairs', nargs='+', default=['demo', 'paper'], choices=list(PAIRS))
    p.add_argument('--images', type=int, default=512, help='training images (a seeded Fashion-MNIST subset)')
    p.add_argument('--epochs', type=int, default=3)
    p.add_argument('--batch-size', type=int, default=32)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--workers', type=int, default=1)
    p.add_argument('--data', default=None, help='folder with Fashion-MNIST IDX files (default: Debian\'s package)')
    p.add_argument('--teacher-pretrained', default=None, help='teacher weights (tag or file) for every pair')
    p.add_argument('--device', default='cpu', help="'cpu' or 'cuda'")
    p.add_argument('--precision', default='fp32', help="open_clip_train's --precision (e.g. amp_bf16)")
    p.add_argument('--out', default='bench-results/cache', help='folder for bench-cache.md and bench-cache.json')
    p.add_argument('--work', default=None, help='scratch folder (default: a temporary one, removed)')
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')

    monitor, wall0 = LoadMonitor(), time.time()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or tmp
        os.makedirs(work, exist_ok=True)
        csv = write_captioned_csv(find_fashion_mnist(args.data), 'train', os.path.join(work, 'data'),
                                  limit=args.images)
        rows = [bench_teacher_cache(pair, csv, work, epochs=args.epochs, batch_size=args.batch_size,
                                    threads=args.threads, workers=args.workers,
                                    teacher_pretrained=args.teacher_pretrained, device=args.device,
                                    precision=args.precision) for pair in args.pairs]
    result = dict(machine=machine_info(args.threads, args.device), images=args.images, wall_s=time.time() - wall0,
                  load=monitor.result(), rows=rows)
    md = to_markdown(result)
    os.makedirs(args.out, exist_ok=True)
    atomic_write(os.path.join(args.out, 'bench-cache.json'), json.dumps(result, indent=2).encode())
    atomic_write(os.path.join(args.out, 'bench-cache.md'), md.encode())
    print(md)
    return 0


if __name__ == '__main__':
    sys.exit(main())
