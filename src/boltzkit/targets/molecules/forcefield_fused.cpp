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
//
// Where the time goes (BENCHMARKS.md, "Alanine dipeptide energy throughput"): the GB term, about
// two thirds of it (two Hawkins-Cramer-Truhlar integrals with a log per pair, then an exp and
// a 1/sqrt per pair), then any lane loop the compiler fails to vectorise (the torsions were
// scalar until their inner loop got a compile-time bound), then divisions and square roots
// (the slowest vector instructions, several cycles each in float64). Hence: no lane loop
// holds a loop with a run-time trip count (except the fallback for periodicities above 6),
// reciprocals are shared (one division serves several 1/x, see `pair_pass`), the Born radii
// are kept as 1/B (no division in the pair terms), and torsions on the same four atoms are
// one Fourier series evaluated by a Chebyshev recurrence from (cos phi, sin phi).
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <vector>

namespace {

struct GB {
  bool on, engulf;
  double prefactor, alpha, beta, gamma, offset, sa_factor, probe;
};

// The force field as fused.py passes it (pointers into tensors of x's dtype; int64 indices).
template <typename T>
struct Raw {
  int64_t n_atoms, n_bonds, n_angles, n_torsions, n_pairs, n_nb;
  const int64_t *bonds, *angles, *torsions, *pairs, *nb_pair;
  const T *bond_length, *bond_k, *angle_theta, *angle_k, *torsion_n, *torsion_phase,
      *torsion_k, *nb_qq, *nb_sigma, *nb_epsilon, *charge, *offset_radius, *scaled_radius;
  GB gb;
};

// Dihedrals [begin, end) whose largest periodicity is n_max (one unrolled loop for all).
struct TorsionRun {
  int n_max;
  int64_t begin, end;
};

// The force field rearranged for the lane loops, built once per call (microseconds).
// Torsions: sum_t k_t (1 + cos(n_t phi - phase_t)) over the terms t of one dihedral equals
// constant + sum_n (A_n cos n phi + B_n sin n phi), A_n = sum k cos phase, B_n = sum k sin phase:
// the geometry and the force distribution are done once per dihedral, not once per term.
// Nonbonded: (qq, sigma, 4 eps) for every pair, zero where a pair carries no energy, so that
// the pair loop needs no second index list (the 0 contributions are exact zeros).
template <typename T>
struct Model {
  Raw<T> raw;
  std::vector<int64_t> dihedral;  // 4 atoms per dihedral
  std::vector<T> fourier;         // (A_n, B_n), n = 1..n_max of its run, per dihedral
  std::vector<int64_t> fourier_at;
  std::vector<TorsionRun> runs;
  T torsion_constant = 0;
  std::vector<T> qq, sigma, eps4;  // per pair
  std::vector<T> inv_offset_radius, inv_rho, sa0, self_pref;  // GB, per atom
};

using Series = std::map<int, std::pair<double, double>>;  // n -> (A_n, B_n)

template <typename T>
void group_torsions(Model<T>& m) {
  const Raw<T>& p = m.raw;
  std::map<std::vector<int64_t>, Series> series;
  double constant = 0;
  for (int64_t t = 0; t < p.n_torsions; ++t) {
    const double n = p.torsion_n[t], k = p.torsion_k[t], phase = p.torsion_phase[t];
    TORCH_CHECK(n >= 0 && n == std::floor(n), "torsion periodicities must be integers >= 0");
    constant += k;
    Series& coef = series[std::vector<int64_t>(p.torsions + 4 * t, p.torsions + 4 * t + 4)];
    if (n == 0) {
      constant += k * std::cos(phase);  // k (1 + cos(-phase)): no phi dependence
    } else {
      coef[static_cast<int>(n)].first += k * std::cos(phase);
      coef[static_cast<int>(n)].second += k * std::sin(phase);
    }
  }
  m.torsion_constant = T(constant);
  std::map<int, std::vector<std::pair<std::vector<int64_t>, Series>>> by_n_max;
  for (const auto& [atoms, coef] : series)
    if (!coef.empty()) by_n_max[coef.rbegin()->first].push_back({atoms, coef});
  for (const auto& [n_max, members] : by_n_max) {
    m.runs.push_back({n_max, static_cast<int64_t>(m.fourier_at.size()), 0});
    for (const auto& [atoms, coef] : members) {
      m.dihedral.insert(m.dihedral.end(), atoms.begin(), atoms.end());
      m.fourier_at.push_back(static_cast<int64_t>(m.fourier.size()));
      for (int n = 1; n <= n_max; ++n) {
        const auto it = coef.find(n);
        m.fourier.push_back(it == coef.end() ? T(0) : T(it->second.first));
        m.fourier.push_back(it == coef.end() ? T(0) : T(it->second.second));
      }
    }
    m.runs.back().end = static_cast<int64_t>(m.fourier_at.size());
  }
}

template <typename T>
Model<T> make_model(const Raw<T>& p) {
  Model<T> m;
  m.raw = p;
  group_torsions(m);
  m.qq.assign(p.n_pairs, T(0));
  m.sigma.assign(p.n_pairs, T(0));
  m.eps4.assign(p.n_pairs, T(0));
  std::vector<bool> seen(p.n_pairs, false);
  for (int64_t q = 0; q < p.n_nb; ++q) {
    const int64_t k = p.nb_pair[q];
    TORCH_CHECK(k >= 0 && k < p.n_pairs && !seen[k], "nb_pair must index distinct pairs");
    seen[k] = true;
    m.qq[k] = p.nb_qq[q];
    m.sigma[k] = p.nb_sigma[q];
    m.eps4[k] = 4 * p.nb_epsilon[q];
  }
  if (p.gb.on) {
    for (int64_t i = 0; i < p.n_atoms; ++i) {
      const double orad = p.offset_radius[i], rho = orad + p.gb.offset, q = p.charge[i];
      m.inv_offset_radius.push_back(T(1 / orad));
      m.inv_rho.push_back(T(1 / rho));
      m.sa0.push_back(T(p.gb.sa_factor * (rho + p.gb.probe) * (rho + p.gb.probe)));
      m.self_pref.push_back(T(0.5 * p.gb.prefactor * q * q));
    }
  }
  return m;
}

// Configurations are processed in blocks of L, laid out [coordinate][lane]: every loop over
// force-field terms has an inner loop over the L lanes with the same atom indices, so loads and
// stores are contiguous, the gradient updates of different lanes never collide, and the lane
// loop vectorises, transcendental functions included (glibc's libmvec, -ffast-math). 32 lanes
// (two or four AVX-512 registers per value) rather than 16: the pair terms are long dependency
// chains (reciprocals, log, exp), and two or more independent chains per iteration kept the
// vector units busier (measured 10-20% faster per configuration than 16, float32 and float64).
constexpr int L = 32;
#define LANES _Pragma("omp simd") for (int l = 0; l < L; ++l)

template <typename T>
struct Block {
  // per pair: r, 1/r, (dE/dr)/r, (dh_ij/dr)/r, (dh_ji/dr)/r; per atom: I, B, 1/B, dE/dB, dE/dI
  std::vector<T> x, g, e, r, ir, coef, dh_ij, dh_ji, integral, born, inv_born, dedb, dedi;
  Block(int64_t n_atoms, int64_t n_pairs)
      : x(3 * n_atoms * L), g(3 * n_atoms * L), e(L), r(n_pairs * L), ir(n_pairs * L),
        coef(n_pairs * L), dh_ij(n_pairs * L), dh_ji(n_pairs * L), integral(n_atoms * L),
        born(n_atoms * L), inv_born(n_atoms * L), dedb(n_atoms * L), dedi(n_atoms * L) {}
  T* at(std::vector<T>& v, int64_t row) { return v.data() + row * L; }
};

template <typename T>
void bonds(const Raw<T>& p, Block<T>& s) {
  T* e = s.e.data();
  for (int64_t k = 0; k < p.n_bonds; ++k) {
    const int64_t i = p.bonds[2 * k], j = p.bonds[2 * k + 1];
    const T *xi = s.at(s.x, 3 * i), *xj = s.at(s.x, 3 * j);
    T *gi = s.at(s.g, 3 * i), *gj = s.at(s.g, 3 * j);
    const T r0 = p.bond_length[k], kk = p.bond_k[k];
    LANES {
      const T dx = xj[l] - xi[l], dy = xj[L + l] - xi[L + l], dz = xj[2 * L + l] - xi[2 * L + l];
      const T ir = 1 / std::sqrt(dx * dx + dy * dy + dz * dz);
      const T d = (dx * dx + dy * dy + dz * dz) * ir - r0;  // r - r0
      e[l] += T(0.5) * kk * d * d;
      const T c = kk * d * ir;
      gj[l] += c * dx; gj[L + l] += c * dy; gj[2 * L + l] += c * dz;
      gi[l] -= c * dx; gi[L + l] -= c * dy; gi[2 * L + l] -= c * dz;
    }
  }
}

// theta = atan2(|u x v|, u . v) at atom j; d theta / du = (uv u / |u|^2 - v) / |u x v|.
// One division serves 1/|u x v|, 1/|u|^2 and 1/|v|^2: inv = 1 / (|u x v| |u|^2 |v|^2).
template <typename T>
void angles(const Raw<T>& p, Block<T>& s) {
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
      const T inv = 1 / (cw * uu * vv), c = kk * d * uu * vv * inv;  // k d / |u x v|
      const T cu = c * uv * cw * vv * inv, cv = c * uv * cw * uu * inv;  // c uv / uu, c uv / vv
      const T gux = cu * ux - c * vx, guy = cu * uy - c * vy, guz = cu * uz - c * vz;
      const T gvx = cv * vx - c * ux, gvy = cv * vy - c * uy, gvz = cv * vz - c * uz;
      gi[l] += gux; gi[L + l] += guy; gi[2 * L + l] += guz;
      gk[l] += gvx; gk[L + l] += gvy; gk[2 * L + l] += gvz;
      gj[l] -= gux + gvx; gj[L + l] -= guy + gvy; gj[2 * L + l] -= guz + gvz;
    }
  }
}

