// Fused CPU energy + gradient of an AMBER-type force field with OBC implicit solvent.
//
// The same function as energy.py (bonds, angles, periodic torsions, Coulomb + Lennard-Jones
// over the live pairs, OBC generalized Born with the ACE surface term), one configuration per
// loop iteration with hand-derived gradients, configurations spread over threads with
// at::parallel_for. Gradients: bonds and angles by the chain rule on r and theta; torsions by
// Blondel & Karplus, J. Comput. Chem. 17, 1132 (1996); GB in two passes (Born radii, then
// dE/dB_i pushed back through dB_i/dI_i onto every pair's dh/dr). Compared with the autograd
// of energy.py to 1e-10 relative in tests/targets/test_aldp.py.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <vector>

namespace {

struct GB {
  bool on, engulf;
  double prefactor, alpha, beta, gamma, offset, sa_factor, probe;
};

template <typename T>
struct Params {
  int64_t n_atoms, n_bonds, n_angles, n_torsions, n_pairs, n_nb;
  const int64_t *bonds, *angles, *torsions, *pairs, *nb_pair;
  const T *bond_length, *bond_k, *angle_theta, *angle_k, *torsion_n, *torsion_phase,
      *torsion_k, *nb_qq, *nb_sigma, *nb_epsilon, *charge, *offset_radius, *scaled_radius;
  GB gb;
};

template <typename T>
inline void sub3(const T* a, const T* b, T* out) {
  out[0] = a[0] - b[0]; out[1] = a[1] - b[1]; out[2] = a[2] - b[2];
}
template <typename T>
inline T dot3(const T* a, const T* b) { return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]; }
template <typename T>
inline void cross3(const T* a, const T* b, T* out) {
  out[0] = a[1] * b[2] - a[2] * b[1];
  out[1] = a[2] * b[0] - a[0] * b[2];
  out[2] = a[0] * b[1] - a[1] * b[0];
}
template <typename T>
inline void axpy3(T a, const T* v, T* out) { out[0] += a * v[0]; out[1] += a * v[1]; out[2] += a * v[2]; }

template <typename T>
T bonded(const Params<T>& p, const T* x, T* g) {
  T e = 0;
  for (int64_t k = 0; k < p.n_bonds; ++k) {
    const int64_t i = p.bonds[2 * k], j = p.bonds[2 * k + 1];
    T d[3];
    sub3(x + 3 * j, x + 3 * i, d);
    const T r = std::sqrt(dot3(d, d)), s = r - p.bond_length[k];
    e += T(0.5) * p.bond_k[k] * s * s;
    const T c = p.bond_k[k] * s / r;
    axpy3(c, d, g + 3 * j);
    axpy3(-c, d, g + 3 * i);
  }
  for (int64_t k = 0; k < p.n_angles; ++k) {
    const int64_t i = p.angles[3 * k], j = p.angles[3 * k + 1], l = p.angles[3 * k + 2];
    T u[3], v[3], w[3];
    sub3(x + 3 * i, x + 3 * j, u);
    sub3(x + 3 * l, x + 3 * j, v);
    cross3(u, v, w);
    const T uu = dot3(u, u), vv = dot3(v, v), uv = dot3(u, v), cw = std::sqrt(dot3(w, w));
    const T theta = std::atan2(cw, uv), s = theta - p.angle_theta[k];
    e += T(0.5) * p.angle_k[k] * s * s;
    // d theta / du = (uv u / |u|^2 - v) / |u x v|, and symmetrically for v.
    const T c = p.angle_k[k] * s / cw;
    T gu[3], gv[3];
    for (int a = 0; a < 3; ++a) {
      gu[a] = c * (uv * u[a] / uu - v[a]);
      gv[a] = c * (uv * v[a] / vv - u[a]);
      g[3 * i + a] += gu[a];
      g[3 * l + a] += gv[a];
      g[3 * j + a] -= gu[a] + gv[a];
    }
  }
  for (int64_t k = 0; k < p.n_torsions; ++k) {
    const int64_t* q = p.torsions + 4 * k;
    T b1[3], b2[3], b3[3], m[3], n[3];
    sub3(x + 3 * q[1], x + 3 * q[0], b1);
    sub3(x + 3 * q[2], x + 3 * q[1], b2);
    sub3(x + 3 * q[3], x + 3 * q[2], b3);
    cross3(b1, b2, m);
    cross3(b2, b3, n);
    const T mm = dot3(m, m), nn = dot3(n, n), b2b2 = dot3(b2, b2), lb2 = std::sqrt(b2b2);
    const T phi = std::atan2(lb2 * dot3(b1, n), dot3(m, n));
    const T arg = p.torsion_n[k] * phi - p.torsion_phase[k];
    e += p.torsion_k[k] * (1 + std::cos(arg));
    const T de = -p.torsion_k[k] * p.torsion_n[k] * std::sin(arg);
    const T f1 = dot3(b1, b2) / b2b2, f3 = dot3(b3, b2) / b2b2;
    for (int a = 0; a < 3; ++a) {
      const T gi = -de * lb2 / mm * m[a], gl = de * lb2 / nn * n[a];
      g[3 * q[0] + a] += gi;
      g[3 * q[3] + a] += gl;
      g[3 * q[1] + a] += f3 * gl - (1 + f1) * gi;
      g[3 * q[2] + a] += f1 * gi - (1 + f3) * gl;
    }
  }
  return e;
}

