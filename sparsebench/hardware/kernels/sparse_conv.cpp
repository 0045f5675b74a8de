// Sparse weight x dense activations on the CPU: the kernel of sparsebench's cpu_sparse target
// for convolutions (any kernel size, stride, padding, dilation) and Linear layers.
//
// Written by hand because no maintained library reachable from PyTorch 2.14 on x86 runs a
// sparse convolution directly (docs/hardware.md, "Why a kernel of our own"): torch.sparse's
// MKL CSR/BSR products need the inputs unfolded first, which costs more than the dense
// convolution it replaces; XNNPACK's sparse path is ARM-only in PyTorch builds; oneDNN's
// sparse primitives are not exposed to Python.
//
// The formulation is Elsen et al. 2020, "Fast Sparse ConvNets" (CVPR): output channels are
// rows of a sparse matrix, and the activations stay in CHW order so that each nonzero weight
// multiplies a contiguous run of pixels. A k x k convolution becomes the same product over
// shifted runs: the caller lays the (zero-padded, stride-phase-split) input out flat, and each
// nonzero (c, ky, kx) becomes an offset into it; output pixel p of a row reads input p + offset.
// Rows are processed in blocks of R output channels (R = 1, or 4 for the group pattern of
// SparseByteNN, Xu et al. 2023, where 4 output channels keep or drop a weight position
// together): one load of input pixels then feeds R accumulators.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <tuple>

namespace {

typedef float vf __attribute__((vector_size(64)));  // 16 floats: 1 AVX-512 or 2 AVX2 registers
constexpr int64_t LANES = 16;

inline vf load(const float* p) {
  vf v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}

inline void store(float* p, vf v) { __builtin_memcpy(p, &v, sizeof v); }

// The floats at p of which only the first `avail` exist (the rest read as zeros).
inline vf load_bounded(const float* p, int64_t avail) {
  if (avail >= LANES) return load(p);
  vf v = (vf){};
  if (avail > 0) __builtin_memcpy(&v, p, avail * sizeof(float));
  return v;
}

// Where output pixels go: pixel p of the computed grid (rows of `grid_w`) is output pixel
// (p / grid_w, p % grid_w) of an out_h x out_w image; columns past out_w are dropped.
struct Grid {
  int64_t grid_w, out_h, out_w;
};

// Store R rows of one tile (pixels p0 .. p0 + n - 1 of the grid) into out (channel stride
// out_h * out_w): whole vectors when the grid is the output, else row segment by segment.
template <int R, int V>
inline void store_tile(const vf (&acc)[R][V], float* out, int64_t p0, const Grid& g) {
  constexpr int64_t n = V * LANES;
  const int64_t plane = g.out_h * g.out_w;
  if (g.grid_w == g.out_w && p0 + n <= plane) {
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < V; ++v) store(out + r * plane + p0 + v * LANES, acc[r][v]);
    return;
  }
  float buf[R][n];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) store(buf[r] + v * LANES, acc[r][v]);
  for (int64_t p = p0; p < p0 + n;) {
    const int64_t y = p / g.grid_w, x = p - y * g.grid_w;
    const int64_t run = std::min(g.grid_w - x, p0 + n - p);
    if (y >= g.out_h) break;
    const int64_t keep = std::min(run, std::max<int64_t>(0, g.out_w - x));
    for (int r = 0; r < R && keep > 0; ++r)
      std::memcpy(out + r * plane + y * g.out_w + x, buf[r] + (p - p0), keep * sizeof(float));
    p += run;
  }
}

