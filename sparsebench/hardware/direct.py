"""Direct sparse convolution and Linear on the CPU: sparsebench's own kernel, built on first use.

:class:`DirectSparse` runs a pruned Conv2d (any kernel size, stride, padding, dilation;
``groups=1``) or Linear as sparse weight rows times runs of input pixels, the formulation of
Elsen et al. 2020, "Fast Sparse ConvNets" (CVPR): activations stay in NCHW order, each
nonzero weight (c, ky, kx) is an offset into the flat, zero-padded input of one image, and
output pixel p of a row is the sum of ``value * input[p + offset]`` over the row's nonzeros.
A stride s is handled by splitting the padded input into its s x s phases first, so that every
output row reads contiguous input runs. Output pixels are computed on the padded grid's width
(the few columns past the edge are computed and dropped: one contiguous run per row).

With ``rows=4`` four output channels share their nonzero positions (the group pattern
``block4x1``, after SparseByteNN, Xu et al. 2023): one load of input pixels feeds four
accumulators. Any weights run with either kernel (zeros inside a kept group are stored);
the target picks by measurement.

The kernel is C++ (``kernels/sparse_conv.cpp``), compiled for this machine's CPU by
``torch.utils.cpp_extension`` the first time it is needed and cached under
``$TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``), keyed by the source, the
flags, the CPU and the torch version.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import shutil
from pathlib import Path

import torch
from torch import nn

KERNELS = Path(__file__).with_name("kernels")
# sparse_conv.cpp: the product (inference and training); sparse_train.cpp: the rest of a
# training step (sparsebench.hardware.training). One build, one library of ops.
SOURCES = [KERNELS / "sparse_conv.cpp", KERNELS / "sparse_train.cpp"]
# -march=native: the vector width and FMA of the CPU it runs on (the build is per machine);
# -fopenmp: at::parallel_for runs on torch's OpenMP threads only when the extension is built
# with it (without, the kernel silently ran on one thread: 5.9 ms vs 3.5 ms on 2 cores).
FLAGS = ["-O3", "-march=native", "-fopenmp"]
LANES = 16  # floats per vector in the kernel (vector_size(64))


class KernelUnavailable(RuntimeError):
    """The direct kernel cannot be built here (no C++ compiler)."""


def cpu_flags() -> str:
    """What the compiled code depends on: the CPU's feature flags (or its name off Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), platform.processor())
    except OSError:
        return platform.processor() or platform.machine()


@functools.cache
def sparse_rows_op():
    """``torch.ops.sparsebench.sparse_rows`` (and the library's other ops, those of
    ``sparse_train.cpp`` among them), compiled on first use (about 15 s) and cached.

    One build per source, flags, CPU and torch version: a home folder shared by cluster nodes
    of different CPUs gets one build per CPU, never a binary the node cannot run."""
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise KernelUnavailable(
            f"the direct sparse kernel needs a C++ compiler ('{compiler}' is not on PATH; set CXX "
            "or install g++)"
        )
    if shutil.which("ninja") is None:  # torch's builder runs `ninja`; the pip package ships it
        import ninja

        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
    from torch.utils import cpp_extension

    key = "\n".join([*(s.read_text() for s in SOURCES), *FLAGS, cpu_flags(), torch.__version__])
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    cpp_extension.load(
        name=f"sparsebench_sparse_rows_{digest}",
        sources=[str(s) for s in SOURCES],
        extra_cflags=FLAGS,
        extra_ldflags=["-fopenmp"],
        is_python_module=False,
        verbose=False,
    )
    return torch.ops.sparsebench.sparse_rows


def conv_params(module: nn.Module) -> tuple[tuple[int, int], ...]:
    """(kernel, stride, padding, dilation) of a Conv2d, or a Linear as a 1x1 convolution."""
    if isinstance(module, nn.Linear):
        return (1, 1), (1, 1), (0, 0), (1, 1)
    return module.kernel_size, module.stride, module.padding, module.dilation


