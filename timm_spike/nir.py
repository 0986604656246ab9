"""Export spiking towers to NIR and re-run them in spikingjelly and snnTorch.

NIR (the Neuromorphic Intermediate Representation, https://neuroir.org, packages ``nir`` and ``nirtorch``) is
the exchange format read by lava(-dl), rockpool, sinabs, snnTorch, Norse and spikingjelly. A NIR graph is
one time step of a network: nodes (Conv2d, Affine, LIF, AvgPool2d, Flatten, ...) and edges, where several
edges into one node are summed. That is exactly enough for SEW-ResNet with ADD connections:

- BatchNorm (NIR has no node for it) is folded into the preceding convolution with its running statistics;
- the spike-element-wise ADD of a residual block becomes two edges into the next node(s);
- every LIF keeps this project's parameters (``LIFConfig``: tau, v_threshold, v_reset, decay_input) in NIR's
  continuous form with ``dt`` (see ``lif_to_nir``), which spikingjelly and snnTorch map back exactly;
- global average pooling (the mean over tokens) is an AvgPool2d over the whole map, and the head (the
  SpikeCLIP projection) an Affine node. The readout over time (mean, or the learned convex weights) is linear,
  so it commutes with the head: the tower's output is the readout of the graph's output over the T steps.
  The graph metadata says so (``readout``, ``readout_weights``).

Refused with a ``ValueError`` naming the first layer NIR cannot express: spiking self-attention
(Spikingformer, Spikformer, SDT, QKFormer multiply two spike tensors), the AND / IAND connections of SEW-ResNet
(products of spike tensors), max-pooling (the ImageNet stem of SEW-ResNet; every attention model's stem) and
soft reset (``v_reset=None``; NIR's LIF resets to ``v_reset``). ``stem_only=True`` exports the convolutional
stem of a SEW-ResNet alone.

Building blocks reused: spikingjelly's ``nir_exchange.export_to_nir`` (FX tracing through nirtorch, the
module -> node mapping of Conv2d / Linear / LIF / AvgPool2d / Flatten, shape propagation) and
``import_from_nir``; snnTorch's ``import_nir.import_from_nir``. Written here because they lack it: BN folding,
an exportable single-step view of the tower (the towers themselves run multi-step modules, direct-encoding
hooks and a readout that FX and nirtorch cannot trace), the metadata, crash-safe writing, clear errors on bad
files, and the step-by-step runners that record every layer's spikes for the comparison.

One module, longer than the house's ~500 lines: export, the re-runs in spikingjelly and snnTorch and the checks
that they agree form one round trip, read in that order.
"""
import contextlib
import copy
import io
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

try:
    import h5py
    import nir
    import nirtorch  # noqa: F401  (used by spikingjelly's nir_exchange; imported here for a clear error)
    from spikingjelly.activation_based import functional, neuron
    from spikingjelly.activation_based.nir_exchange import export_to_nir, import_from_nir
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(f"timm_spike.nir needs the packages 'nir' and 'nirtorch' ({e}); "
                      f"install them with: pip install 'nir>=1.0.8' 'nirtorch>=2.6'") from e

from .layers import LIFConfig, is_spiking_neuron
from .utils import atomic_path

__all__ = [
    'NIR_DT', 'FORMAT', 'FORMAT_VERSION', 'NIRSimulator', 'export_nir', 'write_nir', 'read_nir', 'save_nir',
    'nir_metadata', 'check_exportable', 'fold_conv_bn', 'lif_to_nir', 'load_spikingjelly', 'load_snntorch',
    'project_spikes', 'compare_runs', 'build_graph', 'metadata_for', 'attention_layers', 'check_neurons', 'plain_lif',
    'plain_linear', 'timm_model_name',
]

_logger = logging.getLogger(__name__)

# NIR's time step in seconds. This project's neurons are discrete (one update per time step), so dt only
# scales NIR's continuous time constants (tau_nir = tau * dt). 1e-4 is the value spikingjelly and snnTorch
# assume when they read a graph back (snnTorch 1.0 hard-codes it), so it is the one that round-trips.
NIR_DT = 1e-4
FORMAT = 'spikeclip-nir'
FORMAT_VERSION = 1


