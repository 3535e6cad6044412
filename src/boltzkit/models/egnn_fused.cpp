// Fused inference kernel for the edge part of one EGNN layer (boltzkit.models.egnn).
//
// The library-call forward pass writes every [edges, H] activation to memory several times
// (gather, add, bias, SiLU, gate, ...). Here a tile of whole samples goes through the edge MLP,
// attention gate, coordinate MLP and the two aggregations while it stays in cache: the two
// H x H matrix products per edge are library sgemm/dgemm calls on the tile, every other step is
// one loop, and SiLU uses a vectorised exp (AVX2, relative error about 1e-7; std::exp without
// AVX2 and in float64). The function is the same as EquivariantLayer's edge part up to floating-point
// rounding (tests/models/test_egnn_fused.py compares both in float64 and float32).
//
// Per edge e = (i, j) of a sample (edge lists `first`, `second`):
//   z = SiLU(src_i + dst_j + w_r r2),  r2 = |x_i - x_j|^2
//   m = SiLU(W_2 z + b_2),  m <- m sigmoid(w_a . m + b_a)            (if attention)
//   phi = w_x . SiLU(W_3 m + b_3),  phi <- c tanh(phi / c)           (if tanh)
//   xsum_i += (x_i - x_j) phi / (sqrt(r2) + 1),  agg_i += m
// and, when `symmetric` (each listed pair stands for both directions, m_ij = m_ji),
//   xsum_j -= (x_i - x_j) phi / (sqrt(r2) + 1),  agg_j += m.

#include <torch/extension.h>

#include <ATen/Parallel.h>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