def refusal(module: nn.Module, rows: int = 1) -> str | None:
    """Why the direct kernel with ``rows`` output channels per group cannot run ``module``
    (None: it can)."""
    if isinstance(module, nn.Linear):
        return None
    if not isinstance(module, nn.Conv2d):
        return f"{type(module).__name__} has no direct kernel"
    if module.padding_mode != "zeros":
        return f"padding_mode '{module.padding_mode}': the direct kernel pads with zeros"
    if isinstance(module.padding, str):
        return f"padding '{module.padding}': the direct kernel takes padding in pixels"
    per_group = module.out_channels // module.groups
    if rows > 1 and module.groups > 1 and per_group % rows:  # groups=1: padded with zero rows
        return (
            f"{rows} output channels per group need out_channels/groups ({per_group}) "
            f"divisible by {rows}"
        )
    return None


class DirectSparse(nn.Module):
    """A pruned Conv2d or Linear run by the direct kernel (inference only).

    ``rows``: output channels sharing their nonzero positions (1, or 4 for ``block4x1``
    weights). Grouped and depthwise convolutions run too: a row's offsets point into its own
    group's input channels. The input layout (offsets, padded width) is derived once per input
    size and kept."""

    def __init__(
        self, module: nn.Module, rows: int = 1, pattern: torch.Tensor | None = None
    ) -> None:
        """``pattern`` (a mask of the weight's shape, ``rows=1``): the nonzeros it keeps, not
        the weight's (the sparse training kernels keep a weight that is zero, and set
        :attr:`values` each step; :attr:`index` is where each value is in the flat weight)."""
        super().__init__()
        reason = refusal(module, rows)
        if reason:
            raise ValueError(reason)
        weight = module.weight.detach() if pattern is None else pattern.to(module.weight.dtype)
        self.linear = isinstance(module, nn.Linear)
        self.kernel, self.stride, self.padding, self.dilation = conv_params(module)
        self.out_channels, per_group = weight.shape[:2]
        conv_groups = 1 if self.linear else module.groups
        self.in_channels = per_group * conv_groups
        self.rows = rows
        groups = -(-self.out_channels // rows)
        weight = weight.reshape(self.out_channels, -1)  # (c, ky, kx) column order, as unfolded
        weight = torch.cat([weight, weight.new_zeros(groups * rows - len(weight), weight.shape[1])])
        weight = weight.reshape(groups, rows, -1)
        keep = (weight != 0).any(1)  # groups x columns: the positions a group stores
        group, columns = keep.nonzero(as_tuple=True)
        taps = self.kernel[0] * self.kernel[1]
        # Each nonzero's input channel (its conv group's channels, for grouped convs) and tap.
        conv_group = group * rows // (self.out_channels // conv_groups)
        self.channels, self.taps = conv_group * per_group + columns // taps, columns % taps
        self.values = weight.permute(0, 2, 1)[group, columns].contiguous().reshape(-1)
        self.index = group * weight.shape[-1] + columns  # rows=1: the flat (row-major) index
        self.rowptr = torch.zeros(groups + 1, dtype=torch.int32)
        self.rowptr[1:] = keep.sum(1).cumsum(0)
        bias = module.bias.detach() if module.bias is not None else None
        self.bias = (
            torch.empty(0)
            if bias is None
            else torch.cat([bias, bias.new_zeros(groups * rows - len(bias))])
        )
        self.op = sparse_rows_op()
        # Depthwise convolutions (one input channel per output channel) run a kernel of their
        # own: a plane per channel, a shifted input plane added per nonzero tap, no input copy.
        self.depthwise = (
            not self.linear and rows == 1 and conv_groups == self.out_channels == self.in_channels
        )
        if self.depthwise:
            self.taps = self.taps.to(torch.int32).contiguous()
        self.layouts: dict[tuple[int, int], dict] = {}
        # The flat input per input shape, kept between calls: its padding stays zero and each
        # call writes only the image into it (zeroing it every call cost more than the copy).
        self.buffers: dict[tuple[int, ...], torch.Tensor] = {}

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        """The output's height and width for an h x w input (as nn.Conv2d computes them)."""
        ho, wo = (
            (n + 2 * p - d * (k - 1) - 1) // s + 1
            for n, k, s, p, d in zip(
                (h, w), self.kernel, self.stride, self.padding, self.dilation, strict=True
            )
        )
        return ho, wo

    def layout(self, h: int, w: int) -> dict:
        """Offsets and sizes for an h x w input: the padded input split into its stride phases
        (for stride 1 the padded input itself), each flat, one image after another."""
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (
            self.kernel,
            self.stride,
            self.padding,
            self.dilation,
        )
        hp, wp = h + 2 * ph, w + 2 * pw
        ho, wo = self.output_size(h, w)
        hq, wq = -(-hp // sh), -(-wp // sw)  # one phase plane
        c = torch.arange(self.in_channels)[:, None, None]
        ky = torch.arange(kh)[None, :, None] * dh
        kx = torch.arange(kw)[None, None, :] * dw
        offsets = ((c * sh + ky % sh) * sw + kx % sw) * hq * wq + (ky // sh) * wq + kx // sw
        offsets = offsets.reshape(self.in_channels, kh * kw)
        pixels = ho * wq
        vectors = self.vectors(pixels)
        tile = vectors * LANES
        width = -(-pixels // tile) * tile
        return {
            "hq": hq,
            "wq": wq,
            "ho": ho,
            "wo": wo,
            "vectors": vectors,
            "width": width,
            "plane": self.in_channels * sh * sw * hq * wq,
            "offsets": offsets[self.channels, self.taps].to(torch.int32).contiguous(),
        }

    def vectors(self, pixels: int) -> int:
        """Vectors of 16 pixels per tile: the widest that pads the row least (measured on
        ResNet-18/MobileNetV2 shapes: wider tiles win until padding wastes the row)."""
        options = (8, 4) if self.rows == 1 else (4, 2)
        return min(options, key=lambda v: (-(-pixels // (v * LANES)) * v * LANES, -v))

    def flat(self, x: torch.Tensor, lay: dict) -> torch.Tensor:
        """The padded, phase-split input, one flat row per image (phase (a, b) of a stride s
        holds padded pixels (s*i + a, s*j + b)); a contiguous input that needs neither padding
        nor phases (1x1, stride 1) is used as it is."""
        n, c, h, w = x.shape
        (sh, sw), (ph, pw) = self.stride, self.padding
        if sh == sw == 1 and ph == pw == 0 and x.is_contiguous():
            return x.view(n, -1)
        hq, wq = lay["hq"], lay["wq"]
        buf = self.buffers.get(x.shape)
        if buf is None:
            buf = self.buffers[x.shape] = x.new_zeros(n, lay["plane"])
        phases = buf.view(n, c, sh, sw, hq, wq)
        for a in range(sh):
            i0 = max(0, -(-(ph - a) // sh))  # first phase row inside the image
            for b in range(sw):
                j0 = max(0, -(-(pw - b) // sw))
                part = x[:, :, i0 * sh + a - ph :: sh, j0 * sw + b - pw :: sw]
                phases[:, :, a, b, i0 : i0 + part.shape[2], j0 : j0 + part.shape[3]] = part
        return buf

    def forward_depthwise(self, x: torch.Tensor) -> torch.Tensor:
        (_, kw), (sh, sw), (ph, pw), (dh, dw) = (
            self.kernel,
            self.stride,
            self.padding,
            self.dilation,
        )
        ho, wo = self.output_size(*x.shape[2:])
        return torch.ops.sparsebench.sparse_depthwise(
            x.contiguous(),
            self.rowptr,
            self.taps,
            self.values,
            self.bias,
            kw,
            sh,
            sw,
            ph,
            pw,
            dh,
            dw,
            ho,
            wo,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.depthwise:
            return self.forward_depthwise(x)
        if self.linear:  # the batch as one row of pixels: (in, B), one image
            lead, x = x.shape[:-1], x.reshape(-1, x.shape[-1])
            x = x.t().reshape(1, self.in_channels, 1, -1)
        n, _, h, w = x.shape
        lay = self.layouts.get((h, w)) or self.layouts.setdefault((h, w), self.layout(h, w))
        y = self.op(
            self.flat(x, lay),
            self.rowptr,
            lay["offsets"],
            self.values,
            self.bias,
            self.rows,
            lay["vectors"],
            lay["width"],
            lay["wq"],
            lay["ho"],
            lay["wo"],
        )
        y = y[:, : self.out_channels]
        if self.linear:
            return y[0].t().reshape(*lead, self.out_channels)
        return y.view(n, self.out_channels, lay["ho"], lay["wo"])
