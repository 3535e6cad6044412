// Fused CPU energy + gradient of an AMBER-type force field with OBC implicit solvent.
//
// The same function as energy.py (bonds, angles, periodic torsions, Coulomb + Lennard-Jones
// over the live pairs, OBC generalized Born with the ACE surface term), one configuration at a
// time with hand-derived gradients, configurations spread over threads with at::parallel_for.
// Built with -ffast-math so that the loops over pairs vectorise (libmvec log/exp/atan2): sums
// are reassociated (rounding ~1e-15 relative in float64); inf/NaN still propagate into E,
// which the Python side checks. Gradients: bonds and angles by the chain rule on r and theta; torsions by
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
  const T *cos_phase, *sin_phase;
  int max_periodicity;
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

// Every per-term loop is branch-free over contiguous (structure-of-arrays) scratch, so that the
// compiler vectorises it, transcendental functions included (glibc's libmvec, -ffast-math);
// the scatter of gradients onto atoms follows in a scalar loop (its writes collide).
template <typename T>
struct Scratch {
  std::vector<T> dx, dy, dz, r, dedr, h_ij, h_ji, dh_ij, dh_ji, bi, bj, common, integral, born,
      dbdi, dedb, w, t0, t1, t2, t3, t4, t5, t6, t7;
  Scratch(int64_t n_pairs, int64_t n_atoms, int64_t n_terms)
      : dx(n_pairs), dy(n_pairs), dz(n_pairs), r(n_pairs), dedr(n_pairs), h_ij(n_pairs),
        h_ji(n_pairs), dh_ij(n_pairs), dh_ji(n_pairs), bi(n_pairs), bj(n_pairs),
        common(n_pairs), integral(n_atoms), born(n_atoms), dbdi(n_atoms), dedb(n_atoms),
        w(n_atoms), t0(n_terms), t1(n_terms), t2(n_terms), t3(n_terms), t4(n_terms),
        t5(n_terms), t6(n_terms), t7(n_terms) {}
};

template <typename T>
T bonds(const Params<T>& p, const T* x, T* g) {
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
  return e;
}

template <typename T>
T angles(const Params<T>& p, const T* x, T* g) {
  T e = 0;
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
    for (int a = 0; a < 3; ++a) {
      const T gu = c * (uv * u[a] / uu - v[a]), gv = c * (uv * v[a] / vv - u[a]);
      g[3 * i + a] += gu;
      g[3 * l + a] += gv;
      g[3 * j + a] -= gu + gv;
    }
  }
  return e;
}