namespace {

template <typename T>
inline T silu(T v) {
  return v / (T(1) + std::exp(-v));
}

#if defined(__AVX2__) && defined(__FMA__)
// exp of 8 floats: x = k ln2 + r with |r| <= ln2 / 2 (Cody-Waite split of ln2), exp(r) by its
// degree-7 Taylor polynomial (truncation error r^8 / 8! < 1.3e-8 relative), 2^k written into
// the exponent bits. Arguments are clamped to [-87, 88], where 2^k stays a normal float.
inline __m256 exp8(__m256 x) {
  x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.0f)), _mm256_set1_ps(-87.0f));
  const __m256 k = _mm256_floor_ps(
      _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
  __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fmadd_ps(k, _mm256_set1_ps(2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.0f / 5040.0f);
  for (const float c : {1.0f / 720.0f, 1.0f / 120.0f, 1.0f / 24.0f, 1.0f / 6.0f, 0.5f, 1.0f,
                        1.0f}) {
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
  }
  const __m256i bits = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}
#endif

// out[k] = SiLU(a[k] + b[k] + w[k] s) for k < H (w may be null); out may alias a.
template <typename T>
inline void silu_row(T* out, const T* a, const T* b, const T* w, T s, int64_t H) {
  int64_t k = 0;
#if defined(__AVX2__) && defined(__FMA__)
  if constexpr (std::is_same_v<T, float>) {
    const __m256 one = _mm256_set1_ps(1.0f), sv = _mm256_set1_ps(s);
    const __m256 zero = _mm256_setzero_ps();
    for (; k + 8 <= H; k += 8) {
      __m256 v = _mm256_add_ps(_mm256_loadu_ps(a + k), _mm256_loadu_ps(b + k));
      if (w) v = _mm256_fmadd_ps(_mm256_loadu_ps(w + k), sv, v);
      const __m256 e = exp8(_mm256_sub_ps(zero, v));
      _mm256_storeu_ps(out + k, _mm256_div_ps(v, _mm256_add_ps(one, e)));
    }
  }
#endif
  for (; k < H; ++k) out[k] = silu(a[k] + b[k] + (w ? w[k] * s : T(0)));
}

template <typename T>
struct LayerArgs {
  const T* x;  // [B, n, d]
  const T* src;
  const T* dst;
  int64_t src_sb, src_sn, dst_sb, dst_sn;  // strides of src, dst ([B, n, H], last stride 1)
  const int64_t* first;
  const int64_t* second;
  int64_t n_edges, n, d, hidden;
  bool symmetric, attention, use_tanh;
  const T* w_r;
  const T* b2;
  T b_a;
  const T* b3;
  T coords_range;
  T* xsum;  // [B, n, d]
  T* agg;   // [B, n, H] or nullptr
};

template <typename T>
void run_tile(const LayerArgs<T>& a, int64_t b0, int64_t b1, const at::Tensor& w2t,
              const at::Tensor& w3t, const at::Tensor& w_a, const at::Tensor& w_x,
              at::Tensor& z, at::Tensor& m, at::Tensor& c, at::Tensor& gate,
              std::vector<T>& diff, std::vector<T>& r2) {
  const int64_t E = a.n_edges, H = a.hidden, d = a.d, n = a.n;
  const int64_t rows = (b1 - b0) * E;
  T* zp = z.data_ptr<T>();
  // 1. first edge layer: gather, distance term, SiLU.
  for (int64_t b = b0; b < b1; ++b) {
    const T* xb = a.x + b * n * d;
    for (int64_t e = 0; e < E; ++e) {
      const int64_t row = (b - b0) * E + e, i = a.first[e], j = a.second[e];
      T s = 0;
      for (int64_t k = 0; k < d; ++k) {
        const T v = xb[i * d + k] - xb[j * d + k];
        diff[row * d + k] = v;
        s += v * v;
      }
      r2[row] = s;
      const T* si = a.src + b * a.src_sb + i * a.src_sn;
      const T* dj = a.dst + b * a.dst_sb + j * a.dst_sn;
      T* zr = zp + row * H;
      silu_row(zr, si, dj, a.w_r, s, H);
    }
  }
  // 2. messages: m = SiLU(W_2 z + b_2), gated.
  at::Tensor zt = z.narrow(0, 0, rows), mt = m.narrow(0, 0, rows), ct = c.narrow(0, 0, rows);
  at::mm_out(mt, zt, w2t);
  T* mp = m.data_ptr<T>();
  for (int64_t q = 0; q < rows * H; q += H) silu_row<T>(mp + q, mp + q, a.b2, nullptr, T(0), H);
  if (a.attention) {  // gate g = sigmoid(w_a . m + b_a): one matrix-vector product per tile
    at::Tensor gt = gate.narrow(0, 0, rows);
    at::mv_out(gt, mt, w_a);
    const T* gp = gate.data_ptr<T>();
    for (int64_t row = 0; row < rows; ++row) {
      const T g = T(1) / (T(1) + std::exp(-(gp[row] + a.b_a)));
      T* mr = mp + row * H;
#pragma omp simd
      for (int64_t k = 0; k < H; ++k) mr[k] *= g;
    }
  }
  // 3. coordinate weights phi / (|x_i - x_j| + 1) and the two aggregations.
  at::mm_out(ct, mt, w3t);
  T* cp = c.data_ptr<T>();
  for (int64_t q = 0; q < rows * H; q += H) silu_row<T>(cp + q, cp + q, a.b3, nullptr, T(0), H);
  at::Tensor pt = gate.narrow(0, 0, rows);  // the gate buffer is free again: phi goes there
  at::mv_out(pt, ct, w_x);                   // phi before the tanh bound
  const T* pp = gate.data_ptr<T>();
  for (int64_t b = b0; b < b1; ++b) {
    T* xs = a.xsum + b * n * d;
    T* ag = a.agg ? a.agg + b * n * H : nullptr;
    for (int64_t e = 0; e < E; ++e) {
      const int64_t row = (b - b0) * E + e, i = a.first[e], j = a.second[e];
      T phi = pp[row];
      if (a.use_tanh) phi = a.coords_range * std::tanh(phi / a.coords_range);
      const T w = phi / (std::sqrt(r2[row]) + T(1));
      for (int64_t k = 0; k < d; ++k) {
        xs[i * d + k] += diff[row * d + k] * w;
        if (a.symmetric) xs[j * d + k] -= diff[row * d + k] * w;
      }
      if (ag) {
        const T* mr = mp + row * H;
        T* gi = ag + i * H;
#pragma omp simd
        for (int64_t k = 0; k < H; ++k) gi[k] += mr[k];
        if (a.symmetric) {
          T* gj = ag + j * H;
#pragma omp simd
          for (int64_t k = 0; k < H; ++k) gj[k] += mr[k];
        }
      }
    }
  }
}

template <typename T>
void run_layer(const LayerArgs<T>& a, int64_t batch, int64_t tile_samples, const at::Tensor& w2t,
               const at::Tensor& w3t, const at::Tensor& w_a, const at::Tensor& w_x) {
  const auto opts = w2t.options();
  at::parallel_for(0, batch, tile_samples, [&](int64_t begin, int64_t end) {
    at::NoGradGuard no_grad;  // grad mode is thread-local: worker threads start with it on
    const int64_t tile = std::min(tile_samples, end - begin);
    at::Tensor z = at::empty({tile * a.n_edges, a.hidden}, opts);
    at::Tensor m = at::empty_like(z), c = at::empty_like(z);
    at::Tensor gate = at::empty({tile * a.n_edges}, opts);
    std::vector<T> diff(tile * a.n_edges * a.d), r2(tile * a.n_edges);
    for (int64_t b0 = begin; b0 < end; b0 += tile) {
      run_tile(a, b0, std::min(b0 + tile, end), w2t, w3t, w_a, w_x, z, m, c, gate, diff, r2);
    }
  });
}

void check(bool ok, const char* what) { TORCH_CHECK(ok, "egnn_edges: ", what); }

}  // namespace

