// The two parts of a sparse training step that sparse_conv.cpp's product does not cover: the
// weight gradient at a sparse weight's nonzeros, and the optimizer update at them.
//
// Written by hand for the reason sparse_conv.cpp gives (no maintained library reachable from
// PyTorch on x86 computes either for a convolution without unfolding its input first:
// torch.sparse.sampled_addmm takes two dense matrices, i.e. the unfolded input), and because
// torch's optimizers update every element of a parameter (a masked weight's update is a
// dense pass over the weight and each state tensor).
//
// The weight gradient uses the forward's layout (Elsen et al. 2020): nonzero k of output row g
// reads input pixels offs[k] + p for grid pixel p, so its gradient is the dot product of the
// output gradient's row g on the grid with that shifted run of the input, summed over images.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>

namespace {

typedef float vf __attribute__((vector_size(64)));  // 16 floats
constexpr int64_t LANES = 16;

inline vf load(const float* p) {
  vf v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}

// The floats at p of which only the first `avail` exist (the rest read as zeros).
inline vf load_bounded(const float* p, int64_t avail) {
  if (avail >= LANES) return load(p);
  vf v = (vf){};
  if (avail > 0) __builtin_memcpy(&v, p, avail * sizeof(float));
  return v;
}

// The lane sums of four vectors, in shuffles and adds (a scalar loop over the lanes costs as
// much as the dot products themselves when a row of the batch is only a few vectors long).
inline void hsum4(const vf (&a)[4], float* out, int m) {
  const vf t01 = __builtin_shufflevector(a[0], a[1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20,
                                         21, 22, 23) +
                 __builtin_shufflevector(a[0], a[1], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27,
                                         28, 29, 30, 31);
  const vf t23 = __builtin_shufflevector(a[2], a[3], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20,
                                         21, 22, 23) +
                 __builtin_shufflevector(a[2], a[3], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27,
                                         28, 29, 30, 31);
  // Lanes 4j .. 4j + 3: partial sums of a[j].
  const vf u = __builtin_shufflevector(t01, t23, 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25,
                                       26, 27) +
               __builtin_shufflevector(t01, t23, 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29,
                                       30, 31);
  const vf w = u + __builtin_shufflevector(u, u, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12,
                                           13);
  const vf z = w + __builtin_shufflevector(w, w, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15,
                                           14);
  for (int j = 0; j < m; ++j) out[j] = z[4 * j];
}

// grad[k] = sum_n sum_{p < P} dy[n, g, p] * inp[n, offs[k] + p] for the nonzeros k of row g
// (rowptr[g] <= k < rowptr[g + 1]); inp reads past its row L are zeros. Eight nonzeros of a
// row share each load of dy (measured on a 4096 x 4096 Linear at batch 64, 90%: 2.7 ms, four
// nonzeros per load 5.7 ms).
template <int B>
inline void block_grad(const float* inp, int64_t L, const float* dy, int64_t n_images,
                       int64_t groups, int64_t g, int64_t P, const int32_t* offs, int m,
                       float* grad) {
  int64_t off[B];
  int64_t max_off = 0;
  for (int j = 0; j < B; ++j) {
    off[j] = offs[std::min(j, m - 1)];
    max_off = std::max(max_off, off[j]);
  }
  // Pixels whose 16-float loads stay inside every one of the B input rows.
  const int64_t safe = std::max<int64_t>(0, std::min(P, (L - max_off) / LANES * LANES));
  vf acc[B];
  for (int j = 0; j < B; ++j) acc[j] = (vf){};
  for (int64_t n = 0; n < n_images; ++n) {
    const float* d = dy + (n * groups + g) * P;
    const float* x = inp + n * L;
    int64_t p = 0;
    for (; p + LANES <= safe; p += LANES) {
      const vf dv = load(d + p);
      for (int j = 0; j < B; ++j) acc[j] += dv * load(x + off[j] + p);
    }
    for (; p < P; p += LANES) {
      const vf dv = load_bounded(d + p, P - p);
      for (int j = 0; j < B; ++j) acc[j] += dv * load_bounded(x + off[j] + p, L - off[j] - p);
    }
  }
  for (int j = 0; j < B; j += 4) {
    const vf part[4] = {acc[j], acc[j + 1], acc[j + 2], acc[j + 3]};
    if (m > j) hsum4(part, grad + j, std::min(4, m - j));
  }
}

// The same where every block's loads stay inside inp (the largest offset plus P is at most
// L) and P is a multiple of 16: no bounds to compute per block. A Linear layer is this case.
void rows_grad_inside(const float* inp, int64_t L, const float* dy, int64_t n_images,
                      int64_t groups, int64_t P, const int32_t* rowptr, const int32_t* offs,
                      float* grad) {
  at::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g) {
      int32_t k = rowptr[g];
      const int32_t stop = rowptr[g + 1];
      for (; k + 8 <= stop; k += 8) {
        vf acc[8];
        for (int j = 0; j < 8; ++j) acc[j] = (vf){};
        for (int64_t n = 0; n < n_images; ++n) {
          const float* d = dy + (n * groups + g) * P;
          const float* x = inp + n * L;
          for (int64_t p = 0; p < P; p += LANES) {
            const vf dv = load(d + p);
            for (int j = 0; j < 8; ++j) acc[j] += dv * load(x + offs[k + j] + p);
          }
        }
        const vf lo[4] = {acc[0], acc[1], acc[2], acc[3]}, hi[4] = {acc[4], acc[5], acc[6], acc[7]};
        hsum4(lo, grad + k, 4);
        hsum4(hi, grad + k + 4, 4);
      }
      for (; k < stop; k += 4)
        block_grad<4>(inp, L, dy, n_images, groups, g, P, offs + k, std::min(4, stop - k),
                      grad + k);
    }
  });
}

