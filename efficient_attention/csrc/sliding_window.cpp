// Sliding-window attention on the CPU, computing only the band of scores.
//
// The readable PyTorch version is `_sliding_window_torch` in
// efficient_attention/attention/local.py; this file computes the same
// numbers (tested against it and against dense attention) and is what
// `sliding_window_attention` runs on a CPU. Chapter "Local attention"
// draws how it works.
//
// The idea: put 2 * VW consecutive queries (a "lane group") in the lanes of
// two SIMD vectors. For every key j that any of them may attend,
//   scores[j][lanes] = sum_e key[j][e] * query[lanes][e]
// is a column of FMAs with the key's features broadcast, so the softmax
// down the keys is elementwise across vectors (no horizontal sums), and
//   out[c][lanes] = sum_j value[j][c] * weights[j][lanes]
// is again broadcast-and-FMA. Only the keys between the group's first
// window start and last window end are touched: for a window of w keys a
// group computes w + 2 * VW - 1 of them instead of the sequence's S.
//
// Plain C++ with GCC/Clang vector extensions (no intrinsics), so the same
// source compiles to AVX2, AVX-512 or NEON; OpenMP spreads lane groups over
// the threads PyTorch uses.
#include "simd.h"

static inline ivec isplat(int32_t x) { return x - (ivec){}; }
static inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ot[c][lanes] = sum_j values[j][col + c] * weights[j][lanes], for COLS
// value columns.
template <int COLS>
static inline void value_tile(const float* weights, const float* const* values,
                              int64_t col, int64_t n, float* ot) {
  vec acc[COLS][2] = {};
  for (int64_t j = 0; j < n; ++j) {
    const vec w0 = load(weights + j * LANES);
    const vec w1 = load(weights + j * LANES + VW);
    const float* v = values[j] + col;
    for (int c = 0; c < COLS; ++c) {
      acc[c][0] += v[c] * w0;
      acc[c][1] += v[c] * w1;
    }
  }
  for (int c = 0; c < COLS; ++c) {
    store(ot + c * LANES, acc[c][0]);
    store(ot + c * LANES + VW, acc[c][1]);
  }
}

template <int N>
struct ValueStep {
  static void run(int64_t col, const float* weights,
                  const float* const* values, int64_t n, float* ot) {
    value_tile<N>(weights, values, col, n, ot + col * LANES);
  }
};

// Keys [lo, hi) that query t may attend among n keys. clip: the window
// [t - left, t + right] cut at the ends; shift: the same span slid inside
// the sequence (NATTEN's rule). Empty when hi <= lo.
static inline void key_range(int64_t t, int64_t left, int64_t right,
                             int64_t n, bool shift, int64_t* lo,
                             int64_t* hi) {
  int64_t a = t - left, b = t + right + 1;
  if (shift) {
    const int64_t span = left + right + 1;
    a = span >= n ? 0 : std::min(std::max<int64_t>(a, 0), n - span);
    b = a + span;
  }
  *lo = std::max<int64_t>(a, 0);
  *hi = std::min<int64_t>(b, n);
}

struct Problem {
  const float *q, *k, *v;
  float* out;
  int64_t L, S, E, Ev;
  bool shift;
  float scale;
};

// The keys [lo[r], hi[r]) of each lane r of a lane group (queries res + d
// * (t0 + r), r < count; empty for the rest and for rows with no key), and
// [first, last), the keys of the whole group (first >= last: none).
static void group_keys(const Problem& pb, int64_t res, int64_t d,
                       int64_t left, int64_t right, int64_t t0, int count,
                       int32_t* lo, int32_t* hi, int64_t* first,
                       int64_t* last) {
  const int64_t n_keys = res < pb.S ? ceil_div(pb.S - res, d) : 0;
  *first = INT64_MAX;
  *last = INT64_MIN;
  for (int r = 0; r < LANES; ++r) {
    int64_t a = 0, b = 0;
    if (r < count) key_range(t0 + r, left, right, n_keys, pb.shift, &a, &b);
    if (b <= a) a = b = 0;  // nothing to attend: the row gets zeros
    lo[r] = (int32_t)a;
    hi[r] = (int32_t)b;
    if (b > a) {
      *first = std::min(*first, a);
      *last = std::max(*last, b);
    }
  }
}

