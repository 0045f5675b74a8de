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

inline float hsum(vf v) {
  float s = 0.0f;
  for (int i = 0; i < LANES; ++i) s += v[i];
  return s;
}

// grad[k] = sum_n sum_{p < P} dy[n, g, p] * inp[n, offs[k] + p] for the nonzeros k of row g
// (rowptr[g] <= k < rowptr[g + 1]); inp reads past its row L are zeros. Four nonzeros of a
// row share each load of dy.
void rows_grad(const float* inp, int64_t L, const float* dy, int64_t n_images, int64_t groups,
               int64_t P, const int32_t* rowptr, const int32_t* offs, float* grad) {
  at::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g) {
      int32_t k = rowptr[g];
      const int32_t stop = rowptr[g + 1];
      for (; k < stop; k += 4) {
        const int m = std::min<int32_t>(4, stop - k);
        int64_t off[4];
        int64_t max_off = 0;
        for (int j = 0; j < 4; ++j) {
          off[j] = offs[k + std::min(j, m - 1)];
          max_off = std::max(max_off, off[j]);
        }
        // Pixels whose 16-float loads stay inside every one of the four input rows.
        const int64_t safe = std::max<int64_t>(0, std::min(P, (L - max_off) / LANES * LANES));
        vf acc[4] = {(vf){}, (vf){}, (vf){}, (vf){}};
        for (int64_t n = 0; n < n_images; ++n) {
          const float* d = dy + (n * groups + g) * P;
          const float* x = inp + n * L;
          int64_t p = 0;
          for (; p + LANES <= safe; p += LANES) {
            const vf dv = load(d + p);
            for (int j = 0; j < 4; ++j) acc[j] += dv * load(x + off[j] + p);
          }
          for (; p < P; p += LANES) {
            const vf dv = load_bounded(d + p, P - p);
            for (int j = 0; j < 4; ++j) acc[j] += dv * load_bounded(x + off[j] + p, L - off[j] - p);
          }
        }
        for (int j = 0; j < m; ++j) grad[k + j] = hsum(acc[j]);
      }
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
  const int32_t* o = offs.data_ptr<int32_t>();
  for (int64_t k = 0; k < offs.numel(); ++k)
    TORCH_CHECK(o[k] >= 0 && o[k] < inp.size(1), "sparse_rows_grad: an offset is outside inp");
  auto grad = at::empty({offs.numel()}, inp.options());
  rows_grad(inp.data_ptr<float>(), inp.size(1), dy.data_ptr<float>(), dy.size(0), dy.size(1),
            dy.size(2), rowptr.data_ptr<int32_t>(), o, grad.data_ptr<float>());
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