// h(r) = 0.5 (1/L - 1/U + (r - sr^2/r)(1/U^2 - 1/L^2)/4 + log(L/U)/(2r)) [+ 1/or - 1/L], and dh/dr.
template <typename T>
inline void pair_integral(T r, T or_i, T sr_j, bool engulf, T* h, T* dh) {
  const T upper = r + sr_j;
  if (!(or_i < upper)) { *h = 0; *dh = 0; return; }
  const T diff = r - sr_j;
  const bool lower_is_or = or_i >= std::abs(diff);
  const T lower = lower_is_or ? or_i : std::abs(diff);
  const T dlower = lower_is_or ? T(0) : (diff > 0 ? T(1) : T(-1));
  const T il = 1 / lower, iu = 1 / upper, ir = 1 / r, a = r - sr_j * sr_j * ir;
  const T lg = std::log(lower * iu), q = iu * iu - il * il;
  const T t = il - iu + T(0.25) * a * q + T(0.5) * lg * ir;
  const T dt = -dlower * il * il + iu * iu + T(0.25) * (1 + sr_j * sr_j * ir * ir) * q +
               T(0.25) * a * (-2 * iu * iu * iu + 2 * dlower * il * il * il) +
               T(0.5) * ((dlower * il - iu) * ir - lg * ir * ir);
  *h = T(0.5) * t;
  *dh = T(0.5) * dt;
  if (engulf && or_i < sr_j - r) {
    *h += 1 / or_i - il;
    *dh += dlower * il * il;
  }
}

template <typename T>
struct Scratch {
  std::vector<T> r, d, dedr, dh_ij, dh_ji, integral, born, dedb;
  explicit Scratch(int64_t n_pairs, int64_t n_atoms)
      : r(n_pairs), d(3 * n_pairs), dedr(n_pairs), dh_ij(n_pairs), dh_ji(n_pairs),
        integral(n_atoms), born(n_atoms), dedb(n_atoms) {}
};