// Torsions: phi = atan2(|b2| b1 . n, m . n), m = b1 x b2, n = b2 x b3; gradients of Blondel &
// Karplus: d phi/dx_i = -|b2| m / |m|^2, d phi/dx_l = |b2| n / |n|^2, and x_j, x_k from
// f1 = b1.b2/|b2|^2, f3 = b3.b2/|b2|^2.
template <typename T>
T torsions(const Params<T>& p, const T* x, T* g, Scratch<T>& s) {
  T e = 0;
  const int64_t* q = p.torsions;
  T *gix = s.t0.data(), *giy = s.t1.data(), *giz = s.t2.data(), *glx = s.t3.data(),
    *gly = s.t4.data(), *glz = s.t5.data(), *f1s = s.t6.data(), *f3s = s.t7.data();
#pragma omp simd reduction(+ : e)
  for (int64_t k = 0; k < p.n_torsions; ++k) {
    const T* x0 = x + 3 * q[4 * k];
    const T* x1 = x + 3 * q[4 * k + 1];
    const T* x2 = x + 3 * q[4 * k + 2];
    const T* x3 = x + 3 * q[4 * k + 3];
    const T b1x = x1[0] - x0[0], b1y = x1[1] - x0[1], b1z = x1[2] - x0[2];
    const T b2x = x2[0] - x1[0], b2y = x2[1] - x1[1], b2z = x2[2] - x1[2];
    const T b3x = x3[0] - x2[0], b3y = x3[1] - x2[1], b3z = x3[2] - x2[2];
    const T mx = b1y * b2z - b1z * b2y, my = b1z * b2x - b1x * b2z, mz = b1x * b2y - b1y * b2x;
    const T nx = b2y * b3z - b2z * b3y, ny = b2z * b3x - b2x * b3z, nz = b2x * b3y - b2y * b3x;
    const T mm = mx * mx + my * my + mz * mz, nn = nx * nx + ny * ny + nz * nz;
    const T b2b2 = b2x * b2x + b2y * b2y + b2z * b2z, lb2 = std::sqrt(b2b2);
    // cos(n phi - phase) and its derivative without atan2: cos phi, sin phi from (x, y), then
    // (cos m phi, sin m phi) by rotation up to the largest periodicity (select at m = n).
    const T yy = lb2 * (b1x * nx + b1y * ny + b1z * nz), xx = mx * nx + my * ny + mz * nz;
    const T inv = 1 / std::sqrt(xx * xx + yy * yy), c1 = xx * inv, s1 = yy * inv;
    const T nk = p.torsion_n[k];
    T cm = 1, sm = 0, cn = 1, sn = 0;
    for (int m = 1; m <= p.max_periodicity; ++m) {
      const T c_next = cm * c1 - sm * s1;
      sm = sm * c1 + cm * s1;
      cm = c_next;
      cn = (T(m) == nk) ? cm : cn;
      sn = (T(m) == nk) ? sm : sn;
    }
    const T cp = p.cos_phase[k], sp = p.sin_phase[k];
    e += p.torsion_k[k] * (1 + cn * cp + sn * sp);
    const T de = -p.torsion_k[k] * nk * (sn * cp - cn * sp);
    const T ci = -de * lb2 / mm, cl = de * lb2 / nn;
    gix[k] = ci * mx; giy[k] = ci * my; giz[k] = ci * mz;
    glx[k] = cl * nx; gly[k] = cl * ny; glz[k] = cl * nz;
    f1s[k] = (b1x * b2x + b1y * b2y + b1z * b2z) / b2b2;
    f3s[k] = (b3x * b2x + b3y * b2y + b3z * b2z) / b2b2;
  }
  for (int64_t k = 0; k < p.n_torsions; ++k) {
    const T gi[3] = {gix[k], giy[k], giz[k]}, gl[3] = {glx[k], gly[k], glz[k]};
    const T f1 = f1s[k], f3 = f3s[k];
    for (int a = 0; a < 3; ++a) {
      g[3 * q[4 * k] + a] += gi[a];
      g[3 * q[4 * k + 3] + a] += gl[a];
      g[3 * q[4 * k + 1] + a] += f3 * gl[a] - (1 + f1) * gi[a];
      g[3 * q[4 * k + 2] + a] += f1 * gi[a] - (1 + f3) * gl[a];
    }
  }
  return e;
}

// h(r) = 0.5 (1/L - 1/U + (r - sr^2/r)(1/U^2 - 1/L^2)/4 + log(L/U)/(2r)) [+ 1/or - 1/L], and
// dh/dr; zero where the spheres do not overlap. Branch-free (selects), so that it vectorises.
template <typename T>
inline void pair_integral(T r, T or_i, T sr_j, bool engulf, T& h, T& dh) {
  const T upper = r + sr_j, diff = r - sr_j, ad = std::abs(diff);
  const bool lower_is_or = or_i >= ad;
  const T lower = lower_is_or ? or_i : ad;
  const T dlower = lower_is_or ? T(0) : (diff > 0 ? T(1) : T(-1));
  const T il = 1 / lower, iu = 1 / upper, ir = 1 / r, a = r - sr_j * sr_j * ir;
  const T lg = std::log(lower * iu), q = iu * iu - il * il;
  const T t = il - iu + T(0.25) * a * q + T(0.5) * lg * ir;
  const T dt = -dlower * il * il + iu * iu + T(0.25) * (1 + sr_j * sr_j * ir * ir) * q +
               T(0.25) * a * (-2 * iu * iu * iu + 2 * dlower * il * il * il) +
               T(0.5) * ((dlower * il - iu) * ir - lg * ir * ir);
  const bool inside = engulf && or_i < sr_j - r, overlap = or_i < upper;
  const T hh = T(0.5) * t + (inside ? 1 / or_i - il : T(0));
  const T dd = T(0.5) * dt + (inside ? dlower * il * il : T(0));
  h = overlap ? hh : T(0);
  dh = overlap ? dd : T(0);
}