// Scores (n keys from key first, LANES) in base 2 become the numerators of
// each lane's softmax over its own window: 2^(score - lane maximum), 0
// outside [lo, hi). sum gets each lane's total, overflow the lanes whose
// window held a score that is inf or NaN.
static void window_exponentials(float* scores, int64_t n, int64_t first,
                                const int32_t* lo, const int32_t* hi,
                                vec* sum, ivec* overflow) {
  ivec lo_v[2], hi_v[2];
  for (int h = 0; h < 2; ++h)
    for (int l = 0; l < VW; ++l) {
      lo_v[h][l] = lo[h * VW + l];
      hi_v[h][l] = hi[h * VW + l];
    }
  const vec minus_inf = splat(-INFINITY), plus_inf = splat(INFINITY);
  vec max[2] = {minus_inf, minus_inf};
  overflow[0] = overflow[1] = (ivec){};
  for (int64_t j = 0; j < n; ++j) {
    const ivec key = isplat((int32_t)(first + j));
    for (int h = 0; h < 2; ++h) {
      float* s = scores + j * LANES + h * VW;
      const vec score = load(s);
      const ivec in_window = (key >= lo_v[h]) & (key < hi_v[h]);
      overflow[h] |= in_window & ~((score < plus_inf) & (score > minus_inf));
      const vec masked = in_window ? score : minus_inf;
      store(s, masked);
      max[h] = max[h] > masked ? max[h] : masked;
    }
  }
  sum[0] = sum[1] = (vec){};
  for (int h = 0; h < 2; ++h) max[h] = max[h] == minus_inf ? (vec){} : max[h];
  exponentiate_and_sum(scores, n, max, sum);
}

struct Workspace {  // one per thread
  std::vector<float> qt, scores, ot;
  std::vector<const float*> rows;
};

// One lane group: queries i = res + d * t for t in [t0, t0 + count), of
// batch-head bh. With dilation d, the queries and keys of one residue
// class res = i mod d form an ordinary (undilated) sliding window problem.
// Returns how many of its queries had scores that were not finite.
static int64_t lane_group(const Problem& pb, int64_t bh, int64_t res,
                          int64_t d, int64_t left, int64_t right, int64_t t0,
                          int count, Workspace& ws) {
  const int64_t E = pb.E, Ev = pb.Ev;
  int32_t lo[LANES], hi[LANES];
  int64_t first, last;  // the group's keys: [first, last)
  group_keys(pb, res, d, left, right, t0, count, lo, hi, &first, &last);
  float* out_rows[LANES];
  for (int r = 0; r < count; ++r)
    out_rows[r] = pb.out + (bh * pb.L + res + d * (t0 + r)) * Ev;
  if (last <= first) {
    for (int r = 0; r < count; ++r)
      std::fill(out_rows[r], out_rows[r] + Ev, 0.f);
    return 0;
  }

  // Queries transposed to (E, LANES), scaled by scale * log2(e) so that
  // the softmax can use 2^x.
  float* qt = ws.qt.data();
  const float c = pb.scale * 1.44269504088896341f;
  for (int r = 0; r < LANES; ++r) {
    const int64_t t = t0 + std::min(r, count - 1);
    const float* q = pb.q + (bh * pb.L + res + d * t) * E;
    for (int64_t e = 0; e < E; ++e) qt[e * LANES + r] = q[e] * c;
  }

  // Scores of the group's n keys: (n, LANES).
  const int64_t n = last - first;
  const float** rows = ws.rows.data();
  for (int64_t j = 0; j < n; ++j)
    rows[j] = pb.k + (bh * pb.S + res + d * (first + j)) * E;
  float* scores = ws.scores.data();
  tiles<ScoreStep>(n, (const float* const*)rows, (const float*)qt, E, scores);

  // Softmax down the keys, each lane its own window.
  vec sum[2];
  ivec overflow[2];  // lanes with a score that is inf or NaN
  window_exponentials(scores, n, first, lo, hi, sum, overflow);

  // Weighted sum of the values: (Ev, LANES), then normalised rows.
  for (int64_t j = 0; j < n; ++j)
    rows[j] = pb.v + (bh * pb.S + res + d * (first + j)) * Ev;
  float* ot = ws.ot.data();
  tiles<ValueStep>(Ev, (const float*)scores, (const float* const*)rows, n, ot);
  int64_t not_finite = 0;
  for (int r = 0; r < count; ++r) {
    const float total = sum[r / VW][r % VW];
    not_finite += overflow[r / VW][r % VW] != 0;
    const float inv = total > 0.f ? 1.f / total : 0.f;
    for (int64_t col = 0; col < Ev; ++col)
      out_rows[r][col] = ot[col * LANES + r] * inv;
  }
  return not_finite;
}