template <typename T>
T nonbonded_and_gb(const Params<T>& p, const T* x, T* g, Scratch<T>& s) {
  const int64_t n = p.n_atoms, P = p.n_pairs;
  for (int64_t k = 0; k < P; ++k) {
    const int64_t i = p.pairs[2 * k], j = p.pairs[2 * k + 1];
    sub3(x + 3 * j, x + 3 * i, &s.d[3 * k]);
    s.r[k] = std::sqrt(dot3(&s.d[3 * k], &s.d[3 * k]));
    s.dedr[k] = 0;
  }
  T e = 0;
  for (int64_t m = 0; m < p.n_nb; ++m) {
    const int64_t k = p.nb_pair[m];
    const T ir = 1 / s.r[k], sr = p.nb_sigma[m] * ir, s2 = sr * sr, s6 = s2 * s2 * s2;
    const T coul = p.nb_qq[m] * ir, lj = 4 * p.nb_epsilon[m] * (s6 * s6 - s6);
    e += coul + lj;
    s.dedr[k] += (-coul + 4 * p.nb_epsilon[m] * (-12 * s6 * s6 + 6 * s6)) * ir;
  }
  if (p.gb.on) {
    const GB& gb = p.gb;
    std::fill(s.integral.begin(), s.integral.end(), T(0));
    for (int64_t k = 0; k < P; ++k) {
      const int64_t i = p.pairs[2 * k], j = p.pairs[2 * k + 1];
      T h;
      pair_integral(s.r[k], p.offset_radius[i], p.scaled_radius[j], gb.engulf, &h, &s.dh_ij[k]);
      s.integral[i] += h;
      pair_integral(s.r[k], p.offset_radius[j], p.scaled_radius[i], gb.engulf, &h, &s.dh_ji[k]);
      s.integral[j] += h;
    }
    const T pref = T(gb.prefactor);
    for (int64_t i = 0; i < n; ++i) {
      const T orad = p.offset_radius[i], rho = orad + T(gb.offset), psi = orad * s.integral[i];
      const T t = std::tanh(psi * (T(gb.alpha) + psi * (-T(gb.beta) + psi * T(gb.gamma))));
      const T b = 1 / (1 / orad - t / rho);
      s.born[i] = b;
      const T q = p.charge[i], ratio = rho / b, r2 = ratio * ratio, sa_r = rho + T(gb.probe);
      const T sa = T(gb.sa_factor) * sa_r * sa_r * r2 * r2 * r2;
      e += pref * T(0.5) * q * q / b + sa;
      // dB/dI = B^2 (dt/dpsi) or / rho, kept in dedb until dE/dB is complete
      const T dt = (1 - t * t) * (T(gb.alpha) + psi * (-2 * T(gb.beta) + 3 * psi * T(gb.gamma)));
      s.integral[i] = b * b * dt * orad / rho;
      s.dedb[i] = -pref * T(0.5) * q * q / (b * b) - 6 * sa / b;
    }
    for (int64_t k = 0; k < P; ++k) {
      const int64_t i = p.pairs[2 * k], j = p.pairs[2 * k + 1];
      const T r = s.r[k], bb = s.born[i] * s.born[j], ex = std::exp(-r * r / (4 * bb));
      const T f = std::sqrt(r * r + bb * ex), qq = pref * p.charge[i] * p.charge[j];
      e += qq / f;
      const T c = -qq / (f * f * f);  // d(qq/f)/df / f
      s.dedr[k] += c * r * (1 - T(0.25) * ex);
      const T common = T(0.5) * c * ex * (1 + r * r / (4 * bb));
      s.dedb[i] += common * s.born[j];
      s.dedb[j] += common * s.born[i];
    }
    for (int64_t k = 0; k < P; ++k) {
      const int64_t i = p.pairs[2 * k], j = p.pairs[2 * k + 1];
      s.dedr[k] += s.dedb[i] * s.integral[i] * s.dh_ij[k] + s.dedb[j] * s.integral[j] * s.dh_ji[k];
    }
  }
  for (int64_t k = 0; k < P; ++k) {
    const int64_t i = p.pairs[2 * k], j = p.pairs[2 * k + 1];
    const T c = s.dedr[k] / s.r[k];
    axpy3(c, &s.d[3 * k], g + 3 * j);
    axpy3(-c, &s.d[3 * k], g + 3 * i);
  }
  return e;
}