# ---------------------------------------------------------------------------------------------------------
# What NIR can express
# ---------------------------------------------------------------------------------------------------------

def attention_layers(model: nn.Module) -> List[str]:
    """Paths of the spiking self-attention layers of ``model``, in module order."""
    # Spiking self-attention (q @ k^T, attn @ v on spikes) in every attention family here has 'Attention' in its
    # class name: SpikingSelfAttention, SpikeDrivenSelfAttention, QKAttention.
    return [name for name, m in model.named_modules() if 'Attention' in type(m).__name__]


def _is_sew_resnet(model: nn.Module) -> bool:
    return type(model).__name__ == 'SEWResNet' and hasattr(model, 'layer4')


def check_exportable(model: nn.Module, stem_only: bool = False) -> None:
    """Raise a ``ValueError`` naming the first layer of ``model`` that NIR 1.0 cannot express.

    Args:
        model: A timm_spike model (``sew_resnet*``; the attention families are refused).
        stem_only: Check only the convolutional stem.
    """
    attn = attention_layers(model)
    if not _is_sew_resnet(model):
        name = type(model).__name__
        if attn:
            stem = ("; its convolutional stem cannot be exported alone either: it max-pools, and NIR 1.0 has no "
                    "max-pool node" if stem_only else '')
            raise ValueError(
                f"{name} cannot be exported to NIR: its layer '{attn[0]}' ({type(model.get_submodule(attn[0])).__name__}) "
                f"is spiking self-attention, which multiplies two spike tensors (q @ k^T, attn @ v), and NIR 1.0 "
                f"has no node for a product of two signals{stem}. Export a sew_resnet* tower instead")
        raise ValueError(f'{name} is not a tower timm_spike.nir can export; exportable: sew_resnet* models '
                         f'(stem="cifar", cnf="ADD") and the spiking MLP text tower (open_clip_spike.nir)')
    check_neurons(model)
    if stem_only:  # conv1 + bn1 + sn1 come before the ImageNet stem's max-pool
        return
    if model.stem != 'cifar':
        raise ValueError(
            f"{type(model).__name__} with stem={model.stem!r} cannot be exported to NIR: its layer 'maxpool' is a "
            f"max-pool, which NIR 1.0 has no node for; use stem='cifar' (sew_resnet18_cifar, sew_resnet18_clip), "
            f"or export the layers before it alone (stem_only=True; CLI: --stem-only)")
    if model.cnf != 'ADD':
        raise ValueError(
            f"{type(model).__name__} with cnf={model.cnf!r} cannot be exported to NIR: its layer 'layer1.0' joins "
            f"two spike tensors with a product ({model.cnf}), and NIR 1.0 has no node for a product of two "
            f"signals; use cnf='ADD' (a sum: two edges into one node), or stem_only=True")
    if model.global_pool != 'avg':
        raise ValueError("Export needs global_pool='avg' (the mean over tokens becomes an AvgPool2d node)")


def check_neurons(model: nn.Module) -> None:
    """Raise a ``ValueError`` for the first neuron NIR's LIF cannot express (not a LIF, or a soft reset)."""
    for name, m in model.named_modules():
        if is_spiking_neuron(m):
            if type(m).__name__ not in ('StatelessLIFNode', 'LIFNode'):
                raise ValueError(f"Layer '{name}' is a {type(m).__name__}; only LIF neurons export to NIR")
            if m.v_reset is None:
                raise ValueError(
                    f"Layer '{name}' uses a soft reset (v_reset=None): NIR 1.0's LIF resets to v_reset after a "
                    f"spike, so the spikes would differ; build the model with lif_cfg v_reset=0.0")


# ---------------------------------------------------------------------------------------------------------
# The exportable single-step view
# ---------------------------------------------------------------------------------------------------------

