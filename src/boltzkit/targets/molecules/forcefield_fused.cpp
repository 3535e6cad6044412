// Fused CPU energy + gradient of an AMBER-type force field with OBC implicit solvent.
//
// The same function as energy.py (bonds, angles, periodic torsions, Coulomb + Lennard-Jones
// over the live pairs, OBC generalized Born with the ACE surface term) with hand-derived
// gradients, in blocks of L configurations (see `Block`), blocks spread over threads with
// at::parallel_for. Built with -ffast-math so that the lane loops vectorise (libmvec
// log/exp/atan2/tanh): sums are reassociated (rounding at the dtype's epsilon); inf/NaN from
// overlapping atoms still reach E, which the Python side checks. Gradients: bonds and angles
// by the chain rule on r and theta; torsions by Blondel & Karplus, J. Comput. Chem. 17, 1132
// (1996); GB in two passes (Born radii, then dE/dB_i pushed back through dB_i/dI_i onto every
// pair's dh/dr). Compared with the autograd of energy.py to 1e-10 relative in
// tests/targets/test_aldp.py.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
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
  GB gb;
};

// Configurations are processed in blocks of L, laid out [coordinate][lane]: every loop over
// force-field terms has an inner loop over the L lanes with the same atom indices, so loads and
// stores are contiguous, the gradient updates of different lanes never collide, and the lane
// loop vectorises, transcendental functions included (glibc's libmvec, -ffast-math).
constexpr int L = 16;
#define LANES _Pragma("omp simd") for (int l = 0; l < L; ++l)

template <typename T>
struct Block {
  std::vector<T> x, g, e, dx, dy, dz, r, dedr, dh_ij, dh_ji, integral, born, dbdi, dedb;
  Block(int64_t n_atoms, int64_t n_pairs)
      : x(3 * n_atoms * L), g(3 * n_atoms * L), e(L), dx(n_pairs * L), dy(n_pairs * L),
        dz(n_pairs * L), r(n_pairs * L), dedr(n_pairs * L), dh_ij(n_pairs * L),
        dh_ji(n_pairs * L), integral(n_atoms * L), born(n_atoms * L), dbdi(n_atoms * L),
        dedb(n_atoms * L) {}
  T* at(std::vector<T>& v, int64_t row) { return v.data() + row * L; }
};

template <typename T>
void bonds(const Params<T>& p, Block<T>& s) {
  T* e = s.e.data();
  for (int64_t k = 0; k < p.n_bonds; ++k) {
    const int64_t i = p.bonds[2 * k], j = p.bonds[2 * k + 1];
    const T *xi = s.at(s.x, 3 * i), *xj = s.at(s.x, 3 * j);
    T *gi = s.at(s.g, 3 * i), *gj = s.at(s.g, 3 * j);
    const T r0 = p.bond_length[k], kk = p.bond_k[k];
    LANES {
      const T dx = xj[l] - xi[l], dy = xj[L + l] - xi[L + l], dz = xj[2 * L + l] - xi[2 * L + l];
      const T r = std::sqrt(dx * dx + dy * dy + dz * dz), d = r - r0;
      e[l] += T(0.5) * kk * d * d;
      const T c = kk * d / r;
      gj[l] += c * dx; gj[L + l] += c * dy; gj[2 * L + l] += c * dz;
      gi[l] -= c * dx; gi[L + l] -= c * dy; gi[2 * L + l] -= c * dz;
    }
  }
}

// theta = atan2(|u x v|, u . v) at atom j; d theta / du = (uv u / |u|^2 - v) / |u x v|.
template <typename T>
void angles(const Params<T>& p, Block<T>& s) {
  T* e = s.e.data();
  for (int64_t k = 0; k < p.n_angles; ++k) {
    const int64_t* q = p.angles + 3 * k;
    const T *xi = s.at(s.x, 3 * q[0]), *xj = s.at(s.x, 3 * q[1]), *xk = s.at(s.x, 3 * q[2]);
    T *gi = s.at(s.g, 3 * q[0]), *gj = s.at(s.g, 3 * q[1]), *gk = s.at(s.g, 3 * q[2]);
    const T t0 = p.angle_theta[k], kk = p.angle_k[k];
    LANES {
      const T ux = xi[l] - xj[l], uy = xi[L + l] - xj[L + l], uz = xi[2 * L + l] - xj[2 * L + l];
      const T vx = xk[l] - xj[l], vy = xk[L + l] - xj[L + l], vz = xk[2 * L + l] - xj[2 * L + l];
      const T wx = uy * vz - uz * vy, wy = uz * vx - ux * vz, wz = ux * vy - uy * vx;
      const T uu = ux * ux + uy * uy + uz * uz, vv = vx * vx + vy * vy + vz * vz;
      const T uv = ux * vx + uy * vy + uz * vz, cw = std::sqrt(wx * wx + wy * wy + wz * wz);
      const T d = std::atan2(cw, uv) - t0;
      e[l] += T(0.5) * kk * d * d;
      const T c = kk * d / cw, cu = c * uv / uu, cv = c * uv / vv;
      const T gux = cu * ux - c * vx, guy = cu * uy - c * vy, guz = cu * uz - c * vz;
      const T gvx = cv * vx - c * ux, gvy = cv * vy - c * uy, gvz = cv * vz - c * uz;
      gi[l] += gux; gi[L + l] += guy; gi[2 * L + l] += guz;
      gk[l] += gvx; gk[L + l] += gvy; gk[2 * L + l] += gvz;
      gj[l] -= gux + gvx; gj[L + l] -= guy + gvy; gj[2 * L + l] -= guz + gvz;
    }
  }
}