// out[n, g*R + r, pixel] = bias[g*R + r] + sum_k vals[k*R + r] * inp[n, offs[k] + p] for k in
// [rowptr[g], rowptr[g+1]) and each grid pixel p in [0, tiles * V * LANES), stored by Grid.
// Tiles from `safe_tiles` on may reach past the end of an image's input (when the caller
// passes the activations in place, with no padding after them): they read with bounds.
template <int R, int V, bool INDEXED = false>
void spmm(const float* inp, int64_t in_stride, const int32_t* rowptr, const int32_t* offs,
          const float* vals, const float* bias, float* out, int64_t n_images, int64_t groups,
          int64_t tiles, int64_t safe_tiles, int64_t out_stride, Grid grid,
          const int64_t* order = nullptr) {
  // INDEXED (R = 1): nonzero k's value is vals[order[k]] (W^T's values read in place from W's
  // order: gathering them first cost more than the product, 7 ms for 1.7M values).
  auto val = [&](int64_t k, int r) { return INDEXED ? vals[order[k]] : vals[k * R + r]; };
  const int64_t tile = V * LANES;
  const int64_t plane = grid.out_h * grid.out_w;
  at::parallel_for(0, n_images * tiles * groups, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t g = i % groups, t = (i / groups) % tiles, n = i / (groups * tiles);
      const float* x = inp + n * in_stride + t * tile;
      vf acc[R][V];
      for (int r = 0; r < R; ++r) {
        const float b = bias ? bias[g * R + r] : 0.0f;
        for (int v = 0; v < V; ++v) acc[r][v] = (vf){} + b;
      }
      // With one row, two accumulator sets (even and odd nonzeros) hide the FMA latency.
      constexpr int S = R == 1 ? 2 : 1;
      vf part[S > 1 ? V : 1];
      for (int v = 0; v < (S > 1 ? V : 1); ++v) part[v] = (vf){};
      int32_t k = rowptr[g];
      const int32_t stop = rowptr[g + 1];
      if (t >= safe_tiles) {
        const int64_t end = in_stride - t * tile;  // floats of this image from x on
        for (; k < stop; ++k) {
          vf xin[V];
          for (int v = 0; v < V; ++v)
            xin[v] = load_bounded(x + offs[k] + v * LANES, end - offs[k] - v * LANES);
          for (int r = 0; r < R; ++r) {
            const float w = val(k, r);
            for (int v = 0; v < V; ++v) acc[r][v] += w * xin[v];
          }
        }
      }
      if constexpr (S > 1) {
        for (; k + 1 < stop; k += 2) {
          const float* xa = x + offs[k];
          const float* xb = x + offs[k + 1];
          const float wa = val(k, 0), wb = val(k + 1, 0);
          for (int v = 0; v < V; ++v) {
            acc[0][v] += wa * load(xa + v * LANES);
            part[v] += wb * load(xb + v * LANES);
          }
        }
      }
      for (; k < stop; ++k) {
        const float* xp = x + offs[k];
        vf xin[V];
        for (int v = 0; v < V; ++v) xin[v] = load(xp + v * LANES);
        for (int r = 0; r < R; ++r) {
          const float w = val(k, r);
          for (int v = 0; v < V; ++v) acc[r][v] += w * xin[v];
        }
      }
      if constexpr (S > 1)
        for (int v = 0; v < V; ++v) acc[0][v] += part[v];
      store_tile<R, V>(acc, out + n * out_stride + (g * R) * plane, t * tile, grid);
    }
  });
}

// inp [N, L] (flat; tiles that would read past L read zeros there); rowptr [G + 1]; offs [nnz];
// vals [nnz * R]; bias [G * R] or empty; width: grid pixels computed (a multiple of the tile).
// Returns [N, G * R, out_h * out_w]: grid pixel p is output (p / grid_w, p % grid_w).
at::Tensor sparse_rows(const at::Tensor& inp, const at::Tensor& rowptr, const at::Tensor& offs,
                       const at::Tensor& vals, const at::Tensor& bias, int64_t rows_per_group,
                       int64_t vectors, int64_t width, int64_t grid_w, int64_t out_h,
                       int64_t out_w, const std::optional<at::Tensor>& order) {
  TORCH_CHECK(inp.dim() == 2 && inp.is_contiguous() && inp.scalar_type() == at::kFloat,
              "sparse_rows: inp must be a contiguous float [N, L] tensor");
  TORCH_CHECK(rowptr.scalar_type() == at::kInt && offs.scalar_type() == at::kInt,
              "sparse_rows: rowptr and offs must be int32");
  const int64_t tile = vectors * LANES;
  TORCH_CHECK(width % tile == 0, "sparse_rows: width must be a multiple of the tile");
  const int64_t groups = rowptr.numel() - 1, tiles = width / tile, n = inp.size(0);
  TORCH_CHECK(rowptr.numel() >= 1 && offs.is_contiguous() && vals.is_contiguous(),
              "sparse_rows: rowptr must be non-empty, offs and vals contiguous");
  TORCH_CHECK(out_w <= grid_w && out_h * grid_w <= width, "sparse_rows: grid smaller than out");
  int64_t max_off = 0, min_off = 0;
  if (offs.numel()) {
    const auto [lowest, highest] = at::aminmax(offs);  // (a serial loop cost 0.6 ms at 1.7M)
    min_off = lowest.item<int32_t>(), max_off = highest.item<int32_t>();
  }
  TORCH_CHECK(min_off >= 0 && max_off < inp.size(1), "sparse_rows: an offset is outside inp");
  const int64_t safe_tiles = std::max<int64_t>(0, (inp.size(1) - max_off) / tile);
  const bool indexed = order.has_value();
  TORCH_CHECK(rowptr.is_contiguous() && rowptr.data_ptr<int32_t>()[groups] == offs.numel() &&
                  (indexed || vals.numel() == offs.numel() * rows_per_group),
              "sparse_rows: rowptr, offs and vals disagree");
  if (indexed) {
    TORCH_CHECK(rows_per_group == 1 && order->scalar_type() == at::kLong &&
                    order->is_contiguous() && order->numel() == offs.numel(),
                "sparse_rows: order must be int64, one per offset, with rows_per_group 1");
    if (order->numel()) {
      const auto [lowest, highest] = at::aminmax(*order);
      TORCH_CHECK(lowest.item<int64_t>() >= 0 && highest.item<int64_t>() < vals.numel(),
                  "sparse_rows: an order index is outside vals");
    }
  }
  auto out = at::empty({n, groups * rows_per_group, out_h * out_w}, inp.options());
  const float* b = bias.numel() ? bias.data_ptr<float>() : nullptr;
  auto args = std::make_tuple(inp.data_ptr<float>(), inp.size(1), rowptr.data_ptr<int32_t>(),
                              offs.data_ptr<int32_t>(), vals.data_ptr<float>(), b,
                              out.data_ptr<float>(), n, groups, tiles, safe_tiles, out.stride(0),
                              Grid{grid_w, out_h, out_w});
  if (indexed) {
    auto with_order = std::tuple_cat(args, std::make_tuple(order->data_ptr<int64_t>()));
    if (vectors == 4) return std::apply(spmm<1, 4, true>, with_order), out;
    if (vectors == 8) return std::apply(spmm<1, 8, true>, with_order), out;
  }
#define SB_CASE(R, V) \
  if (!indexed && rows_per_group == R && vectors == V) \
    return std::apply(spmm<R, V, false>, std::tuple_cat(args, std::make_tuple(nullptr))), out;
  SB_CASE(1, 4) SB_CASE(1, 8) SB_CASE(4, 2) SB_CASE(4, 4)
#undef SB_CASE
  TORCH_CHECK(false, "sparse_rows: (rows_per_group, vectors) must be (1, 4), (1, 8), (4, 2) or (4, 4)");
}