@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: Optional[nn.modules.batchnorm._BatchNorm]) -> nn.Conv2d:
    """A plain ``nn.Conv2d`` (with bias) computing ``bn(conv(x))`` with ``bn``'s running statistics.

    Computed in float64 and stored in float32, so the folded layer agrees with conv + BN to float32 rounding.
    """
    w = conv.weight.double()
    b = conv.bias.double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    if bn is not None:
        if bn.running_mean is None:
            raise ValueError('BatchNorm without running statistics (track_running_stats=False) cannot be folded')
        scale = torch.rsqrt(bn.running_var.double() + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight.double()
        shift = bn.bias.double() if bn.bias is not None else torch.zeros_like(scale)
        w = w * scale.view(-1, 1, 1, 1)
        b = (b - bn.running_mean.double()) * scale + shift
    out = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                    padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True)
    out.weight.copy_(w.float())
    out.bias.copy_(b.float())
    return out


def plain_linear(fc: nn.Linear) -> nn.Linear:
    """A float32 CPU copy of a linear layer (NIR Affine, or Linear without bias)."""
    out = nn.Linear(fc.in_features, fc.out_features, bias=fc.bias is not None)
    out.load_state_dict({k: v.detach().float().cpu() for k, v in fc.state_dict().items()})
    return out


def plain_lif(node: nn.Module) -> neuron.LIFNode:
    """A single-step spikingjelly ``LIFNode`` with ``node``'s parameters (what the exporter maps)."""
    # spikingjelly's exporter maps modules by exact class: timm_spike's StatelessLIFNode (a subclass) is not in its
    # table, so the view holds a single-step LIFNode with the same parameters.
    return neuron.LIFNode(tau=float(node.tau), decay_input=bool(node.decay_input),
                          v_threshold=float(node.v_threshold), v_reset=node.v_reset, step_mode='s')


class _SEWBlockView(nn.Module):
    """One SEW block, single step, BN folded: sn2(conv2(sn1(conv1(x)))) + shortcut (the ADD connection)."""

    def __init__(self, blk: nn.Module):
        super().__init__()
        convs = [n for n in ('conv1', 'conv2', 'conv3') if hasattr(blk, n)]
        self.names = []
        for i, n in enumerate(convs, 1):
            setattr(self, f'conv{i}', fold_conv_bn(getattr(blk, n), getattr(blk, f'bn{i}')))
            setattr(self, f'sn{i}', plain_lif(getattr(blk, f'sn{i}')))
            self.names.append(i)
        if blk.downsample is not None:
            ds = blk.downsample
            self.downsample = nn.Sequential(fold_conv_bn(ds[0], ds[1] if len(ds) > 1 else None))
            self.downsample_sn = plain_lif(blk.downsample_sn)
        else:
            self.downsample = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for i in self.names:
            out = getattr(self, f'sn{i}')(getattr(self, f'conv{i}')(out))
        identity = self.downsample_sn(self.downsample(x)) if self.downsample is not None else x
        return out + identity  # cnf='ADD': two edges into the next node(s) in NIR


class _SEWResNetView(nn.Module):
    """A SEW-ResNet as one time step of plain modules and additions (what FX and nirtorch can trace).

    Submodule paths mirror the model's (``conv1``, ``sn1``, ``layer1.0.sn2``, ``fc``), so NIR node names map
    back to the model's layers (BN layers vanish into the convolutions).
    """

    def __init__(self, model: nn.Module, feat_hw: Tuple[int, int], stem_only: bool = False,
                 extra_head: Optional[nn.Module] = None):
        super().__init__()
        self.stem_only = stem_only
        self.conv1 = fold_conv_bn(model.conv1, model.bn1)
        self.sn1 = plain_lif(model.sn1)
        if stem_only:
            return
        for s in ('layer1', 'layer2', 'layer3', 'layer4'):
            setattr(self, s, nn.Sequential(*[_SEWBlockView(b) for b in getattr(model, s)]))
        # the mean over tokens (ZooSpikingNet.pool_tokens) as one window over the whole last feature map
        # padding as a pair: snnTorch 1.0's importer calls tuple() on it
        self.pool = nn.AvgPool2d(kernel_size=feat_hw, stride=feat_hw, padding=(0, 0))
        self.flatten = nn.Flatten(1)
        head = model.get_classifier()
        self.fc = plain_linear(head) if isinstance(head, nn.Linear) else None
        self.proj = plain_linear(extra_head) if extra_head is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.sn1(self.conv1(x))
        if self.stem_only:
            return x
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.flatten(self.pool(x))
        if self.fc is not None:
            x = self.fc(x)
        if self.proj is not None:
            x = self.proj(x)
        return x