struct Task {
  int64_t bh, res, t0, rows;
};

// q (BH, L, E), k (BH, S, E), v (BH, S, Ev), out (BH, L, Ev): contiguous
// float32. left, right, dilation: one value per batch-head, already
// checked (>= 0, >= 0, >= 1) and capped at L + S by the caller. block:
// queries per task (a multiple of LANES is best). Returns the number of
// queries whose scores held inf or NaN (their rows are then not valid).
extern "C" int64_t sliding_window_forward(
    const float* q, const float* k, const float* v, float* out, int64_t BH,
    int64_t L, int64_t S, int64_t E, int64_t Ev, const int64_t* left,
    const int64_t* right, const int64_t* dilation, int shift, float scale,
    int64_t block, int threads) {
  const Problem pb{q, k, v, out, L, S, E, Ev, shift != 0, scale};
  block = std::max<int64_t>(LANES, block / LANES * LANES);
  std::vector<Task> tasks;
  int64_t widest = 1;  // most keys one lane group can touch
  for (int64_t bh = 0; bh < BH; ++bh) {
    const int64_t d = dilation[bh];
    for (int64_t res = 0; res < std::min(d, L); ++res) {
      const int64_t rows = ceil_div(L - res, d);
      for (int64_t t = 0; t < rows; t += block)
        tasks.push_back({bh, res, t, std::min(block, rows - t)});
    }
    widest = std::max(widest, std::min(LANES + left[bh] + right[bh],
                                       ceil_div(S, d)));
  }
  int64_t not_finite = 0;
#pragma omp parallel num_threads(threads) reduction(+ : not_finite)
  {
    Workspace ws;
    ws.qt.resize(E * LANES);
    ws.scores.resize((widest + TILE) * LANES);
    ws.ot.resize((Ev + TILE) * LANES);
    ws.rows.resize(widest + TILE);
#pragma omp for schedule(dynamic)
    for (int64_t i = 0; i < (int64_t)tasks.size(); ++i) {
      const Task& task = tasks[i];
      for (int64_t t0 = task.t0; t0 < task.t0 + task.rows; t0 += LANES) {
        const int count =
            (int)std::min<int64_t>(LANES, task.t0 + task.rows - t0);
        not_finite +=
            lane_group(pb, task.bh, task.res, dilation[task.bh],
                       left[task.bh], right[task.bh], t0, count, ws);
      }
    }
  }
  return not_finite;
}

// ---------------------------------------------------------------------------
// Backward: the gradients of the same band, recomputed lane group by lane
// group (as FlashAttention does, nothing of size L x S is stored).
//
// For one query i with weights P[j] = softmax(S)[j] over its window,
// dO = the gradient of its output row and D = sum_j P[j] (dO . v_j):
//   dS[j] = P[j] * (dO . v_j - D)
//   dq_i  = scale * sum_j dS[j] k_j,   dk_j += scale * dS[j] q_i,
//   dv_j += P[j] dO.
// dO . v_j is a column of FMAs exactly like a score (dO in the lanes), and
// dq_i like an output row; dk_j and dv_j sum over the group's lanes.

