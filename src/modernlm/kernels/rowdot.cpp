// y (B, N) = x (B, K) @ W (N, K)^T for small B: one pass over the weights, each row held in registers while it is
// multiplied by every input row. Weights float32 or bfloat16; activations and output float32. Written with GCC/Clang
// vector extensions so the compiler emits the widest SIMD the machine has (-march=native); rows split over threads.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

typedef float v16 __attribute__((vector_size(64)));
typedef uint32_t u32x16 __attribute__((vector_size(64)));
typedef uint16_t u16x16 __attribute__((vector_size(32)));

static inline v16 load16(const float* p) { v16 v; std::memcpy(&v, p, 64); return v; }
static inline v16 load16(const at::BFloat16* p) {  // bfloat16 is the top half of a float32
  u16x16 h; std::memcpy(&h, p, 32);
  u32x16 u = __builtin_convertvector(h, u32x16) << 16;
  v16 f; std::memcpy(&f, &u, 64); return f;
}
static inline float scalar(float w) { return w; }
static inline float scalar(at::BFloat16 w) { return static_cast<float>(w); }

template <int B, typename W>
static void rows(const W* w, const float* x, float* y, int64_t K, int64_t N, int64_t n0, int64_t n1) {
  const int64_t K16 = K & ~int64_t(15);
  for (int64_t n = n0; n < n1; ++n) {
    const W* wr = w + n * K;
    v16 acc[B];
    for (int b = 0; b < B; ++b) acc[b] = v16{};
    for (int64_t k = 0; k < K16; k += 16) {
      const v16 wv = load16(wr + k);
      for (int b = 0; b < B; ++b) acc[b] += wv * load16(x + b * K + k);
    }
    for (int b = 0; b < B; ++b) {
      float s = 0.f;
      for (int i = 0; i < 16; ++i) s += acc[b][i];
      for (int64_t k = K16; k < K; ++k) s += scalar(wr[k]) * x[b * K + k];
      y[b * N + n] = s;
    }
  }
}

template <typename W>
static void all_rows(int64_t B, const W* w, const float* x, float* y, int64_t K, int64_t N, int64_t n0, int64_t n1) {
  for (int64_t b0 = 0; b0 < B; b0 += 8) {  // at most 8 input rows share one pass over the weights
    const float* xb = x + b0 * K;
    float* yb = y + b0 * N;
    switch (std::min<int64_t>(8, B - b0)) {
      case 1: rows<1>(w, xb, yb, K, N, n0, n1); break;
      case 2: rows<2>(w, xb, yb, K, N, n0, n1); break;
      case 3: rows<3>(w, xb, yb, K, N, n0, n1); break;
      case 4: rows<4>(w, xb, yb, K, N, n0, n1); break;
      case 5: rows<5>(w, xb, yb, K, N, n0, n1); break;
      case 6: rows<6>(w, xb, yb, K, N, n0, n1); break;
      case 7: rows<7>(w, xb, yb, K, N, n0, n1); break;
      default: rows<8>(w, xb, yb, K, N, n0, n1); break;
    }
  }
}

// x float32 or bfloat16 (B, K); the result has x's dtype. Inputs are widened to float32 once, sums stay float32.
torch::Tensor rowdot(torch::Tensor x, torch::Tensor w) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1), "rowdot: x (B, K) and w (N, K) expected");
  TORCH_CHECK(x.is_contiguous() && w.is_contiguous(), "rowdot: contiguous x and w expected");
  const int64_t B = x.size(0), K = x.size(1), N = w.size(0);
  const torch::Tensor x32 = x.scalar_type() == at::kFloat ? x : x.to(at::kFloat);
  torch::Tensor y32 = torch::empty({B, N}, x32.options());
  const float* xp = x32.data_ptr<float>();
  float* yp = y32.data_ptr<float>();
  at::parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) {
    if (w.scalar_type() == at::kBFloat16) all_rows(B, w.data_ptr<at::BFloat16>(), xp, yp, K, N, n0, n1);
    else all_rows(B, w.data_ptr<float>(), xp, yp, K, N, n0, n1);
  });
  return x.scalar_type() == at::kFloat ? y32 : y32.to(x.scalar_type());
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("rowdot", &rowdot, "y = x @ w.T for a few rows of x"); }