// phi = atan2(|b2| b1 . n, m . n), m = b1 x b2, n = b2 x b3; cos(n phi - phase) without atan2:
// (cos phi, sin phi) from (x, y), then (cos n phi, sin n phi) by n - 1 rotations (OpenMM's
// periodicities are integers). Gradients of Blondel & Karplus: d phi/dx_i = -|b2| m / |m|^2,
// d phi/dx_l = |b2| n / |n|^2, x_j and x_k from f1 = b1.b2/|b2|^2, f3 = b3.b2/|b2|^2.
template <typename T>
void torsions(const Params<T>& p, Block<T>& s) {
  T* e = s.e.data();
  for (int64_t k = 0; k < p.n_torsions; ++k) {
    const int64_t* q = p.torsions + 4 * k;
    const T *x0 = s.at(s.x, 3 * q[0]), *x1 = s.at(s.x, 3 * q[1]), *x2 = s.at(s.x, 3 * q[2]),
            *x3 = s.at(s.x, 3 * q[3]);
    T *g0 = s.at(s.g, 3 * q[0]), *g1 = s.at(s.g, 3 * q[1]), *g2 = s.at(s.g, 3 * q[2]),
      *g3 = s.at(s.g, 3 * q[3]);
    const T nk = p.torsion_n[k], kk = p.torsion_k[k], cp = p.cos_phase[k], sp = p.sin_phase[k];
    const int n_int = static_cast<int>(nk);  // the same for every lane
    LANES {
      const T b1x = x1[l] - x0[l], b1y = x1[L + l] - x0[L + l], b1z = x1[2 * L + l] - x0[2 * L + l];
      const T b2x = x2[l] - x1[l], b2y = x2[L + l] - x1[L + l], b2z = x2[2 * L + l] - x1[2 * L + l];
      const T b3x = x3[l] - x2[l], b3y = x3[L + l] - x2[L + l], b3z = x3[2 * L + l] - x2[2 * L + l];
      const T mx = b1y * b2z - b1z * b2y, my = b1z * b2x - b1x * b2z, mz = b1x * b2y - b1y * b2x;
      const T nx = b2y * b3z - b2z * b3y, ny = b2z * b3x - b2x * b3z, nz = b2x * b3y - b2y * b3x;
      const T mm = mx * mx + my * my + mz * mz, nn = nx * nx + ny * ny + nz * nz;
      const T b2b2 = b2x * b2x + b2y * b2y + b2z * b2z, lb2 = std::sqrt(b2b2);
      const T yy = lb2 * (b1x * nx + b1y * ny + b1z * nz), xx = mx * nx + my * ny + mz * nz;
      const T inv = 1 / std::sqrt(xx * xx + yy * yy), c1 = xx * inv, s1 = yy * inv;
      T cn = n_int > 0 ? c1 : T(1), sn = n_int > 0 ? s1 : T(0);
      for (int m = 2; m <= n_int; ++m) {
        const T c_next = cn * c1 - sn * s1;
        sn = sn * c1 + cn * s1;
        cn = c_next;
      }
      e[l] += kk * (1 + cn * cp + sn * sp);
      const T de = -kk * nk * (sn * cp - cn * sp);
      const T ci = -de * lb2 / mm, cl = de * lb2 / nn;
      const T f1 = (b1x * b2x + b1y * b2y + b1z * b2z) / b2b2;
      const T f3 = (b3x * b2x + b3y * b2y + b3z * b2z) / b2b2;
      const T gix = ci * mx, giy = ci * my, giz = ci * mz;
      const T glx = cl * nx, gly = cl * ny, glz = cl * nz;
      g0[l] += gix; g0[L + l] += giy; g0[2 * L + l] += giz;
      g3[l] += glx; g3[L + l] += gly; g3[2 * L + l] += glz;
      g1[l] += f3 * glx - (1 + f1) * gix;
      g1[L + l] += f3 * gly - (1 + f1) * giy;
      g1[2 * L + l] += f3 * glz - (1 + f1) * giz;
      g2[l] += f1 * gix - (1 + f3) * glx;
      g2[L + l] += f1 * giy - (1 + f3) * gly;
      g2[2 * L + l] += f1 * giz - (1 + f3) * glz;
    }
  }
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
void gb_terms(const Params<T>& p, Block<T>& s);

template <typename T>
void pair_terms(const Params<T>& p, Block<T>& s) {
  T* e = s.e.data();
  for (int64_t k = 0; k < p.n_pairs; ++k) {
    const int64_t i = p.pairs[2 * k], j = p.pairs[2 * k + 1];
    const T *xi = s.at(s.x, 3 * i), *xj = s.at(s.x, 3 * j);
    T *dx = s.at(s.dx, k), *dy = s.at(s.dy, k), *dz = s.at(s.dz, k), *r = s.at(s.r, k),
      *dedr = s.at(s.dedr, k);
    LANES {
      dx[l] = xj[l] - xi[l]; dy[l] = xj[L + l] - xi[L + l]; dz[l] = xj[2 * L + l] - xi[2 * L + l];
      r[l] = std::sqrt(dx[l] * dx[l] + dy[l] * dy[l] + dz[l] * dz[l]);
      dedr[l] = 0;
    }
  }
  for (int64_t m = 0; m < p.n_nb; ++m) {
    const int64_t k = p.nb_pair[m];
    const T *r = s.at(s.r, k);
    T* dedr = s.at(s.dedr, k);
    const T qq = p.nb_qq[m], sigma = p.nb_sigma[m], eps4 = 4 * p.nb_epsilon[m];
    LANES {
      const T ir = 1 / r[l], sr = sigma * ir, s2 = sr * sr, s6 = s2 * s2 * s2;
      const T coul = qq * ir;
      e[l] += coul + eps4 * (s6 * s6 - s6);
      dedr[l] += (-coul + eps4 * (-12 * s6 * s6 + 6 * s6)) * ir;
    }
  }
  if (p.gb.on) gb_terms(p, s);
  for (int64_t k = 0; k < p.n_pairs; ++k) {
    const int64_t i = p.pairs[2 * k], j = p.pairs[2 * k + 1];
    const T *dx = s.at(s.dx, k), *dy = s.at(s.dy, k), *dz = s.at(s.dz, k), *r = s.at(s.r, k),
            *dedr = s.at(s.dedr, k);
    T *gi = s.at(s.g, 3 * i), *gj = s.at(s.g, 3 * j);
    LANES {
      const T c = dedr[l] / r[l];
      gj[l] += c * dx[l]; gj[L + l] += c * dy[l]; gj[2 * L + l] += c * dz[l];
      gi[l] -= c * dx[l]; gi[L + l] -= c * dy[l]; gi[2 * L + l] -= c * dz[l];
    }
  }
}

// OBC GB + ACE: Born radii from the pair integrals, the energy, then dE/dB_i dB_i/dI_i pushed
// onto each pair's dh/dr (both directions) in dedr.
template <typename T>
void gb_terms(const Params<T>& p, Block<T>& s) {
  const GB& gb = p.gb;
  const int64_t n = p.n_atoms;
  T* e = s.e.data();
  std::fill(s.integral.begin(), s.integral.end(), T(0));
  for (int64_t k = 0; k < p.n_pairs; ++k) {
    const int64_t i = p.pairs[2 * k], j = p.pairs[2 * k + 1];
    const T or_i = p.offset_radius[i], or_j = p.offset_radius[j];
    const T sr_i = p.scaled_radius[i], sr_j = p.scaled_radius[j];
    const T* r = s.at(s.r, k);
    T *dh_ij = s.at(s.dh_ij, k), *dh_ji = s.at(s.dh_ji, k);
    T *int_i = s.at(s.integral, i), *int_j = s.at(s.integral, j);
    const bool engulf = gb.engulf;
    LANES {
      T h_ij, h_ji;
      pair_integral(r[l], or_i, sr_j, engulf, h_ij, dh_ij[l]);
      pair_integral(r[l], or_j, sr_i, engulf, h_ji, dh_ji[l]);
      int_i[l] += h_ij;
      int_j[l] += h_ji;
    }
  }
  const T pref = T(gb.prefactor), alpha = T(gb.alpha), beta = T(gb.beta), gamma = T(gb.gamma);
  for (int64_t i = 0; i < n; ++i) {
    const T orad = p.offset_radius[i], rho = orad + T(gb.offset), q = p.charge[i];
    const T sa_r = rho + T(gb.probe), sa0 = T(gb.sa_factor) * sa_r * sa_r;
    const T* integral = s.at(s.integral, i);
    T *born = s.at(s.born, i), *dbdi = s.at(s.dbdi, i), *dedb = s.at(s.dedb, i);
    LANES {
      const T psi = orad * integral[l];
      const T t = std::tanh(psi * (alpha + psi * (-beta + psi * gamma)));
      const T b = 1 / (1 / orad - t / rho);
      born[l] = b;
      const T ratio = rho / b, r2 = ratio * ratio, sa = sa0 * r2 * r2 * r2;
      e[l] += pref * T(0.5) * q * q / b + sa;
      const T dt = (1 - t * t) * (alpha + psi * (-2 * beta + 3 * psi * gamma));
      dbdi[l] = b * b * dt * orad / rho;  // dB/dI
      dedb[l] = -pref * T(0.5) * q * q / (b * b) - 6 * sa / b;
    }
  }
  for (int64_t k = 0; k < p.n_pairs; ++k) {
    const int64_t i = p.pairs[2 * k], j = p.pairs[2 * k + 1];
    const T qq = pref * p.charge[i] * p.charge[j];
    const T *r = s.at(s.r, k), *bi = s.at(s.born, i), *bj = s.at(s.born, j);
    T *dedr = s.at(s.dedr, k), *dedb_i = s.at(s.dedb, i), *dedb_j = s.at(s.dedb, j);
    LANES {
      const T bb = bi[l] * bj[l], rk = r[l], ex = std::exp(-rk * rk / (4 * bb));
      const T f = std::sqrt(rk * rk + bb * ex);
      e[l] += qq / f;
      const T c = -qq / (f * f * f);  // d(qq/f)/df / f
      dedr[l] += c * rk * (1 - T(0.25) * ex);
      const T common = T(0.5) * c * ex * (1 + rk * rk / (4 * bb));  // d(qq/f)/dB_i / B_j
      dedb_i[l] += common * bj[l];
      dedb_j[l] += common * bi[l];
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    T *dbdi = s.at(s.dbdi, i);
    const T* dedb = s.at(s.dedb, i);
    LANES { dbdi[l] *= dedb[l]; }  // now dE/dI_i
  }
  for (int64_t k = 0; k < p.n_pairs; ++k) {
    const int64_t i = p.pairs[2 * k], j = p.pairs[2 * k + 1];
    const T *wi = s.at(s.dbdi, i), *wj = s.at(s.dbdi, j), *dh_ij = s.at(s.dh_ij, k),
            *dh_ji = s.at(s.dh_ji, k);
    T* dedr = s.at(s.dedr, k);
    LANES { dedr[l] += wi[l] * dh_ij[l] + wj[l] * dh_ji[l]; }
  }
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
  p.gb = gb;
  const int64_t batch = x.size(0), width = 3 * p.n_atoms;
  const T* xs = ptr<T>(x);
  T* es = energy.data_ptr<T>();
  T* gs = grad.data_ptr<T>();
  const int64_t n_blocks = (batch + L - 1) / L;
  at::parallel_for(0, n_blocks, 4, [&](int64_t begin, int64_t end) {
    Block<T> s(p.n_atoms, p.n_pairs);
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t b0 = blk * L, lanes = std::min<int64_t>(L, batch - b0);
      for (int l = 0; l < L; ++l) {  // transpose in; idle lanes repeat the first configuration
        const T* xb = xs + (b0 + (l < lanes ? l : 0)) * width;
        for (int64_t c = 0; c < width; ++c) s.x[c * L + l] = xb[c];
      }
      std::fill(s.g.begin(), s.g.end(), T(0));
      std::fill(s.e.begin(), s.e.end(), T(0));
      bonds(p, s);
      angles(p, s);
      torsions(p, s);
      pair_terms(p, s);
      for (int64_t l = 0; l < lanes; ++l) {
        es[b0 + l] = s.e[l];
        if (need_grad) {
          T* gb_out = gs + (b0 + l) * width;
          for (int64_t c = 0; c < width; ++c) gb_out[c] = s.g[c * L + l];
        }
      }
    }
  });
}

}  // namespace

// x [B, n, 3] contiguous float32 or float64; ints: bonds, angles, torsions, pairs, nb_pair
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