void rows_grad(const float* inp, int64_t L, const float* dy, int64_t n_images, int64_t groups,
               int64_t P, const int32_t* rowptr, const int32_t* offs, float* grad) {
  at::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g) {
      int32_t k = rowptr[g];
      const int32_t stop = rowptr[g + 1];
      for (; k + 8 <= stop; k += 8)
        block_grad<8>(inp, L, dy, n_images, groups, g, P, offs + k, 8, grad + k);
      for (; k < stop; k += 4)
        block_grad<4>(inp, L, dy, n_images, groups, g, P, offs + k, std::min(4, stop - k),
                      grad + k);
    }
  });
}

// inp [N, L]: the forward's flat input; dy [N, G, P]: the output gradient on the forward's grid
// (zeros at the grid's dropped pixels); rowptr [G + 1], offs [nnz] as in sparse_rows.
at::Tensor sparse_rows_grad(const at::Tensor& inp, const at::Tensor& dy, const at::Tensor& rowptr,
                            const at::Tensor& offs) {
  TORCH_CHECK(inp.dim() == 2 && inp.is_contiguous() && inp.scalar_type() == at::kFloat,
              "sparse_rows_grad: inp must be a contiguous float [N, L] tensor");
  TORCH_CHECK(dy.dim() == 3 && dy.is_contiguous() && dy.scalar_type() == at::kFloat &&
                  dy.size(0) == inp.size(0) && dy.size(1) == rowptr.numel() - 1,
              "sparse_rows_grad: dy must be a contiguous float [N, G, P] tensor");
  TORCH_CHECK(rowptr.scalar_type() == at::kInt && offs.scalar_type() == at::kInt &&
                  rowptr.is_contiguous() && offs.is_contiguous() &&
                  rowptr.data_ptr<int32_t>()[rowptr.numel() - 1] == offs.numel(),
              "sparse_rows_grad: rowptr and offs must be int32 and agree");
  auto grad = at::empty({offs.numel()}, inp.options());
  if (offs.numel() == 0) return grad;
  const auto [lowest, highest] = at::aminmax(offs);  // (a serial loop here cost 0.6 ms)
  const int64_t min_off = lowest.item<int32_t>(), max_off = highest.item<int32_t>();
  const int64_t L = inp.size(1), P = dy.size(2);
  TORCH_CHECK(min_off >= 0 && max_off < L, "sparse_rows_grad: an offset is outside inp");
  auto kernel = max_off + P <= L && P % LANES == 0 ? rows_grad_inside : rows_grad;
  kernel(inp.data_ptr<float>(), L, dy.data_ptr<float>(), dy.size(0), dy.size(1), P,
         rowptr.data_ptr<int32_t>(), offs.data_ptr<int32_t>(), grad.data_ptr<float>());
  return grad;
}

void check_update(const at::Tensor& weight, const at::Tensor& values, const at::Tensor& grad,
                  const at::Tensor& flat) {
  TORCH_CHECK(weight.is_contiguous() && weight.scalar_type() == at::kFloat &&
                  values.is_contiguous() && grad.is_contiguous() &&
                  values.numel() == flat.numel() && grad.numel() == flat.numel() &&
                  flat.scalar_type() == at::kLong && flat.is_contiguous(),
              "update: weight, values, grad and flat disagree");
}