# ---------------------------------------------------------------------------------------------------------
# Metadata
# ---------------------------------------------------------------------------------------------------------

def lif_to_nir(cfg: LIFConfig, dt: float = NIR_DT) -> Dict[str, float]:
    """NIR LIF parameters of this project's discrete LIF (spikingjelly's ``LIFNode``).

    spikingjelly, per step: h = v + (x - (v - v_reset)) / tau (decay_input) or h = v - (v - v_reset) / tau + x;
    spike = h >= v_threshold; then v = v_reset where it spiked (hard reset). NIR's LIF is
    tau_nir dv/dt = (v_leak - v) + r I; one forward-Euler step of length dt with tau_nir = tau * dt,
    v_leak = v_reset and r = 1 (decay_input) or r = tau gives the same update exactly.
    """
    return dict(tau=cfg.tau * dt, r=1.0 if cfg.decay_input else cfg.tau, v_leak=cfg.v_reset or 0.0,
                v_threshold=cfg.v_threshold, v_reset=cfg.v_reset or 0.0)


def _project_version() -> str:
    try:
        from importlib.metadata import version
        return version('spikeclip')
    except Exception:  # not installed (a source checkout on sys.path)
        from . import __version__
        return __version__


def _readout_weights(readout: Optional[nn.Module], T: int) -> np.ndarray:
    if readout is None or getattr(readout, 'mode', 'mean') == 'mean':
        return np.full(T, 1.0 / T)
    if readout.T != T:
        raise ValueError(f"readout='weighted' was built for T={readout.T}; export it with T={readout.T}")
    return readout.logits.detach().float().softmax(0).double().cpu().numpy()