template <typename T>
const T* ptr(const torch::Tensor& t) { return t.data_ptr<T>(); }

template <typename T>
void run(const torch::Tensor& x, const std::vector<torch::Tensor>& ints,
         const std::vector<torch::Tensor>& reals, const GB& gb, bool need_grad,
         torch::Tensor& energy, torch::Tensor& grad) {
  Params<T> p;
  p.n_atoms = x.size(1);
  p.bonds = ints[0].data_ptr<int64_t>(); p.n_bonds = ints[0].size(0);
  p.angles = ints[1].data_ptr<int64_t>(); p.n_angles = ints[1].size(0);
  p.torsions = ints[2].data_ptr<int64_t>(); p.n_torsions = ints[2].size(0);
  p.pairs = ints[3].data_ptr<int64_t>(); p.n_pairs = ints[3].size(0);
  p.nb_pair = ints[4].data_ptr<int64_t>(); p.n_nb = ints[4].size(0);
  const T** fields[] = {&p.bond_length, &p.bond_k, &p.angle_theta, &p.angle_k, &p.torsion_n,
                        &p.torsion_phase, &p.torsion_k, &p.nb_qq, &p.nb_sigma, &p.nb_epsilon,
                        &p.charge, &p.offset_radius, &p.scaled_radius};
  for (size_t f = 0; f < reals.size(); ++f) *fields[f] = ptr<T>(reals[f]);
  p.gb = gb;
  const int64_t batch = x.size(0), width = 3 * p.n_atoms;
  const T* xs = ptr<T>(x);
  T* es = energy.data_ptr<T>();
  T* gs = grad.data_ptr<T>();
  at::parallel_for(0, batch, 64, [&](int64_t begin, int64_t end) {
    Scratch<T> s(p.n_pairs, p.n_atoms);
    std::vector<T> dummy(need_grad ? 0 : width);
    for (int64_t b = begin; b < end; ++b) {
      T* g = need_grad ? gs + b * width : dummy.data();
      std::fill(g, g + width, T(0));
      es[b] = bonded(p, xs + b * width, g) + nonbonded_and_gb(p, xs + b * width, g, s);
    }
  });
}

}  // namespace

// x [B, n, 3] contiguous (float32 or float64); ints: bonds, angles, torsions, pairs, nb_pair
// (int64); reals (x's dtype): bond_length, bond_k, angle_theta, angle_k, torsion_n,
// torsion_phase, torsion_k, nb_qq, nb_sigma, nb_epsilon, charge, offset_radius, scaled_radius;
// gb_scalars: on, engulf, prefactor, alpha, beta, gamma, offset, sa_factor, probe.
std::vector<torch::Tensor> energy_and_grad(torch::Tensor x, std::vector<torch::Tensor> ints,
                                           std::vector<torch::Tensor> reals,
                                           std::vector<double> gb_scalars, bool need_grad) {
  TORCH_CHECK(x.dim() == 3 && x.size(2) == 3 && x.is_contiguous() && x.device().is_cpu(),
              "x must be a contiguous CPU tensor [B, n_atoms, 3]");
  TORCH_CHECK(ints.size() == 5 && reals.size() == 13 && gb_scalars.size() == 9, "bad arguments");
  GB gb{gb_scalars[0] != 0, gb_scalars[1] != 0, gb_scalars[2], gb_scalars[3], gb_scalars[4],
        gb_scalars[5], gb_scalars[6], gb_scalars[7], gb_scalars[8]};
  auto energy = torch::empty({x.size(0)}, x.options());
  auto grad = need_grad ? torch::empty_like(x) : torch::empty({0}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "energy_and_grad", [&] {
    run<scalar_t>(x, ints, reals, gb, need_grad, energy, grad);
  });
  return {energy, grad};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("energy_and_grad", &energy_and_grad, "force-field energy and gradient (CPU)");
}