// torch.optim.SGD's update (momentum, dampening, Nesterov, weight decay) of the weights at the
// flat indices only, with the momentum buffer dense (as torch keeps it) and touched there only;
// the new weights are also written to `values` (the kernels' copy of the nonzeros).
void sgd_at(at::Tensor weight, at::Tensor values, const at::Tensor& grad, const at::Tensor& flat,
            at::Tensor buf, double lr, double momentum, double dampening, double weight_decay,
            bool nesterov, bool first) {
  check_update(weight, values, grad, flat);
  const bool has_buf = momentum != 0.0;
  TORCH_CHECK(!has_buf || (buf.is_contiguous() && buf.numel() == weight.numel()),
              "sgd_at: the momentum buffer must be dense like the weight");
  float* w = weight.data_ptr<float>();
  float* v = values.data_ptr<float>();
  const float* g = grad.data_ptr<float>();
  const int64_t* f = flat.data_ptr<int64_t>();
  float* b = has_buf ? buf.data_ptr<float>() : nullptr;
  const float lr_ = lr, mu = momentum, damp = 1.0 - dampening, wd = weight_decay;
  at::parallel_for(0, flat.numel(), 4096, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const int64_t i = f[k];
      float p = w[i];
      float d = g[k];
      if (wd != 0.0f) d += wd * p;
      if (b) {
        const float m = first ? d : mu * b[i] + damp * d;
        b[i] = m;
        d = nesterov ? d + mu * m : m;
      }
      p -= lr_ * d;
      w[i] = p;
      v[k] = p;
    }
  });
}

// torch.optim.Adam / AdamW (decoupled weight decay) at the flat indices, `step` counted already
// (the state's step after this update), moments dense as torch keeps them.
void adam_at(at::Tensor weight, at::Tensor values, const at::Tensor& grad, const at::Tensor& flat,
             at::Tensor exp_avg, at::Tensor exp_avg_sq, double lr, double beta1, double beta2,
             double eps, double weight_decay, bool decoupled, double step) {
  check_update(weight, values, grad, flat);
  TORCH_CHECK(exp_avg.is_contiguous() && exp_avg_sq.is_contiguous() &&
                  exp_avg.numel() == weight.numel() && exp_avg_sq.numel() == weight.numel(),
              "adam_at: the moments must be dense like the weight");
  float* w = weight.data_ptr<float>();
  float* v = values.data_ptr<float>();
  const float* g = grad.data_ptr<float>();
  const int64_t* f = flat.data_ptr<int64_t>();
  float* m1 = exp_avg.data_ptr<float>();
  float* m2 = exp_avg_sq.data_ptr<float>();
  const double bc1 = 1.0 - std::pow(beta1, step), bc2 = 1.0 - std::pow(beta2, step);
  const float step_size = lr / bc1, bc2_sqrt = std::sqrt(bc2), b1 = beta1, b2 = beta2;
  const float decay = decoupled ? 1.0 - lr * weight_decay : 1.0, wd = decoupled ? 0.0 : weight_decay;
  const float eps_ = eps;
  at::parallel_for(0, flat.numel(), 4096, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const int64_t i = f[k];
      float p = w[i] * decay;
      float d = g[k];
      if (wd != 0.0f) d += wd * w[i];
      const float a = m1[i] + (1.0f - b1) * (d - m1[i]);  // torch: exp_avg.lerp_(grad, 1 - b1)
      const float s = b2 * m2[i] + (1.0f - b2) * d * d;
      m1[i] = a;
      m2[i] = s;
      p -= step_size * a / (std::sqrt(s) / bc2_sqrt + eps_);
      w[i] = p;
      v[k] = p;
    }
  });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(sparsebench, m) {
  m.def("sparse_rows_grad(Tensor inp, Tensor dy, Tensor rowptr, Tensor offs) -> Tensor",
        &sparse_rows_grad);
  m.def("sgd_at(Tensor(a!) weight, Tensor(b!) values, Tensor grad, Tensor flat, Tensor(c!) buf, "
        "float lr, float momentum, float dampening, float weight_decay, bool nesterov, "
        "bool first) -> ()",
        &sgd_at);
  m.def("adam_at(Tensor(a!) weight, Tensor(b!) values, Tensor grad, Tensor flat, "
        "Tensor(c!) exp_avg, Tensor(d!) exp_avg_sq, float lr, float beta1, float beta2, "
        "float eps, float weight_decay, bool decoupled, float step) -> ()",
        &adam_at);
}
