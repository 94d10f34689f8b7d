// Quantized matrix-vector products for small batches (decoding): int8 activations (blocks of 32, one float scale
// each, as llama.cpp's Q8_0) times 4-bit or 8-bit weights (blocks of 32, a float scale each, and a float minimum for
// 4-bit), with integer dot products: AVX-512 VNNI (vpdpbusd) where the compiler targets it, AVX2 (vpmaddubsw +
// vpmaddwd) otherwise, and a plain C++ loop on anything else. Rows of the weight are split across torch's own
// threads (at::parallel_for), so torch.set_num_threads and its wait policy apply.
//
// Layouts (built once per weight by quant/native.py):
//   q4: packed (N, K/2) uint8, each block of 32 inputs as 16 bytes: byte j = code[j] | code[j + 16] << 4;
//       scales, mins (N, K/32) float32: w = code * scale + min.
//   q8: codes (N, K) int8; scales (N, K/32) float32: w = code * scale.
//   x:  quantize_rows(x (M, K) float32) -> codes (M, K) int8 in [-127, 127], scales (M, K/32), and the float
//       value of each block's code sum times its scale (M, K/32) for the 4-bit minimum term.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <cstdint>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t QK = 32;  // inputs per block

#if defined(__AVX2__)
inline __m256i dot_u8_s8(__m256i u, __m256i s) {  // 32 u8 x 32 s8 -> 8 int32 partial sums
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#else
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline __m256i nibbles(const uint8_t* p) {  // 16 bytes -> 32 codes in input order
  __m128i t = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  __m256i v = _mm256_set_m128i(_mm_srli_epi16(t, 4), t);
  return _mm256_and_si256(v, _mm256_set1_epi8(0x0F));
}
#endif

constexpr int MAX_M = 8;  // rows of x handled together (each weight block is read once for all of them)

void q4_rows(const uint8_t* w, const float* ws, const float* wm, const int8_t* xq, const float* xs,
             const float* xsum, float* y, int64_t M, int64_t N, int64_t K, int64_t n0, int64_t n1) {
  const int64_t nb = K / QK;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* wr = w + n * (K / 2);
    const float* sr = ws + n * nb;
    const float* mr = wm + n * nb;
    for (int64_t m = 0; m < M; ++m) {
      float acc_min = 0.f;
      for (int64_t b = 0; b < nb; ++b) acc_min += mr[b] * xsum[m * nb + b];
      y[m * N + n] = acc_min;
    }
#if defined(__AVX2__)
    __m256 acc[MAX_M];
    for (int64_t m = 0; m < M; ++m) acc[m] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      const __m256i u = nibbles(wr + b * 16);
      for (int64_t m = 0; m < M; ++m) {
        const __m256i s = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + m * K + b * QK));
        const __m256 d = _mm256_set1_ps(sr[b] * xs[m * nb + b]);
        acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_u8_s8(u, s)), d, acc[m]);
      }
    }
    for (int64_t m = 0; m < M; ++m) y[m * N + n] += hsum(acc[m]);
#else
    for (int64_t m = 0; m < M; ++m) {
      float acc = 0.f;
      for (int64_t b = 0; b < nb; ++b) {
        int32_t dot = 0;
        const int8_t* xb = xq + m * K + b * QK;
        for (int64_t j = 0; j < 16; ++j) {
          dot += int32_t(wr[b * 16 + j] & 15) * xb[j] + int32_t(wr[b * 16 + j] >> 4) * xb[j + 16];
        }
        acc += float(dot) * sr[b] * xs[m * nb + b];
      }
      y[m * N + n] += acc;
    }
#endif
  }
}

void q8_rows(const int8_t* w, const float* ws, const int8_t* xq, const float* xs, float* y, int64_t M, int64_t N,
             int64_t K, int64_t n0, int64_t n1) {
  const int64_t nb = K / QK;
  for (int64_t n = n0; n < n1; ++n) {
    const int8_t* wr = w + n * K;
    const float* sr = ws + n * nb;
#if defined(__AVX2__)
    __m256 acc[MAX_M];
    for (int64_t m = 0; m < M; ++m) acc[m] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wr + b * QK));
      const __m256i u = _mm256_sign_epi8(wv, wv);  // |w|, as unsigned bytes
      for (int64_t m = 0; m < M; ++m) {
        const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + m * K + b * QK));
        const __m256i s = _mm256_sign_epi8(xv, wv);  // x with w's sign: |w| * s = w * x
        const __m256 d = _mm256_set1_ps(sr[b] * xs[m * nb + b]);
        acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_u8_s8(u, s)), d, acc[m]);
      }
    }
    for (int64_t m = 0; m < M; ++m) y[m * N + n] = hsum(acc[m]);
#else
    for (int64_t m = 0; m < M; ++m) {
      float acc = 0.f;
      for (int64_t b = 0; b < nb; ++b) {
        int32_t dot = 0;
        for (int64_t j = 0; j < QK; ++j) dot += int32_t(wr[b * QK + j]) * xq[m * K + b * QK + j];
        acc += float(dot) * sr[b] * xs[m * nb + b];
      }
      y[m * N + n] = acc;
    }