struct Gradients {
  const float* dout;
  float *dq, *dk, *dv;
};

struct BackwardWorkspace {  // one per thread
  std::vector<float> qt, qr, dot, dor, scores, dp, dqt;
  std::vector<const float*> rows;
  std::vector<float*> grad_rows;
};

// Packs `count` rows of width F (query positions res + d * (t0 + r)) into
// rows (LANES, F) and, scaled by c, transposed into cols (F, LANES); the
// lanes past count repeat the last row (their weights are zero).
static void pack_lanes(const float* base, int64_t bh, int64_t L, int64_t F,
                       int64_t res, int64_t d, int64_t t0, int count, float c,
                       float* rows, float* cols) {
  for (int r = 0; r < LANES; ++r) {
    const int64_t t = t0 + std::min(r, count - 1);
    const float* x = base + (bh * L + res + d * t) * F;
    for (int64_t e = 0; e < F; ++e) {
      rows[r * F + e] = x[e];
      cols[e * LANES + r] = x[e] * c;
    }
  }
}

static int64_t lane_group_backward(const Problem& pb, const Gradients& g,
                                   int64_t bh, int64_t res, int64_t d,
                                   int64_t left, int64_t right, int64_t t0,
                                   int count, BackwardWorkspace& ws) {
  const int64_t E = pb.E, Ev = pb.Ev;
  int32_t lo[LANES], hi[LANES];
  int64_t first, last;  // the group's keys: [first, last)
  group_keys(pb, res, d, left, right, t0, count, lo, hi, &first, &last);
  if (last <= first) return 0;  // no keys: dq stays zero
  const int64_t n = last - first;

  // Scores again, as in the forward pass, then the normalised weights P.
  pack_lanes(pb.q, bh, pb.L, E, res, d, t0, count,
             pb.scale * 1.44269504088896341f, ws.qr.data(), ws.qt.data());
  const float** rows = ws.rows.data();
  for (int64_t j = 0; j < n; ++j)
    rows[j] = pb.k + (bh * pb.S + res + d * (first + j)) * E;
  float* P = ws.scores.data();
  tiles<ScoreStep>(n, (const float* const*)rows, (const float*)ws.qt.data(),
                   E, P);
  vec sum[2];
  ivec overflow[2];
  window_exponentials(P, n, first, lo, hi, sum, overflow);
  vec inv[2];
  for (int h = 0; h < 2; ++h)
    inv[h] = sum[h] > 0.f ? splat(1.f) / sum[h] : (vec){};
  for (int64_t j = 0; j < n; ++j)
    for (int h = 0; h < 2; ++h) {
      float* s = P + j * LANES + h * VW;
      store(s, load(s) * inv[h]);
    }

  // dp[j][lanes] = v_j . dO_lane, D = sum_j P dp, then dS = P (dp - D).
  pack_lanes(g.dout, bh, pb.L, Ev, res, d, t0, count, 1.f, ws.dor.data(),
             ws.dot.data());
  for (int64_t j = 0; j < n; ++j)
    rows[j] = pb.v + (bh * pb.S + res + d * (first + j)) * Ev;
  float* dS = ws.dp.data();
  tiles<ScoreStep>(n, (const float* const*)rows, (const float*)ws.dot.data(),
                   Ev, dS);
  vec D[2] = {};
  for (int64_t j = 0; j < n; ++j)
    for (int h = 0; h < 2; ++h)
      D[h] += load(P + j * LANES + h * VW) * load(dS + j * LANES + h * VW);
  for (int64_t j = 0; j < n; ++j)
    for (int h = 0; h < 2; ++h) {
      float* s = dS + j * LANES + h * VW;
      store(s, load(P + j * LANES + h * VW) * (load(s) - D[h]));
    }

  // dq rows = scale * dS^T K (through the transposed (E, LANES) tile).
  for (int64_t j = 0; j < n; ++j)
    rows[j] = pb.k + (bh * pb.S + res + d * (first + j)) * E;
  float* dqt = ws.dqt.data();
  tiles<ValueStep>(E, (const float*)dS, (const float* const*)rows, n, dqt);
  for (int r = 0; r < count; ++r) {
    float* dq = g.dq + (bh * pb.L + res + d * (t0 + r)) * E;
    for (int64_t e = 0; e < E; ++e) dq[e] = pb.scale * dqt[e * LANES + r];
  }

  // dk_j += scale * sum_lanes dS q, dv_j += sum_lanes P dO.
  float** grad = ws.grad_rows.data();
  for (int64_t j = 0; j < n; ++j)
    grad[j] = g.dk + (bh * pb.S + res + d * (first + j)) * E;
  tiles<LaneSumStep>(n, (const float*)dS, (const float*)ws.qr.data(), E,
                     pb.scale, (float* const*)grad);
  for (int64_t j = 0; j < n; ++j)
    grad[j] = g.dv + (bh * pb.S + res + d * (first + j)) * Ev;
  tiles<LaneSumStep>(n, (const float*)P, (const float*)ws.dor.data(), Ev,
                     1.f, (float* const*)grad);

  int64_t not_finite = 0;
  for (int r = 0; r < count; ++r) not_finite += overflow[r / VW][r % VW] != 0;
  return not_finite;
}

