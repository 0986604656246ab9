"""``spikeclip app``: a local zero-shot page for one SpikeCLIP (Gradio; ``pip install 'spikeclip[app]'``).

The model is fixed at launch (a ``local-dir:`` folder, an ``hf-hub:`` repository or a checkpoint file); the page
binds 127.0.0.1 (this machine only) unless ``--host`` says otherwise.
"""
import argparse
import ipaddress
import logging
import signal
import sys
from typing import List, Optional

from open_clip_spike.app import APP_EXTRA, CLASSNAME_SETS


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='spikeclip app',
        description='A web page that classifies an image zero-shot with one SpikeCLIP and shows, for that image, '
                    'the firing rate per layer, MACs/SOPs, estimated energy and the time of the forward pass.')
    p.add_argument('--model', required=True,
                   help='local-dir:PATH (e.g. the demo\'s out/demo/hub), hf-hub:ORG/NAME[@REVISION], a .safetensors '
                        'file written by spikeclip push, or a SpikeCLIP config with --pretrained')
    p.add_argument('--pretrained', default=None, help='checkpoint file of the config given as --model')
    p.add_argument('--host', default='127.0.0.1',
                   help='address to bind (default 127.0.0.1: this machine only; 0.0.0.0 serves every network)')
    p.add_argument('--port', type=int, default=7860, help='TCP port (default 7860)')
    p.add_argument('--device', default='cpu')
    p.add_argument('--classnames', default=None, choices=CLASSNAME_SETS,
                   help='class-name set chosen when the page opens (default: typed names)')
    p.add_argument('--max-classes', type=int, default=1000, help='most class names per request (default 1000)')
    p.add_argument('--max-prompts', type=int, default=20000,
                   help='most prompts (classes x templates) per class list (default 20000)')
    return p


def _is_loopback(host: str) -> bool:
    if host == 'localhost':
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    if not 0 < args.port < 65536:
        print(f'spikeclip app: error: --port must be 1-65535, got {args.port}', file=sys.stderr)
        return 2
    try:
        import gradio  # noqa: F401
    except ImportError:
        print(f'spikeclip app: error: the page needs gradio, which is not installed: {APP_EXTRA}', file=sys.stderr)
        return 2
    from open_clip_spike.app import ZeroShotApp, launch
    try:
        app = ZeroShotApp(args.model, args.pretrained, device=args.device, max_classes=args.max_classes,
                          max_prompts=args.max_prompts)
        demo, url = launch(app, host=args.host, port=args.port, classnames=args.classnames, block=False)
    except (ValueError, OSError, RuntimeError, ImportError) as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if 'empty port' in message:  # Gradio's words for a port in use
            message = f'port {args.port} of {args.host} is in use: choose another with --port'
        print(f'spikeclip app: error: {message}', file=sys.stderr)
        return 2
    where = ('bound to this machine only (--host 0.0.0.0 serves other machines)' if _is_loopback(args.host) else
             f'bound to {args.host}: other machines on its networks can open it')
    print(f'spikeclip app: {app.name} on {url}, {where}; Ctrl-C stops it', flush=True)
    signal.signal(signal.SIGTERM, _interrupt)  # a service manager's stop: close the server as Ctrl-C does
    try:
        demo.block_thread()
    except KeyboardInterrupt:
        pass
    finally:
        demo.close()
    return 0


if __name__ == '__main__':
    sys.exit(main())