template <typename T>
T gb_terms(const Params<T>& p, Scratch<T>& s);

template <typename T>
T pair_terms(const Params<T>& p, const T* x, T* g, Scratch<T>& s) {
  const int64_t P = p.n_pairs;
  const int64_t* pi = p.pairs;
  T *dx = s.dx.data(), *dy = s.dy.data(), *dz = s.dz.data(), *r = s.r.data(),
    *dedr = s.dedr.data();
#pragma omp simd
  for (int64_t k = 0; k < P; ++k) {
    const T* xi = x + 3 * pi[2 * k];
    const T* xj = x + 3 * pi[2 * k + 1];
    dx[k] = xj[0] - xi[0]; dy[k] = xj[1] - xi[1]; dz[k] = xj[2] - xi[2];
    r[k] = std::sqrt(dx[k] * dx[k] + dy[k] * dy[k] + dz[k] * dz[k]);
    dedr[k] = 0;
  }
  T e = 0;
#pragma omp simd reduction(+ : e)
  for (int64_t m = 0; m < p.n_nb; ++m) {  // nb_pair holds distinct pairs: no write conflicts
    const int64_t k = p.nb_pair[m];
    const T ir = 1 / r[k], sr = p.nb_sigma[m] * ir, s2 = sr * sr, s6 = s2 * s2 * s2;
    const T coul = p.nb_qq[m] * ir, lj = 4 * p.nb_epsilon[m] * (s6 * s6 - s6);
    e += coul + lj;
    dedr[k] += (-coul + 4 * p.nb_epsilon[m] * (-12 * s6 * s6 + 6 * s6)) * ir;
  }
  if (p.gb.on) e += gb_terms(p, s);
  for (int64_t k = 0; k < P; ++k) {
    const int64_t i = pi[2 * k], j = pi[2 * k + 1];
    const T c = dedr[k] / r[k];
    g[3 * j] += c * dx[k]; g[3 * j + 1] += c * dy[k]; g[3 * j + 2] += c * dz[k];
    g[3 * i] -= c * dx[k]; g[3 * i + 1] -= c * dy[k]; g[3 * i + 2] -= c * dz[k];
  }
  return e;
}