// Returns (xsum [B, n, d], agg [B, n, H] or an empty tensor); the caller divides by n - 1.
std::vector<at::Tensor> egnn_edges(at::Tensor x, at::Tensor src, at::Tensor dst, at::Tensor first,
                                   at::Tensor second, bool symmetric, at::Tensor w_r,
                                   at::Tensor w2, at::Tensor b2, at::Tensor w_a, double b_a,
                                   bool attention, at::Tensor w3, at::Tensor b3, at::Tensor w_x,
                                   double coords_range, bool use_tanh, bool need_agg,
                                   int64_t tile_edges) {
  check(x.dim() == 3 && src.dim() == 3 && dst.dim() == 3, "x, src, dst must be [B, n, .]");
  check(!at::GradMode::is_enabled() || !(x.requires_grad() || w2.requires_grad()),
        "inference only (no autograd)");
  x = x.detach().contiguous();
  src = src.detach();
  dst = dst.detach();
  const int64_t batch = x.size(0), n = x.size(1), d = x.size(2), hidden = w2.size(0);
  check(w2.size(1) == hidden && w3.size(0) == hidden && w3.size(1) == hidden &&
            src.size(2) == hidden && dst.size(2) == hidden && w_r.numel() == hidden &&
            w_x.numel() == hidden && (!attention || w_a.numel() == hidden),
        "feature widths differ from W_2's (H x H)");
  src = src.expand({batch, n, hidden});
  dst = dst.expand({batch, n, hidden});
  if (src.stride(2) != 1) src = src.contiguous();
  if (dst.stride(2) != 1) dst = dst.contiguous();
  first = first.to(at::kLong).contiguous();
  second = second.to(at::kLong).contiguous();
  check(first.numel() == second.numel(), "edge lists differ in length");
  check(first.numel() == 0 || (at::min(at::minimum(first, second)).item<int64_t>() >= 0 &&
                               at::max(at::maximum(first, second)).item<int64_t>() < n),
        "edge endpoints must lie in [0, n)");
  auto vec = [&](const at::Tensor& t) { return t.detach().to(x.scalar_type()).contiguous(); };
  w_r = vec(w_r), b2 = vec(b2), w_a = vec(w_a), b3 = vec(b3), w_x = vec(w_x);
  const at::Tensor w2t = w2.detach().to(x.scalar_type()).t();
  const at::Tensor w3t = w3.detach().to(x.scalar_type()).t();
  at::Tensor xsum = at::zeros_like(x);
  at::Tensor agg = need_agg ? at::zeros({batch, n, hidden}, x.options()) : at::Tensor();
  const int64_t n_edges = first.numel();
  const int64_t tile_samples = std::max<int64_t>(1, tile_edges / std::max<int64_t>(1, n_edges));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "egnn_edges", [&] {
    LayerArgs<scalar_t> a{x.data_ptr<scalar_t>(), src.data_ptr<scalar_t>(),
                          dst.data_ptr<scalar_t>(), src.stride(0), src.stride(1),
                          dst.stride(0), dst.stride(1), first.data_ptr<int64_t>(),
                          second.data_ptr<int64_t>(), n_edges, n, d, hidden, symmetric,
                          attention, use_tanh, w_r.data_ptr<scalar_t>(), b2.data_ptr<scalar_t>(),
                          static_cast<scalar_t>(b_a), b3.data_ptr<scalar_t>(),
                          static_cast<scalar_t>(coords_range), xsum.data_ptr<scalar_t>(),
                          need_agg ? agg.data_ptr<scalar_t>() : nullptr};
    run_layer(a, batch, tile_samples, w2t, w3t, w_a, w_x);
  });
  return {xsum, need_agg ? agg : at::empty({0}, x.options())};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("egnn_edges", &egnn_edges, "Fused EGNN edge pass (inference)",
        pybind11::call_guard<pybind11::gil_scoped_release>());
}