// The gradients of sliding_window_forward (same arguments), given dout
// (BH, L, Ev): writes dq (BH, L, E) and adds into dk (BH, S, E) and dv
// (BH, S, Ev), which the caller zeroes. A thread takes one residue class
// of one batch-head at a time, so no two threads add into the same key.
// Returns the number of queries whose scores held inf or NaN.
extern "C" int64_t sliding_window_backward(
    const float* q, const float* k, const float* v, const float* dout,
    float* dq, float* dk, float* dv, int64_t BH, int64_t L, int64_t S,
    int64_t E, int64_t Ev, const int64_t* left, const int64_t* right,
    const int64_t* dilation, int shift, float scale, int threads) {
  const Problem pb{q, k, v, nullptr, L, S, E, Ev, shift != 0, scale};
  const Gradients g{dout, dq, dk, dv};
  std::vector<Task> tasks;
  int64_t widest = 1;
  for (int64_t bh = 0; bh < BH; ++bh) {
    const int64_t d = dilation[bh];
    for (int64_t res = 0; res < std::min(d, L); ++res)
      tasks.push_back({bh, res, 0, ceil_div(L - res, d)});
    widest = std::max(widest, std::min(LANES + left[bh] + right[bh],
                                       ceil_div(S, d)));
  }
  int64_t not_finite = 0;
#pragma omp parallel num_threads(threads) reduction(+ : not_finite)
  {
    BackwardWorkspace ws;
    ws.qt.resize(E * LANES);
    ws.qr.resize(E * LANES);
    ws.dot.resize(Ev * LANES);
    ws.dor.resize(Ev * LANES);
    ws.scores.resize((widest + TILE) * LANES);
    ws.dp.resize((widest + TILE) * LANES);
    ws.dqt.resize((E + TILE) * LANES);
    ws.rows.resize(widest + TILE);
    ws.grad_rows.resize(widest + TILE);
#pragma omp for schedule(dynamic)
    for (int64_t i = 0; i < (int64_t)tasks.size(); ++i) {
      const Task& task = tasks[i];
      for (int64_t t0 = 0; t0 < task.rows; t0 += LANES) {
        const int count = (int)std::min<int64_t>(LANES, task.rows - t0);
        not_finite += lane_group_backward(
            pb, g, task.bh, task.res, dilation[task.bh], left[task.bh],
            right[task.bh], t0, count, ws);
      }
    }
  }
  return not_finite;
}