// A depthwise convolution (groups = channels) with few nonzero taps per channel: each output
// plane starts as its bias and adds, per nonzero tap, the input plane shifted by the tap and
// scaled by its weight, over the output pixels whose input pixel is inside the image (zero
// padding by omission). A channel without taps costs one fill and reads no input. x: [N, C, H, W]
// contiguous; rowptr [C + 1], taps (ky * kw + kx) and vals per nonzero.
at::Tensor sparse_depthwise(const at::Tensor& x, const at::Tensor& rowptr, const at::Tensor& taps,
                            const at::Tensor& vals, const at::Tensor& bias, int64_t kw,
                            int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
                            int64_t dil_h, int64_t dil_w, int64_t out_h, int64_t out_w) {
  TORCH_CHECK(x.dim() == 4 && x.is_contiguous() && x.scalar_type() == at::kFloat,
              "sparse_depthwise: x must be a contiguous float [N, C, H, W] tensor");
  TORCH_CHECK(rowptr.scalar_type() == at::kInt && taps.scalar_type() == at::kInt &&
                  rowptr.is_contiguous() && taps.is_contiguous() && vals.is_contiguous() &&
                  rowptr.numel() == x.size(1) + 1 && taps.numel() == vals.numel() &&
                  rowptr.data_ptr<int32_t>()[x.size(1)] == taps.numel(),
              "sparse_depthwise: rowptr, taps and vals disagree with x");
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  auto out = at::empty({n, c, out_h, out_w}, x.options());
  const float* in = x.data_ptr<float>();
  float* o = out.data_ptr<float>();
  const int32_t* rp = rowptr.data_ptr<int32_t>();
  const int32_t* tp = taps.data_ptr<int32_t>();
  const float* vp = vals.data_ptr<float>();
  const float* b = bias.numel() ? bias.data_ptr<float>() : nullptr;
  at::parallel_for(0, n * c, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t ch = i % c;
      const float* src = in + i * h * w;
      float* dst = o + i * out_h * out_w;
      std::fill(dst, dst + out_h * out_w, b ? b[ch] : 0.0f);
      for (int32_t k = rp[ch]; k < rp[ch + 1]; ++k) {
        const int64_t dy = (tp[k] / kw) * dil_h - pad_h, dx = (tp[k] % kw) * dil_w - pad_w;
        const float v = vp[k];
        // Output pixels whose input pixel (y * s + dy, x * s + dx) is inside the image.
        const int64_t y0 = std::max<int64_t>(0, (-dy + stride_h - 1) / stride_h);
        const int64_t y1 = std::min<int64_t>(out_h, (h - 1 - dy) / stride_h + 1);
        const int64_t x0 = std::max<int64_t>(0, (-dx + stride_w - 1) / stride_w);
        const int64_t x1 = std::min<int64_t>(out_w, (w - 1 - dx) / stride_w + 1);
        if (h - 1 - dy < 0 || w - 1 - dx < 0) continue;
        for (int64_t y = y0; y < y1; ++y) {
          const float* row = src + (y * stride_h + dy) * w + dx;
          float* out_row = dst + y * out_w;
          if (stride_w == 1) {
            for (int64_t xx = x0; xx < x1; ++xx) out_row[xx] += v * row[xx];
          } else {
            for (int64_t xx = x0; xx < x1; ++xx) out_row[xx] += v * row[xx * stride_w];
          }
        }
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(sparsebench, m) {
  m.def("sparse_rows(Tensor inp, Tensor rowptr, Tensor offs, Tensor vals, Tensor bias, "
        "int rows_per_group, int vectors, int width, int grid_w, int out_h, int out_w, "
        "Tensor? order=None) -> Tensor",
        &sparse_rows);
  m.def("sparse_depthwise(Tensor x, Tensor rowptr, Tensor taps, Tensor vals, Tensor bias, int kw, "
        "int stride_h, int stride_w, int pad_h, int pad_w, int dil_h, int dil_w, int out_h, "
        "int out_w) -> Tensor",
        &sparse_depthwise);
}