// phi = atan2(|b2| b1 . n, m . n), m = b1 x b2, n = b2 x b3, is never formed: (cos phi, sin phi)
// = (m . n, |b2| b1 . n) / (|m| |n|), then (cos k phi, sin k phi) by the Chebyshev recurrence
// c_{k+1} = 2 c_1 c_k - c_{k-1} (the same for s). N, the run's n_max, is a template argument so
// that the recurrence unrolls and the lane loop vectorises (GCC does not vectorise a lane loop
// holding a loop with a run-time bound: that cost 0.8 us per configuration); N = 0 takes the
// run-time bound (periodicities above 6, scalar code). Gradients of Blondel & Karplus:
// d phi/dx_i = -|b2| m / |m|^2, d phi/dx_l = |b2| n / |n|^2, x_j and x_k from
// f1 = b1.b2/|b2|^2, f3 = b3.b2/|b2|^2. One division: R = 1/sqrt(|m|^2 |n|^2 |b2|^2).
template <typename T, int N>
void torsion_run(const Model<T>& md, const TorsionRun& run, Block<T>& s) {
  T* e = s.e.data();
  const int n_max = N > 0 ? N : run.n_max;
  for (int64_t g = run.begin; g < run.end; ++g) {
    const int64_t* q = md.dihedral.data() + 4 * g;
    const T* ab = md.fourier.data() + md.fourier_at[g];
    const T *x0 = s.at(s.x, 3 * q[0]), *x1 = s.at(s.x, 3 * q[1]), *x2 = s.at(s.x, 3 * q[2]),
            *x3 = s.at(s.x, 3 * q[3]);
    T *g0 = s.at(s.g, 3 * q[0]), *g1 = s.at(s.g, 3 * q[1]), *g2 = s.at(s.g, 3 * q[2]),
      *g3 = s.at(s.g, 3 * q[3]);
    LANES {
      const T b1x = x1[l] - x0[l], b1y = x1[L + l] - x0[L + l], b1z = x1[2 * L + l] - x0[2 * L + l];
      const T b2x = x2[l] - x1[l], b2y = x2[L + l] - x1[L + l], b2z = x2[2 * L + l] - x1[2 * L + l];
      const T b3x = x3[l] - x2[l], b3y = x3[L + l] - x2[L + l], b3z = x3[2 * L + l] - x2[2 * L + l];
      const T mx = b1y * b2z - b1z * b2y, my = b1z * b2x - b1x * b2z, mz = b1x * b2y - b1y * b2x;
      const T nx = b2y * b3z - b2z * b3y, ny = b2z * b3x - b2x * b3z, nz = b2x * b3y - b2y * b3x;
      const T mm = mx * mx + my * my + mz * mz, nn = nx * nx + ny * ny + nz * nz;
      const T bb = b2x * b2x + b2y * b2y + b2z * b2z, lb = std::sqrt(bb);
      const T rr = 1 / std::sqrt(mm * nn * bb), r2 = rr * rr, rs = rr * lb;  // rs = 1/(|m||n|)
      const T c1 = (mx * nx + my * ny + mz * nz) * rs;
      const T s1 = lb * (b1x * nx + b1y * ny + b1z * nz) * rs;
      T c = c1, sn = s1, c_prev = 1, s_prev = 0, en = 0, de = 0;  // de = dE/dphi
      for (int k = 0; k < n_max; ++k) {
        const T a = ab[2 * k], b = ab[2 * k + 1];
        en += a * c + b * sn;
        de += T(k + 1) * (b * c - a * sn);
        const T c_next = 2 * c1 * c - c_prev, s_next = 2 * c1 * sn - s_prev;
        c_prev = c; s_prev = sn; c = c_next; sn = s_next;
      }
      e[l] += en;
      const T ci = -de * lb * nn * bb * r2, cl = de * lb * mm * bb * r2;  // -de|b2|/mm, de|b2|/nn
      const T ibb = mm * nn * r2;  // 1 / |b2|^2
      const T f1 = (b1x * b2x + b1y * b2y + b1z * b2z) * ibb;
      const T f3 = (b3x * b2x + b3y * b2y + b3z * b2z) * ibb;
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

template <typename T>
void torsions(const Model<T>& md, Block<T>& s) {
  for (const TorsionRun& run : md.runs) {
    switch (run.n_max) {
      case 1: torsion_run<T, 1>(md, run, s); break;
      case 2: torsion_run<T, 2>(md, run, s); break;
      case 3: torsion_run<T, 3>(md, run, s); break;
      case 4: torsion_run<T, 4>(md, run, s); break;
      case 5: torsion_run<T, 5>(md, run, s); break;
      case 6: torsion_run<T, 6>(md, run, s); break;
      default: torsion_run<T, 0>(md, run, s);
    }
  }
}

// Hawkins-Cramer-Truhlar's lower bound for sphere sr_j at distance r seen from sphere or_i:
// L = max(or_i, |r - sr_j|), and dL/dr (the upper bound is U = r + sr_j). Scalars through
// references, not a struct: GCC keeps a returned struct of floats in memory and then does not
// vectorise the float lane loop.
template <typename T>
inline T lower_bound(T r, T or_i, T sr_j, T& dlower) {
  const T diff = r - sr_j, ad = std::abs(diff);
  const bool lower_is_or = or_i >= ad;
  dlower = lower_is_or ? T(0) : (diff > 0 ? T(1) : T(-1));
  return lower_is_or ? or_i : ad;
}

// h(r) = 0.5 (1/L - 1/U + (r - sr^2/r)(1/U^2 - 1/L^2)/4 + log(L/U)/(2r)) [+ 1/or - 1/L], and
// (dh/dr)/r; zero where the spheres do not overlap. Branch-free (selects), so that it
// vectorises; 1/r, 1/L, 1/U and 1/or come from the caller (shared divisions).
template <typename T>
inline void pair_integral(T r, T ir, T or_i, T inv_or, T sr_j, T lower, T dl, T il, T iu,
                          bool engulf, T& h, T& dh_r) {
  const T a = r - sr_j * sr_j * ir;
  const T lg = std::log(lower * iu), q = iu * iu - il * il;
  const T t = il - iu + T(0.25) * a * q + T(0.5) * lg * ir;
  const T dt = -dl * il * il + iu * iu + T(0.25) * (1 + sr_j * sr_j * ir * ir) * q +
               T(0.5) * a * (dl * il * il * il - iu * iu * iu) +
               T(0.5) * ((dl * il - iu) * ir - lg * ir * ir);
  const bool inside = engulf && or_i < sr_j - r, overlap = or_i < r + sr_j;
  const T hh = T(0.5) * t + (inside ? inv_or - il : T(0));
  const T dd = T(0.5) * dt + (inside ? dl * il * il : T(0));
  h = overlap ? hh : T(0);
  dh_r = overlap ? dd * ir : T(0);
}

// Pass 1 over all pairs: r, 1/r, Coulomb + LJ (energy and (dE/dr)/r into coef), and with GB
// both pair integrals (I_i += h_ij, I_j += h_ji; (dh/dr)/r kept for pass 3). The four GB
// reciprocals come from one division: with a = L/r, b = U/r (near 1 at large r, so that the
// product neither overflows nor underflows where 1/r is finite), 1/L_1 = (1/r) b_1 a_2 b_2 /
// (a_1 b_1 a_2 b_2), and so on.
template <typename T, bool kGB>
void pair_pass(const Model<T>& md, Block<T>& s) {
  const Raw<T>& p = md.raw;
  T* e = s.e.data();
  const bool engulf = p.gb.engulf;
  if (kGB) std::fill(s.integral.begin(), s.integral.end(), T(0));
  for (int64_t k = 0; k < p.n_pairs; ++k) {
    const int64_t i = p.pairs[2 * k], j = p.pairs[2 * k + 1];
    const T *xi = s.at(s.x, 3 * i), *xj = s.at(s.x, 3 * j);
    T *r = s.at(s.r, k), *ir = s.at(s.ir, k), *coef = s.at(s.coef, k);
    const T qq = md.qq[k], sigma = md.sigma[k], eps4 = md.eps4[k];
    LANES {
      const T dx = xj[l] - xi[l], dy = xj[L + l] - xi[L + l], dz = xj[2 * L + l] - xi[2 * L + l];
      const T r2 = dx * dx + dy * dy + dz * dz, inv = 1 / std::sqrt(r2);
      r[l] = r2 * inv;
      ir[l] = inv;
      const T sr = sigma * inv, s2 = sr * sr, s6 = s2 * s2 * s2, coul = qq * inv;
      e[l] += coul + eps4 * (s6 * s6 - s6);
      coef[l] = (-coul + eps4 * (6 * s6 - 12 * s6 * s6)) * inv * inv;
    }
    if constexpr (kGB) {
      const T or_i = p.offset_radius[i], or_j = p.offset_radius[j];
      const T sr_i = p.scaled_radius[i], sr_j = p.scaled_radius[j];
      const T inv_or_i = md.inv_offset_radius[i], inv_or_j = md.inv_offset_radius[j];
      T *dh_ij = s.at(s.dh_ij, k), *dh_ji = s.at(s.dh_ji, k);
      T *int_i = s.at(s.integral, i), *int_j = s.at(s.integral, j);
      LANES {
        const T rk = r[l], irk = ir[l];
        T dl1, dl2;
        const T l1 = lower_bound(rk, or_i, sr_j, dl1), l2 = lower_bound(rk, or_j, sr_i, dl2);
        const T a1 = l1 * irk, b1 = (rk + sr_j) * irk, a2 = l2 * irk, b2 = (rk + sr_i) * irk;
        const T ab1 = a1 * b1, ab2 = a2 * b2, inv = irk / (ab1 * ab2);
        const T w1 = ab2 * inv, w2 = ab1 * inv;  // r / (L_1 U_1), r / (L_2 U_2)
        T h1, h2;
        pair_integral(rk, irk, or_i, inv_or_i, sr_j, l1, dl1, b1 * w1, a1 * w1, engulf, h1,
                      dh_ij[l]);
        pair_integral(rk, irk, or_j, inv_or_j, sr_i, l2, dl2, b2 * w2, a2 * w2, engulf, h2,
                      dh_ji[l]);
        int_i[l] += h1;
        int_j[l] += h2;
      }
    }
  }
}

// OBC Born radii, kept as B and 1/B = 1/or - tanh(psi (alpha - beta psi + gamma psi^2)) / rho
// (no division in the pair terms), the self and surface energies, dE/dB and dB/dI.
template <typename T>
void born_radii(const Model<T>& md, Block<T>& s) {
  const GB& gb = md.raw.gb;
  const T alpha = T(gb.alpha), beta = T(gb.beta), gamma = T(gb.gamma);
  T* e = s.e.data();
  for (int64_t i = 0; i < md.raw.n_atoms; ++i) {
    const T orad = md.raw.offset_radius[i], inv_or = md.inv_offset_radius[i];
    const T rho = orad + T(gb.offset), inv_rho = md.inv_rho[i], sa0 = md.sa0[i];
    const T self = md.self_pref[i];
    const T* integral = s.at(s.integral, i);
    T *born = s.at(s.born, i), *inv_born = s.at(s.inv_born, i), *dedb = s.at(s.dedb, i),
      *dbdi = s.at(s.dedi, i);
    LANES {
      const T psi = orad * integral[l];
      const T t = std::tanh(psi * (alpha + psi * (-beta + psi * gamma)));
      const T ib = inv_or - t * inv_rho, b = 1 / ib;
      born[l] = b;
      inv_born[l] = ib;
      const T ratio = rho * ib, r2 = ratio * ratio, sa = sa0 * r2 * r2 * r2;  // (rho/B)^6
      e[l] += self * ib + sa;
      const T dt = (1 - t * t) * (alpha + psi * (-2 * beta + 3 * psi * gamma));
      dbdi[l] = b * b * dt * orad * inv_rho;  // dB/dI
      dedb[l] = -self * ib * ib - 6 * sa * ib;
    }
  }
}

// Pass 2: the GB pair energy q_i q_j / f, f = sqrt(r^2 + B_i B_j exp(-r^2 / (4 B_i B_j))), with
// (dE/dr)/r into coef and dE/dB onto both atoms; then dE/dI_i = dE/dB_i dB_i/dI_i.
template <typename T>
void gb_pairs(const Model<T>& md, Block<T>& s) {
  const Raw<T>& p = md.raw;
  const T pref = T(p.gb.prefactor);
  T* e = s.e.data();
  for (int64_t k = 0; k < p.n_pairs; ++k) {
    const int64_t i = p.pairs[2 * k], j = p.pairs[2 * k + 1];
    const T qq = pref * p.charge[i] * p.charge[j];
    const T *r = s.at(s.r, k), *bi = s.at(s.born, i), *bj = s.at(s.born, j),
            *ibi = s.at(s.inv_born, i), *ibj = s.at(s.inv_born, j);
    T *coef = s.at(s.coef, k), *dedb_i = s.at(s.dedb, i), *dedb_j = s.at(s.dedb, j);
    LANES {
      const T rk = r[l], r2 = rk * rk, z = T(0.25) * r2 * ibi[l] * ibj[l], ex = std::exp(-z);
      const T inv_f = 1 / std::sqrt(r2 + bi[l] * bj[l] * ex), qf = qq * inv_f;
      e[l] += qf;
      const T c = -qf * inv_f * inv_f;  // d(qq/f)/df / f
      coef[l] += c * (1 - T(0.25) * ex);
      const T common = T(0.5) * c * ex * (1 + z);  // d(qq/f)/dB_i / B_j
      dedb_i[l] += common * bj[l];
      dedb_j[l] += common * bi[l];
    }
  }
  for (int64_t i = 0; i < p.n_atoms; ++i) {
    T* dedi = s.at(s.dedi, i);
    const T* dedb = s.at(s.dedb, i);
    LANES { dedi[l] *= dedb[l]; }  // dB/dI -> dE/dI
  }
}

// Pass 3: the chain through the Born radii onto each pair's (dh/dr)/r, then every pair's
// (dE/dr)/r times the difference vector onto both atoms.
template <typename T, bool kGB>
void pair_forces(const Model<T>& md, Block<T>& s) {
  const Raw<T>& p = md.raw;
  for (int64_t k = 0; k < p.n_pairs; ++k) {
    const int64_t i = p.pairs[2 * k], j = p.pairs[2 * k + 1];
    const T *xi = s.at(s.x, 3 * i), *xj = s.at(s.x, 3 * j), *coef = s.at(s.coef, k);
    const T *wi = s.at(s.dedi, i), *wj = s.at(s.dedi, j), *dh_ij = s.at(s.dh_ij, k),
            *dh_ji = s.at(s.dh_ji, k);
    T *gi = s.at(s.g, 3 * i), *gj = s.at(s.g, 3 * j);
    LANES {
      const T c = kGB ? coef[l] + wi[l] * dh_ij[l] + wj[l] * dh_ji[l] : coef[l];
      const T dx = xj[l] - xi[l], dy = xj[L + l] - xi[L + l], dz = xj[2 * L + l] - xi[2 * L + l];
      gj[l] += c * dx; gj[L + l] += c * dy; gj[2 * L + l] += c * dz;
      gi[l] -= c * dx; gi[L + l] -= c * dy; gi[2 * L + l] -= c * dz;
    }
  }
}

// One block: s.x in, s.e and s.g out.
template <typename T>
void evaluate(const Model<T>& md, Block<T>& s) {
  std::fill(s.g.begin(), s.g.end(), T(0));
  std::fill(s.e.begin(), s.e.end(), md.torsion_constant);
  bonds(md.raw, s);
  angles(md.raw, s);
  torsions(md, s);
  if (md.raw.gb.on) {
    pair_pass<T, true>(md, s);
    born_radii(md, s);
    gb_pairs(md, s);
    pair_forces<T, true>(md, s);
  } else {
    pair_pass<T, false>(md, s);
    pair_forces<T, false>(md, s);
  }
}

// ---- torch interface ----------------------------------------------------------------------
template <typename T>
const T* ptr(const torch::Tensor& t) { return t.data_ptr<T>(); }

template <typename T>
Raw<T> raw_inputs(int64_t n_atoms, const std::vector<torch::Tensor>& ints,
                  const std::vector<torch::Tensor>& reals, const GB& gb) {
  Raw<T> p;
  p.n_atoms = n_atoms;
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
  return p;
}

template <typename T>
void run(const torch::Tensor& x, const Model<T>& md, bool need_grad, torch::Tensor& energy,
         torch::Tensor& grad) {
  const int64_t batch = x.size(0), width = 3 * md.raw.n_atoms;
  const T* xs = ptr<T>(x);
  T* es = energy.data_ptr<T>();
  T* gs = grad.data_ptr<T>();
  const int64_t n_blocks = (batch + L - 1) / L;
  at::parallel_for(0, n_blocks, 4, [&](int64_t begin, int64_t end) {
    Block<T> s(md.raw.n_atoms, md.raw.n_pairs);
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t b0 = blk * L, lanes = std::min<int64_t>(L, batch - b0);
      for (int l = 0; l < L; ++l) {  // transpose in; idle lanes repeat the first configuration
        const T* xb = xs + (b0 + (l < lanes ? l : 0)) * width;
        for (int64_t c = 0; c < width; ++c) s.x[c * L + l] = xb[c];
      }
      evaluate(md, s);
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
    const Model<scalar_t> md = make_model(raw_inputs<scalar_t>(x.size(1), ints, reals, gb));
    run<scalar_t>(x, md, need_grad, energy, grad);
  });
  return {energy, grad};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("energy_and_grad", &energy_and_grad, "force-field energy and gradient (CPU)");
}