#endif
  }
}

void check_x(const torch::Tensor& xq, const torch::Tensor& xs, int64_t K) {
  TORCH_CHECK(xq.dtype() == torch::kInt8 && xq.is_contiguous() && xq.dim() == 2 && xq.size(1) == K, "x codes");
  TORCH_CHECK(xq.size(0) <= MAX_M, "at most ", MAX_M, " rows of x");
  TORCH_CHECK(xs.dtype() == torch::kFloat && xs.is_contiguous() && xs.size(1) == K / QK, "x scales");
}

int64_t grain(int64_t N) { return std::max<int64_t>(16, N / (8 * at::get_num_threads())); }

}  // namespace

std::vector<torch::Tensor> quantize_rows(torch::Tensor x) {
  TORCH_CHECK(x.dtype() == torch::kFloat && x.dim() == 2 && x.size(1) % QK == 0, "x: (M, K) float32, K % 32 == 0");
  x = x.contiguous();
  const int64_t M = x.size(0), K = x.size(1), nb = K / QK;
  auto codes = torch::empty({M, K}, torch::kInt8);
  auto scales = torch::empty({M, nb}, torch::kFloat);
  auto sums = torch::empty({M, nb}, torch::kFloat);
  const float* xp = x.data_ptr<float>();
  int8_t* q = codes.data_ptr<int8_t>();
  float* s = scales.data_ptr<float>();
  float* c = sums.data_ptr<float>();
  for (int64_t i = 0; i < M * nb; ++i) {
    const float* v = xp + i * QK;
    float amax = 0.f;
    for (int64_t j = 0; j < QK; ++j) amax = std::max(amax, std::fabs(v[j]));
    const float d = amax / 127.f, inv = d > 0.f ? 1.f / d : 0.f;
    int32_t total = 0;
    for (int64_t j = 0; j < QK; ++j) {
      const int32_t r = static_cast<int32_t>(std::nearbyint(v[j] * inv));
      q[i * QK + j] = static_cast<int8_t>(r);
      total += r;
    }
    s[i] = d;
    c[i] = d * static_cast<float>(total);
  }
  return {codes, scales, sums};
}

torch::Tensor q4_matmul(torch::Tensor xq, torch::Tensor xs, torch::Tensor xsum, torch::Tensor packed,
                        torch::Tensor scales, torch::Tensor mins) {
  const int64_t N = packed.size(0), K = packed.size(1) * 2, M = xq.size(0);
  check_x(xq, xs, K);
  TORCH_CHECK(packed.dtype() == torch::kUInt8 && packed.is_contiguous(), "q4 codes: (N, K/2) uint8");
  TORCH_CHECK(scales.sizes() == mins.sizes() && scales.size(1) == K / QK, "q4 scales, mins: (N, K/32)");
  auto y = torch::empty({M, N}, torch::kFloat);
  const uint8_t* w = packed.data_ptr<uint8_t>();
  const float *ws = scales.data_ptr<float>(), *wm = mins.data_ptr<float>();
  const int8_t* q = xq.data_ptr<int8_t>();
  const float *s = xs.data_ptr<float>(), *c = xsum.data_ptr<float>();
  float* out = y.data_ptr<float>();
  at::parallel_for(0, N, grain(N), [&](int64_t n0, int64_t n1) { q4_rows(w, ws, wm, q, s, c, out, M, N, K, n0, n1); });
  return y;
}

torch::Tensor q8_matmul(torch::Tensor xq, torch::Tensor xs, torch::Tensor codes, torch::Tensor scales) {
  const int64_t N = codes.size(0), K = codes.size(1), M = xq.size(0);
  check_x(xq, xs, K);
  TORCH_CHECK(codes.dtype() == torch::kInt8 && codes.is_contiguous(), "q8 codes: (N, K) int8");
  TORCH_CHECK(scales.size(0) == N && scales.size(1) == K / QK, "q8 scales: (N, K/32)");
  auto y = torch::empty({M, N}, torch::kFloat);
  const int8_t* w = codes.data_ptr<int8_t>();
  const float* ws = scales.data_ptr<float>();
  const int8_t* q = xq.data_ptr<int8_t>();
  const float* s = xs.data_ptr<float>();
  float* out = y.data_ptr<float>();
  at::parallel_for(0, N, grain(N), [&](int64_t n0, int64_t n1) { q8_rows(w, ws, q, s, out, M, N, K, n0, n1); });
  return y;
}

std::string isa() {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return "avx512-vnni";
#elif defined(__AVX2__)
  return "avx2";
#else
  return "scalar";
#endif
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("quantize_rows", &quantize_rows, "x (M, K) float32 -> int8 codes, block scales, block sums x scale");
  m.def("q4_matmul", &q4_matmul, "4-bit weight x int8 activations -> (M, N) float32");
  m.def("q8_matmul", &q8_matmul, "8-bit weight x int8 activations -> (M, N) float32");
  m.def("isa", &isa, "the instruction set the kernels were compiled for");
}
