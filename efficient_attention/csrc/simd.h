// What the CPU kernels share: SIMD vector types of the CPU's width, the
// exp2 they use for softmax weights (and the loop that turns a lane
// group's scores into weights), the micro-tile that computes a tile
// of scores, and the one that sums over a lane group's queries (for the
// gradients of keys and values). Included by sliding_window.cpp and
// block_sparse.cpp; cpu_kernels.py rebuilds both when it changes.
//
// Plain C++ with GCC/Clang vector extensions (no intrinsics), so the same
// source compiles to AVX2, AVX-512 or NEON.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#if defined(__AVX512F__)
constexpr int VW = 16;  // floats per SIMD vector
#elif defined(__AVX__)
constexpr int VW = 8;
#else
constexpr int VW = 4;
#endif
typedef float vec __attribute__((vector_size(VW * 4)));
typedef float vec_u __attribute__((vector_size(VW * 4), aligned(4)));
typedef int32_t ivec __attribute__((vector_size(VW * 4)));

constexpr int LANES = 2 * VW;  // queries per lane group
constexpr int TILE = 6;        // keys (or value columns) per micro-tile

static inline vec load(const float* p) { return *(const vec_u*)p; }
static inline void store(float* p, vec x) { *(vec_u*)p = x; }
static inline vec splat(float x) { return x - (vec){}; }

// 2^x for x <= 0, exactly 0 below -126 (so masked scores, -inf, give 0).
static inline vec exp2_negative(vec x) {
  const ivec tiny = x < -126.0f;
  x = tiny ? splat(-126.0f) : x;
  const vec magic = splat(12582912.0f);  // 1.5 * 2^23: rounds to nearest
  const vec n = (x + magic) - magic;
  const vec r = x - n;  // in [-0.5, 0.5]
  // 2^r by a degree-6 polynomial (relative error below 2e-7).
  vec p = splat(1.535336188319500e-4f);
  p = p * r + 1.339887440266574e-3f;
  p = p * r + 9.618437357674640e-3f;
  p = p * r + 5.550332471162809e-2f;
  p = p * r + 2.402264791363012e-1f;
  p = p * r + 6.931472028550421e-1f;
  p = p * r + 1.0f;
  const ivec exponent = (__builtin_convertvector(n, ivec) + 127) << 23;
  return tiny ? (vec){} : p * (vec)exponent;
}

// A lane group's softmax weights over n keys, in place: each score s
// becomes 2^(s - shift) of its lane's half, and is added to that half's sum.
static inline void exponentiate_and_sum(float* scores, int64_t n,
                                        const vec shift[2], vec sum[2]) {
  for (int64_t j = 0; j < n; ++j)
    for (int h = 0; h < 2; ++h) {
      float* s = scores + j * LANES + h * VW;
      const vec w = exp2_negative(load(s) - shift[h]);
      store(s, w);
      sum[h] += w;
    }
}

// scores[j][lanes] = sum_e keys[j][e] * qt[e][lanes], for KEYS keys.
template <int KEYS>
static inline void score_tile(const float* const* keys, const float* qt,
                              int64_t E, float* scores) {
  vec acc[KEYS][2] = {};
  for (int64_t e = 0; e < E; ++e) {
    const vec q0 = load(qt + e * LANES), q1 = load(qt + e * LANES + VW);
    for (int j = 0; j < KEYS; ++j) {
      const float k = keys[j][e];
      acc[j][0] += k * q0;
      acc[j][1] += k * q1;
    }
  }
  for (int j = 0; j < KEYS; ++j) {
    store(scores + j * LANES, acc[j][0]);
    store(scores + j * LANES + VW, acc[j][1]);
  }
}

// Run TILE-wide micro-tiles over [0, n), then one narrower tile for the rest.
template <template <int> class Step, typename... Args>
static inline void tiles(int64_t n, Args... args) {
  int64_t i = 0;
  for (; i + TILE <= n; i += TILE) Step<TILE>::run(i, args...);
  switch (n - i) {
    case 5: Step<5>::run(i, args...); break;
    case 4: Step<4>::run(i, args...); break;
    case 3: Step<3>::run(i, args...); break;
    case 2: Step<2>::run(i, args...); break;
    case 1: Step<1>::run(i, args...); break;
  }
}

template <int N>
struct ScoreStep {
  static void run(int64_t j, const float* const* keys, const float* qt,
                  int64_t E, float* scores) {
    score_tile<N>(keys + j, qt, E, scores + j * LANES);
  }
};

// grad[j][0, F) += factor * sum_r weights[j][r] * rows[r][0, F) for KEYS
// keys: rows is (LANES, F), packed; weights (KEYS, LANES).
template <int KEYS>
static inline void lane_sum_tile(const float* weights, const float* rows,
                                 int64_t F, float factor, float* const* grad) {
  int64_t f = 0;
  for (; f + VW <= F; f += VW) {
    vec acc[KEYS] = {};
    for (int r = 0; r < LANES; ++r) {
      const vec x = load(rows + r * F + f);
      for (int j = 0; j < KEYS; ++j) acc[j] += weights[j * LANES + r] * x;
    }
    for (int j = 0; j < KEYS; ++j)
      store(grad[j] + f, load(grad[j] + f) + factor * acc[j]);
  }
  for (; f < F; ++f)
    for (int j = 0; j < KEYS; ++j) {
      float acc = 0.f;
      for (int r = 0; r < LANES; ++r)
        acc += weights[j * LANES + r] * rows[r * F + f];
      grad[j][f] += factor * acc;
    }
}

template <int N>
struct LaneSumStep {
  static void run(int64_t j, const float* weights, const float* rows,
                  int64_t F, float factor, float* const* grad) {
    lane_sum_tile<N>(weights + j * LANES, rows, F, factor, grad + j);
  }
};
