"""The three products of a sparse training step (forward, input gradient, weight gradient at the
nonzeros) and the structures they run on: :mod:`sparsebench.hardware.training` puts them in a
training step. Formulation and reasons: that module's docstring."""

from __future__ import annotations

import torch
from torch import nn

from sparsebench.hardware.direct import LANES, DirectSparse

# Below this many grid pixels per image (e.g. ResNet-18's 8x8 and smaller maps at 32x32 input),
# the batch is folded into the pixels: activations laid out (C, H, W, N), so that a nonzero's
# run of pixels is a run of (pixel, image) pairs, N times longer. Measured on ResNet-18's shapes
# (benchmarks/sparse_training.py): per image, a 2x2 map computed 64-pixel tiles for 8 pixels.
FOLD_BELOW = 1024


class Plan:
    """The structures of one masked layer's kept weights, for the mask version they were
    built from, and the layer's step state: kept values, pending gradient, buffers."""

    def __init__(self, module: nn.Module, mask: torch.Tensor) -> None:
        self.version = mask._version
        self.direct = DirectSparse(module, pattern=mask)
        self.linear = isinstance(module, nn.Linear)
        self.flat = self.direct.index  # where each kept value is in the flat weight
        self.cols = mask[0].numel()
        self.rows = self.flat // self.cols  # each nonzero's output channel
        self.values: torch.Tensor | None = None  # the kept values, for weight_version
        self.weight_version = -1
        self.grad: torch.Tensor | None = None  # the kept weights' gradient, not yet applied
        self.buffer: torch.Tensor | None = None  # weight.grad when it is written densely
        self.buffered = False  # the buffer holds this step's sparse gradient
        self.busy = False  # a forward's flat input awaits its backward
        self.layouts: dict[tuple[int, ...], dict] = {}
        self.buffers: dict[tuple, torch.Tensor] = {}

    def kept(self, weight: torch.Tensor) -> torch.Tensor:
        if self.values is None or self.weight_version != weight._version:
            self.values = torch.take(weight.detach(), self.flat)  # ([] is 4x slower)
            self.weight_version = weight._version
        return self.values

    def buffer_for(self, key: tuple, shape: tuple[int, ...]) -> torch.Tensor:
        """A zeroed buffer kept per use and shape (its padding stays zero; each call writes
        only the interior: zeroing it every step cost more than the copy)."""
        buf = self.buffers.get((key, shape))
        if buf is None:
            buf = self.buffers[(key, shape)] = torch.zeros(shape)
        return buf

    def layout(self, n: int, h: int, w: int) -> dict:
        """The forward's and the input gradient's structures for n images of h x w."""
        if (n, h, w) in self.layouts:
            return self.layouts[(n, h, w)]
        d = self.direct
        base = d.layouts.get((h, w)) or d.layouts.setdefault((h, w), d.layout(h, w))
        ho, wo, hq, wq = base["ho"], base["wo"], base["hq"], base["wq"]
        fold = n if not self.linear and n > 1 and ho * wq < FOLD_BELOW else 1
        lay = {"fold": fold, "ho": ho, "wo": wo, "hq": hq, "wq": wq, "plane": base["plane"]}
        # A nonzero whose tap reads only padding at this size (a 3x3 kernel on a 1x1 map: 8 of
        # its 9 taps) adds nothing to y or dx and has a zero gradient: left out of the products.
        live = self.live(h, w, ho, wo)
        lay["live"] = None if bool(live.all()) else live.nonzero().squeeze(1)
        lay["forward"] = _call(
            d, base["offsets"][live], ho, wq, wo, fold, _rowptr(self.rows[live], d.out_channels)
        )
        lay["phases"], lay["pad"] = self.transposed(h, w, ho, wo, fold, live)
        self.layouts[(n, h, w)] = lay
        return lay

    def live(self, h: int, w: int, ho: int, wo: int) -> torch.Tensor:
        """The nonzeros whose tap reads some input pixel (not only padding) at this size."""
        d = self.direct
        live = torch.ones(len(self.flat), dtype=torch.bool)
        taps = (d.taps // d.kernel[1], d.taps % d.kernel[1])
        for t, n_in, n_out, s, p, dil in zip(
            taps, (h, w), (ho, wo), d.stride, d.padding, d.dilation, strict=True
        ):
            first = t * dil - p  # the input pixel output 0 reads; output o reads first + o * s
            live &= (first + (n_out - 1) * s >= 0) & (first < n_in)
        return live

    def transposed(
        self, h: int, w: int, ho: int, wo: int, fold: int, live: torch.Tensor
    ) -> tuple[list, tuple]:
        """W^T's structure: per stride phase of dx, the nonzeros that reach it (rows: input
        channels) and their offsets into the padded output gradient, and that padding."""
        d = self.direct
        kw = d.kernel[1]
        co = self.rows
        phase_y, e_y = _phases(d.taps // kw, d.stride[0], d.padding[0], d.dilation[0])
        phase_x, e_x = _phases(d.taps % kw, d.stride[1], d.padding[1], d.dilation[1])
        size_y = -(-(h - phase_y) // d.stride[0])  # each nonzero's phase's height
        size_x = -(-(w - phase_x) // d.stride[1])
        lo_y, lo_x = max(0, -int(e_y.min())), max(0, -int(e_x.min()))
        hd = ho + lo_y + max(0, int((size_y + e_y - ho).max()))
        wd = wo + lo_x + max(0, int((size_x + e_x - wo).max()))
        offsets = co * hd * wd + (e_y + lo_y) * wd + (e_x + lo_x)
        phase = phase_y * d.stride[1] + phase_x
        phases = []
        for a in range(d.stride[0]):
            for b in range(d.stride[1]):
                ha, wa = -(-(h - a) // d.stride[0]), -(-(w - b) // d.stride[1])
                where = ((phase == a * d.stride[1] + b) & live).nonzero().squeeze(1)
                if ha <= 0 or wa <= 0 or len(where) == 0:
                    continue  # these input pixels get no gradient from any kept weight
                order = where[torch.argsort(d.channels[where], stable=True)]
                rowptr = _rowptr(d.channels[order], d.in_channels)
                call = _call(d, offsets[order], ha, wd, wa, fold, rowptr)
                phases.append({"a": a, "b": b, "ha": ha, "wa": wa, "order": order, **call})
        return phases, (lo_y, lo_x, hd, wd)


def _rowptr(rows: torch.Tensor, count: int) -> torch.Tensor:
    """CSR row pointers (int32) of the sorted row indices ``rows``."""
    rowptr = torch.zeros(count + 1, dtype=torch.int32)
    rowptr[1:] = torch.bincount(rows, minlength=count).cumsum(0)
    return rowptr


def _call(d: DirectSparse, offsets, out_h, grid_w, out_w, fold, rowptr) -> dict:
    """sparse_rows' arguments for a grid of out_h rows of grid_w pixels (out_w kept), each
    pixel ``fold`` floats (the folded batch)."""
    pixels = out_h * grid_w * fold
    vectors = d.vectors(pixels)
    tile = vectors * LANES
    return {
        "rowptr": rowptr,
        "offsets": (offsets * fold).to(torch.int32).contiguous(),
        "vectors": vectors,
        "width": -(-pixels // tile) * tile,
        "grid_w": grid_w * fold,
        "out_h": out_h,
        "out_w": out_w * fold,
    }


def _rows(d: DirectSparse, inp: torch.Tensor, call: dict, values, bias, order=None):
    return d.op(
        inp,
        call["rowptr"],
        call["offsets"],
        values,
        bias,
        1,
        call["vectors"],
        call["width"],
        call["grid_w"],
        call["out_h"],
        call["out_w"],
        order,
    )


def _phases(taps: torch.Tensor, s: int, p: int, dil: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Along one axis, for each nonzero's tap t: the stride phase a of the input pixels it
    reaches (input i = s * o + t * dil - p) and its shift e (phase row i' = o - e)."""
    t = taps.to(torch.int64) * dil
    a = (t - p) % s
    return a, (a + p - t) // s


def as_image(x: torch.Tensor, linear: bool) -> torch.Tensor:
    """A Linear's input (..., in) as one image of the rows as pixels: (1, in, 1, rows)."""
    if not linear:
        return x
    return x.reshape(-1, x.shape[-1]).t().reshape(1, x.shape[-1], 1, -1)


def _folded(plan: Plan, x4: torch.Tensor, lay: dict) -> torch.Tensor:
    """The padded, phase-split input with the batch folded in: (C, s, s, hq, wq, N), flat."""
    d = plan.direct
    n, c, h, w = x4.shape
    (sh, sw), (ph, pw) = d.stride, d.padding
    buf = plan.buffer_for("input", (lay["plane"] * n,))
    if plan.busy:
        buf = buf.clone()  # a second forward before the first's backward: keep the first's
    phases = buf.view(c, sh, sw, lay["hq"], lay["wq"], n)
    for a in range(sh):
        i0 = max(0, -(-(ph - a) // sh))  # first phase row inside the image
        for b in range(sw):
            j0 = max(0, -(-(pw - b) // sw))
            part = x4[:, :, i0 * sh + a - ph :: sh, j0 * sw + b - pw :: sw].permute(1, 2, 3, 0)
            phases[:, a, b, i0 : i0 + part.shape[1], j0 : j0 + part.shape[2]] = part
    return buf.view(1, -1)


def forward_product(plan: Plan, x4: torch.Tensor, values: torch.Tensor, bias) -> tuple:
    """y of the masked layer on image batch x4, and the flat input its weight gradient reads."""
    d = plan.direct
    n, _, h, w = x4.shape
    lay = plan.layout(n, h, w)
    bias = bias.detach() if bias is not None else values.new_empty(0)
    live = values if lay["live"] is None else values[lay["live"]]
    if lay["fold"] > 1:
        inp = _folded(plan, x4, lay)
        y = _rows(d, inp, lay["forward"], live, bias)
        plan.busy = torch.is_grad_enabled()
        return y.view(-1, lay["ho"], lay["wo"], n).permute(3, 0, 1, 2), inp
    d.values, d.bias = values, bias
    if d.depthwise:
        return d.forward_depthwise(x4), None
    inp = d.flat(x4, d.layouts[(h, w)])
    shared = d.buffers.get(x4.shape)
    if plan.busy and shared is not None and inp.data_ptr() == shared.data_ptr():
        inp = inp.clone()  # a second forward before the first's backward: keep the first's
    plan.busy = torch.is_grad_enabled()
    y = _rows(d, inp, lay["forward"], live, bias)
    return y.view(n, -1, lay["ho"], lay["wo"]), inp


def input_grad(plan: Plan, dy: torch.Tensor, values: torch.Tensor, h: int, w: int):
    """dx = W^T * dy at the nonzeros, phase by phase (see :meth:`Plan.transposed`)."""
    d = plan.direct
    n, c = dy.shape[:2]
    lay = plan.layout(n, h, w)
    fold, ho, wo = lay["fold"], lay["ho"], lay["wo"]
    lo_y, lo_x, hd, wd = lay["pad"]
    if fold > 1:
        padded = plan.buffer_for("dy", (c, hd, wd, n))
        padded[:, lo_y : lo_y + ho, lo_x : lo_x + wo] = dy.permute(1, 2, 3, 0)
        padded = padded.view(1, -1)
    elif (hd, wd) == (ho, wo):
        padded = dy.contiguous().view(n, -1)
    else:
        padded = plan.buffer_for("dy", (n, c, hd, wd))
        padded[:, :, lo_y : lo_y + ho, lo_x : lo_x + wo] = dy
        padded = padded.view(n, -1)
    s_y, s_x = d.stride
    whole = len(lay["phases"]) == 1 and (s_y, s_x) == (1, 1)
    dx = None if whole else dy.new_zeros(n, d.in_channels, h, w)
    empty = values.new_empty(0)
    for ph in lay["phases"]:
        out = _rows(d, padded, ph, values, empty, ph["order"])  # W^T's values read in place
        if fold > 1:
            out = out.view(d.in_channels, ph["ha"], ph["wa"], n).permute(3, 0, 1, 2)
        else:
            out = out.view(n, d.in_channels, ph["ha"], ph["wa"])
        if whole:
            return out
        dx[:, :, ph["a"] :: s_y, ph["b"] :: s_x] = out
    return dx


def weight_grad(plan: Plan, inp: torch.Tensor, x4: torch.Tensor, dy: torch.Tensor):
    """The kept weights' gradient: each one's output row of dy on the forward's grid dotted
    with the input run it read."""
    d = plan.direct
    n, _, h, w = x4.shape
    lay = plan.layout(n, h, w)
    fold, ho, wo, wq = lay["fold"], lay["ho"], lay["wo"], lay["wq"]
    if inp is None:  # depthwise: its forward read the input in place
        inp = d.flat(x4, d.layouts[(h, w)])
    if fold > 1:
        grid = plan.buffer_for("grid", (d.out_channels, ho, wq, n))
        grid[:, :, :wo] = dy.permute(1, 2, 3, 0)
        grid = grid.view(1, d.out_channels, -1)
    elif wq == wo:
        grid = dy.contiguous().view(n, d.out_channels, ho * wo)
    else:
        grid = plan.buffer_for("grid", (n, d.out_channels, ho, wq))
        grid[..., :wo] = dy
        grid = grid.view(n, d.out_channels, ho * wq)
    call = lay["forward"]
    grad = torch.ops.sparsebench.sparse_rows_grad(inp, grid, call["rowptr"], call["offsets"])
    if lay["live"] is None:
        return grad
    return grad.new_zeros(len(plan.flat)).index_copy_(0, lay["live"], grad)