// OBC GB + ACE: Born radii from the pair integrals, the energy, then dE/dB_i dB_i/dI_i pushed
// onto each pair's dh/dr (both directions) in dedr.
template <typename T>
T gb_terms(const Params<T>& p, Scratch<T>& s) {
  const GB& gb = p.gb;
  const int64_t n = p.n_atoms, P = p.n_pairs;
  const int64_t* pi = p.pairs;
  const T *r = s.r.data(), *orad = p.offset_radius, *srad = p.scaled_radius, *q = p.charge;
  T *h_ij = s.h_ij.data(), *h_ji = s.h_ji.data(), *dh_ij = s.dh_ij.data(),
    *dh_ji = s.dh_ji.data(), *dedr = s.dedr.data();
  const bool engulf = gb.engulf;
#pragma omp simd
  for (int64_t k = 0; k < P; ++k) {
    const int64_t i = pi[2 * k], j = pi[2 * k + 1];
    pair_integral(r[k], orad[i], srad[j], engulf, h_ij[k], dh_ij[k]);
    pair_integral(r[k], orad[j], srad[i], engulf, h_ji[k], dh_ji[k]);
  }
  T* integral = s.integral.data();
  std::fill(integral, integral + n, T(0));
  for (int64_t k = 0; k < P; ++k) {
    integral[pi[2 * k]] += h_ij[k];
    integral[pi[2 * k + 1]] += h_ji[k];
  }
  const T pref = T(gb.prefactor), alpha = T(gb.alpha), beta = T(gb.beta), gamma = T(gb.gamma);
  T e = 0;
  T *born = s.born.data(), *dbdi = s.dbdi.data(), *dedb = s.dedb.data();
#pragma omp simd reduction(+ : e)
  for (int64_t i = 0; i < n; ++i) {
    const T rho = orad[i] + T(gb.offset), psi = orad[i] * integral[i];
    const T t = std::tanh(psi * (alpha + psi * (-beta + psi * gamma)));
    const T b = 1 / (1 / orad[i] - t / rho);
    born[i] = b;
    const T ratio = rho / b, r2 = ratio * ratio, sa_r = rho + T(gb.probe);
    const T sa = T(gb.sa_factor) * sa_r * sa_r * r2 * r2 * r2;
    e += pref * T(0.5) * q[i] * q[i] / b + sa;
    const T dt = (1 - t * t) * (alpha + psi * (-2 * beta + 3 * psi * gamma));
    dbdi[i] = b * b * dt * orad[i] / rho;  // dB/dI
    dedb[i] = -pref * T(0.5) * q[i] * q[i] / (b * b) - 6 * sa / b;
  }
  T *common = s.common.data();
#pragma omp simd reduction(+ : e)
  for (int64_t k = 0; k < P; ++k) {
    const int64_t i = pi[2 * k], j = pi[2 * k + 1];
    const T bb = born[i] * born[j], rk = r[k], ex = std::exp(-rk * rk / (4 * bb));
    const T f = std::sqrt(rk * rk + bb * ex), qq = pref * q[i] * q[j];
    e += qq / f;
    const T c = -qq / (f * f * f);  // d(qq/f)/df / f
    dedr[k] += c * rk * (1 - T(0.25) * ex);
    common[k] = T(0.5) * c * ex * (1 + rk * rk / (4 * bb));  // d(qq/f)/dB_i = common B_j
  }
  for (int64_t k = 0; k < P; ++k) {
    const int64_t i = pi[2 * k], j = pi[2 * k + 1];
    dedb[i] += common[k] * born[j];
    dedb[j] += common[k] * born[i];
  }
  T* w = s.w.data();
  for (int64_t i = 0; i < n; ++i) w[i] = dedb[i] * dbdi[i];
#pragma omp simd
  for (int64_t k = 0; k < P; ++k) {
    dedr[k] += w[pi[2 * k]] * dh_ij[k] + w[pi[2 * k + 1]] * dh_ji[k];
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
  const auto cos_phase = reals[5].cos(), sin_phase = reals[5].sin();
  p.cos_phase = ptr<T>(cos_phase);
  p.sin_phase = ptr<T>(sin_phase);
  p.max_periodicity = p.n_torsions ? static_cast<int>(reals[4].max().item<double>()) : 0;
  p.gb = gb;
  const int64_t batch = x.size(0), width = 3 * p.n_atoms;
  const T* xs = ptr<T>(x);
  T* es = energy.data_ptr<T>();
  T* gs = grad.data_ptr<T>();
  at::parallel_for(0, batch, 64, [&](int64_t begin, int64_t end) {
    Scratch<T> s(p.n_pairs, p.n_atoms, p.n_torsions);
    std::vector<T> dummy(need_grad ? 0 : width);
    for (int64_t b = begin; b < end; ++b) {
      T* g = need_grad ? gs + b * width : dummy.data();
      std::fill(g, g + width, T(0));
      const T* xb = xs + b * width;
      es[b] = bonds(p, xb, g) + angles(p, xb, g) + torsions(p, xb, g, s) +
              pair_terms(p, xb, g, s);
    }
  });
}

}  // namespace

// x [B, n, 3] contiguous float64; ints: bonds, angles, torsions, pairs, nb_pair
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
  // float64 only: float32 callers convert (the float loops vectorise worse, and the cast is
  // cheap next to the energy)
  TORCH_CHECK(x.scalar_type() == torch::kFloat64, "x must be float64");
  run<double>(x, ints, reals, gb, need_grad, energy, grad);
  return {energy, grad};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("energy_and_grad", &energy_and_grad, "force-field energy and gradient (CPU)");
}