def metadata_for(
        model_name: str,
        tower: str,
        T: int,
        lif_cfg: LIFConfig,
        input_description: str,
        input_shape: Sequence[int],
        dt: float = NIR_DT,
        readout: Optional[nn.Module] = None,
        neuron_map: Optional[Dict[str, str]] = None,
        output_description: str = '',
        extra: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """The metadata written into every exported graph (flat keys: HDF5 datasets any NIR reader can list)."""
    T = int(T)
    if T < 1:
        raise ValueError(f'T (number of time steps) must be an integer >= 1, got {T!r}')
    md = {
        'format': FORMAT,
        'format_version': FORMAT_VERSION,
        'producer': f'spikeclip {_project_version()}',
        'model_name': str(model_name),
        'tower': tower,
        'T': T,
        'dt': float(dt),
        'lif_model': 'spikingjelly LIFNode, hard reset: h = v + (x - (v - v_reset)) / tau if decay_input else '
                     'v - (v - v_reset) / tau + x; spike = h >= v_threshold; v = v_reset after a spike',
        'lif_tau': float(lif_cfg.tau),
        'lif_v_threshold': float(lif_cfg.v_threshold),
        'lif_v_reset': float(lif_cfg.v_reset),
        'lif_decay_input': bool(lif_cfg.decay_input),
        'input': input_description,
        'input_shape': np.asarray(input_shape, dtype=np.int64),
        'output': output_description,
        'readout': 'the tower output is sum_t readout_weights[t] * (graph output at step t), t = 0..T-1',
        'readout_weights': _readout_weights(readout, T),
        'neuron_map': json.dumps(neuron_map or {}),
    }
    md.update(extra or {})
    return md


# ---------------------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------------------

def _fx_name(path: str) -> str:
    return path.replace('.', '_')


def build_graph(view: nn.Module, example_input: torch.Tensor, metadata: Dict[str, Any],
                dt: float = NIR_DT) -> 'nir.NIRGraph':
    """Trace a single-step view with spikingjelly's exporter and attach metadata and layer names.

    Args:
        view: A module of plain layers, single-step ``LIFNode``s and additions.
        example_input: One step of input, [1, ...] (shapes of every node come from it).
        metadata: Graph metadata (``metadata_for``); ``neuron_map`` is filled in here.
        dt: NIR time step (seconds).
    """
    view = view.eval()
    with torch.no_grad():
        graph = export_to_nir(view, example_input, dt=dt)
    functional.reset_net(view)
    paths = {_fx_name(n): n for n, m in view.named_modules() if n}
    neuron_map = {}
    for name, node in graph.nodes.items():
        if name in paths:
            node.metadata = {'module': paths[name]}
            if isinstance(node, nir.LIF):
                neuron_map[name] = paths[name]
    md = dict(metadata)
    md['neuron_map'] = json.dumps(neuron_map)
    graph.metadata = md
    return graph


def timm_model_name(model: nn.Module) -> str:
    """The timm architecture name of ``model`` (its class name if it has no pretrained cfg)."""
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    return cfg.get('architecture') or type(model).__name__


def export_nir(
        model: nn.Module,
        T: Optional[int] = None,
        dt: float = NIR_DT,
        stem_only: bool = False,
        model_name: Optional[str] = None,
        extra_head: Optional[nn.Linear] = None,
        extra_metadata: Optional[Dict[str, Any]] = None,
) -> 'nir.NIRGraph':
    """Export a timm_spike SEW-ResNet (``sew_resnet*``, stem 'cifar', cnf 'ADD') to a NIR graph.

    The graph is one time step: input the image [C, H, W] (presented unchanged at each of the T steps: direct
    encoding), output the head's [num_classes] (or the pooled [num_features] without a head). The tower's
    output is the readout over T of the graph's outputs (metadata ``readout_weights``).

    Args:
        model: The tower (BN statistics are folded into the convolutions; train/eval mode is irrelevant).
        T: Time steps to record in the metadata (default: the model's).
        dt: NIR time step in seconds (``NIR_DT``: what spikingjelly and snnTorch read back).
        stem_only: Export conv1 + bn1 + sn1 alone (output: the stem's spikes [C', H, W]).
        model_name: Name recorded in the metadata (default: the timm architecture).
        extra_head: A projection applied after the model's head (open_clip's ``timm_proj='linear'``).
        extra_metadata: More metadata keys (flat: str, numbers, bools, arrays).

    Raises:
        ValueError: For a tower NIR cannot express, naming the first such layer.
    """
    check_exportable(model, stem_only=stem_only)
    T = int(T if T is not None else model.T)
    c, (h, w) = model.in_chans, model.img_size
    example = torch.zeros(1, c, h, w)
    device = next(model.parameters()).device
    model_cpu = copy.deepcopy(model).float().cpu() if device.type != 'cpu' else model
    feat_hw = _feature_hw(model_cpu, example) if not stem_only else None
    view = _SEWResNetView(model_cpu, feat_hw, stem_only=stem_only, extra_head=extra_head)
    out_desc = ('spikes of the stem (conv1 + bn1 + sn1) at each step' if stem_only else
                'the head output at each step (the embedding before normalisation, for a SpikeCLIP image tower)'
                if view.fc is not None else 'the pooled features (mean over positions) at each step')
    md = metadata_for(
        model_name or timm_model_name(model), 'image-stem' if stem_only else 'image', T, model.lif_cfg,
        input_description=(f'image [C, H, W] = [{c}, {h}, {w}], normalised with the model\'s mean/std '
                           f'(pretrained_cfg), presented unchanged at each of the T steps (direct encoding)'),
        input_shape=(c, h, w), dt=dt, readout=None if stem_only else model.readout,
        output_description=out_desc, extra=extra_metadata)
    md['bn_folded'] = True
    return build_graph(view, example, md, dt=dt)


@torch.no_grad()
def _feature_hw(model: nn.Module, example: torch.Tensor) -> Tuple[int, int]:
    was = model.training
    model.eval()
    try:
        feats = model.forward_features(example)
    finally:
        model.train(was)
    return tuple(feats.shape[-2:])


# ---------------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------------

def write_nir(graph: 'nir.NIRGraph', path: Union[str, os.PathLike]) -> str:
    """Write ``graph`` to ``path`` (HDF5) through a temporary file: a crash never leaves a half-written file."""
    path = os.fspath(path)
    with atomic_path(path) as tmp:
        nir.write(tmp, graph)
    return path


def save_nir(model: nn.Module, path: Union[str, os.PathLike], **kwargs: Any) -> 'nir.NIRGraph':
    """``export_nir(model, **kwargs)`` written to ``path``; nothing is written when the export is refused."""
    graph = export_nir(model, **kwargs)
    write_nir(graph, path)
    return graph


def read_nir(path: Union[str, os.PathLike], require_metadata: bool = True) -> 'nir.NIRGraph':
    """Read a ``.nir`` file, with one clear error for a missing, non-HDF5, truncated or foreign file.

    Args:
        path: The file.
        require_metadata: Also require this project's metadata (``format`` = 'spikeclip-nir', ``T``).

    Raises:
        FileNotFoundError: No such file.
        ValueError: Not a readable NIR graph (or, with ``require_metadata``, not one written by spikeclip).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'No NIR file at {path}')
    if not h5py.is_hdf5(path):
        raise ValueError(f'{path} is not a NIR file (NIR files are HDF5; this one has no HDF5 signature)')
    try:
        graph = nir.read(path)
    except Exception as e:  # h5py/nir raise OSError, KeyError, AssertionError, ... for damaged files
        raise ValueError(f'{path} is not a readable NIR graph (truncated or damaged?): '
                         f'{type(e).__name__}: {e}') from e
    if require_metadata:
        md = nir_metadata(graph)
        if md.get('format') != FORMAT or 'T' not in md:
            raise ValueError(f'{path} is a NIR graph but not one exported by spikeclip (no {FORMAT!r} metadata); '
                             f'pass require_metadata=False to read it anyway')
    return graph


def _plain(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode('utf8')
    if isinstance(v, np.ndarray):
        return v if v.ndim else v.item()
    if isinstance(v, np.generic):
        return v.item()
    return v


def nir_metadata(graph: 'nir.NIRGraph') -> Dict[str, Any]:
    """The graph's metadata with HDF5 types made plain (str, int, float, bool; arrays stay numpy)."""
    md = {k: _plain(v) for k, v in (graph.metadata or {}).items()}
    if isinstance(md.get('neuron_map'), str):
        md['neuron_map'] = json.loads(md['neuron_map'])
    return md


# ---------------------------------------------------------------------------------------------------------
# Re-running a graph in spikingjelly and snnTorch
# ---------------------------------------------------------------------------------------------------------

@dataclass
class NIRSimulator:
    """A NIR graph loaded into a simulator, run for T steps with every LIF layer's spikes recorded.

    Attributes:
        name: 'spikingjelly' or 'snntorch'.
        module: The ``torch.fx.GraphModule`` that nirtorch built (returns ``(output, state)`` per call).
        neurons: NIR node name -> the simulator's neuron module.
        neuron_map: NIR node name -> the project's module path (from the metadata).
        T: Time steps (from the metadata).
        readout_weights: [T] weights of the readout over time.
    """
    name: str
    module: nn.Module
    neurons: Dict[str, nn.Module]
    neuron_map: Dict[str, str]
    T: int
    readout_weights: np.ndarray
    _reset: Callable[[nn.Module], None] = field(repr=False, default=None)
    _multi_step: bool = field(repr=False, default=False)

    @torch.no_grad()
    def run(self, x: torch.Tensor, T: Optional[int] = None,
            sequence: bool = False) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Run T steps from rest: ``x`` [B, ...] presented at every step, or a [T, B, ...] sequence.

        Args:
            x: One step of input (direct encoding), or the whole sequence with ``sequence=True``.
            T: Time steps (default: the metadata's).
            sequence: ``x`` is [T, B, ...].

        Returns:
            (the readout over T of the graph output [B, ...], {project module path: spikes [T, B, ...]}).
        """
        if sequence:
            seq, T = x, x.shape[0]
        else:
            T = int(T or self.T)
            seq = x.unsqueeze(0).expand(T, *x.shape)
        recorded: Dict[str, List[torch.Tensor]] = {k: [] for k in self.neurons}
        hooks = [m.register_forward_hook(lambda mod, a, out, k=k: recorded[k].append(_spikes_of(out)))
                 for k, m in self.neurons.items()]
        try:
            self._reset(self.module)
            if self._multi_step:
                out = self.module(seq)[0]
                outs = out
            else:
                outs = torch.stack([self.module(seq[t])[0] for t in range(T)])
        finally:
            for h in hooks:
                h.remove()
            self._reset(self.module)
        spikes = {}
        for k, v in recorded.items():
            s = v[0] if self._multi_step else torch.stack(v)
            spikes[self.neuron_map.get(k, k)] = s
        w = torch.as_tensor(self.readout_weights if len(self.readout_weights) == T else np.full(T, 1.0 / T),
                            dtype=outs.dtype)
        return torch.einsum('t,t...->...', w, outs), spikes


def _graph_and_meta(graph_or_path: Union['nir.NIRGraph', str, os.PathLike]) -> Tuple['nir.NIRGraph', Dict]:
    graph = graph_or_path if isinstance(graph_or_path, nir.NIRGraph) else read_nir(graph_or_path)
    md = nir_metadata(graph)
    return graph, md


def _neuron_modules(gm: nn.Module, graph: 'nir.NIRGraph') -> Dict[str, nn.Module]:
    # nirtorch names each module after its NIR node (dots made underscores)
    out = {}
    for name, node in graph.nodes.items():
        if isinstance(node, nir.LIF):
            m = getattr(gm, name.replace('.', '_'), None)
            if m is None:
                raise ValueError(f"The simulator's module for LIF node '{name}' was not found")
            out[name] = m
    return out


def _spikes_of(out: Any) -> torch.Tensor:
    # spikingjelly's imported neurons return (spikes, state) for nirtorch to thread the state through
    return (out[0] if isinstance(out, tuple) else out).detach().clone()


def load_spikingjelly(graph_or_path: Union['nir.NIRGraph', str, os.PathLike]) -> NIRSimulator:
    """Load a graph (or ``.nir`` file) back into spikingjelly (``nir_exchange.import_from_nir``), multi-step."""
    graph, md = _graph_and_meta(graph_or_path)
    gm = import_from_nir(graph, dt=float(md.get('dt', NIR_DT)), step_mode='m')
    gm.eval()
    return NIRSimulator('spikingjelly', gm, _neuron_modules(gm, graph), md.get('neuron_map', {}),
                        int(md.get('T', 1)), np.asarray(md.get('readout_weights', [1.0])),
                        _reset=functional.reset_net, _multi_step=True)


def load_snntorch(graph_or_path: Union['nir.NIRGraph', str, os.PathLike]) -> NIRSimulator:
    """Load a graph (or ``.nir`` file) into snnTorch (``snntorch.import_nir.import_from_nir``), run step by step.

    snnTorch reads NIR's LIF with dt = 1e-4 (hard-coded) as ``snn.Leaky``: mem = beta * mem + x with
    beta = 1 - dt / tau_nir = 1 - 1 / tau and threshold v_threshold * tau / r (its ``hack_w_scale``: the
    input scale r * dt / tau_nir is moved into the threshold), reset to zero. Its membrane is tau times
    spikingjelly's, so the spikes are the same up to float rounding (and '>' vs '>=' at the threshold).
    """
    try:
        import snntorch
        from snntorch.import_nir import import_from_nir as snn_import
    except ImportError as e:
        raise ImportError(f"load_snntorch needs snnTorch ({e}); install it with: pip install 'snntorch>=1.0'") from e
    graph, md = _graph_and_meta(graph_or_path)
    if not np.isclose(float(md.get('dt', NIR_DT)), 1e-4):
        raise ValueError(f"snnTorch reads NIR graphs with dt=1e-4 only; this graph has dt={md.get('dt')}")
    for name, node in graph.nodes.items():
        if isinstance(node, nir.LIF) and not np.allclose(node.v_leak, 0.0):
            raise ValueError(f"snnTorch 1.0 reads only LIF nodes with v_leak = v_reset = 0; node '{name}' has "
                             f"v_leak={np.unique(node.v_leak)}")
    # snnTorch's importer prints its progress and warnings to stdout; keep them out of the caller's output
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        gm = snn_import(copy.deepcopy(graph))
    if buf.getvalue().strip():
        _logger.debug('snntorch import_from_nir: %s', buf.getvalue().strip())
    # snnTorch 1.0 maps nir.Flatten's start_dim/end_dim (which count from the first axis of one sample) onto
    # torch.nn.Flatten unchanged, where they count the batch axis too: shift them past the batch axis.
    for name, node in graph.nodes.items():
        if isinstance(node, nir.Flatten):
            m = getattr(gm, name.replace('.', '_'), None)
            if isinstance(m, nn.Flatten):
                m.start_dim = m.start_dim + 1 if m.start_dim >= 0 else m.start_dim
                m.end_dim = m.end_dim + 1 if m.end_dim >= 0 else m.end_dim
    gm.eval()

    def reset(module: nn.Module):
        for m in module.modules():
            if isinstance(m, snntorch.Leaky) and hasattr(m, 'mem'):
                m.mem = torch.zeros(1)  # the shape check in Leaky.forward re-creates it as zeros_like(input)

    return NIRSimulator('snntorch', gm, _neuron_modules(gm, graph), md.get('neuron_map', {}),
                        int(md.get('T', 1)), np.asarray(md.get('readout_weights', [1.0])),
                        _reset=reset, _multi_step=False)


# ---------------------------------------------------------------------------------------------------------
# This project's own forward, and the comparison
# ---------------------------------------------------------------------------------------------------------

@torch.no_grad()
def project_spikes(model: nn.Module, forward: Callable[[], torch.Tensor],
                   prefix: str = '') -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Run ``forward()`` (a call of ``model`` in eval mode) and record every spiking neuron's output.

    Args:
        model: The module whose neurons to watch.
        forward: A callable running the model, e.g. ``lambda: model(x)``.
        prefix: Path prefix to strip from module names (e.g. 'trunk.' for an open_clip image tower).

    Returns:
        (the output of ``forward()``, {module path: spikes [T, B, ...]}).
    """
    recorded = {}
    hooks = []
    for name, m in model.named_modules():
        if is_spiking_neuron(m):
            key = name[len(prefix):] if prefix and name.startswith(prefix) else name
            hooks.append(m.register_forward_hook(
                lambda mod, a, out, k=key: recorded.__setitem__(k, out.detach().clone())))
    was = model.training
    model.eval()
    try:
        out = forward()
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    return out, recorded


def compare_runs(reference: Tuple[torch.Tensor, Dict[str, torch.Tensor]],
                 other: Tuple[torch.Tensor, Dict[str, torch.Tensor]]) -> Dict[str, Any]:
    """Agreement of two runs: fraction of identical spikes per layer, spike counts, max output difference.

    Args:
        reference: (output, spikes) of this project's forward (``project_spikes``).
        other: (output, spikes) of a simulator (``NIRSimulator.run``); its layers must be among the reference's.

    Returns:
        {'layers': {path: {'identical': fraction, 'spikes_ref': n, 'spikes_other': n, 'numel': n}},
         'min_identical': worst layer's fraction, 'max_abs_diff': max |output difference|,
         'max_rel_diff': that / max |reference output|}.
    """
    out_a, sp_a = reference
    out_b, sp_b = other
    unknown = sorted(set(sp_b) - set(sp_a))
    if unknown or not sp_b:
        raise ValueError(f'The runs record different layers: {unknown or "none in the second run"}')
    layers = {}
    for k in sp_b:  # the exported layers (all of the reference's, or the stem's alone)
        a, b = sp_a[k], sp_b[k].to(sp_a[k].dtype)
        if a.shape != b.shape:
            raise ValueError(f'Layer {k}: spikes of shape {tuple(a.shape)} vs {tuple(b.shape)}')
        layers[k] = dict(identical=float((a == b).float().mean()), spikes_ref=int(a.sum()),
                         spikes_other=int(b.sum()), numel=a.numel())
    diff = (out_a.float() - out_b.float()).abs().max().item()
    scale = out_a.float().abs().max().item()
    return dict(layers=layers, min_identical=min((v['identical'] for v in layers.values()), default=1.0),
                max_abs_diff=diff, max_rel_diff=diff / scale if scale else diff)
