// Block-sparse attention on the CPU: only the kept (query block, key block)
// tiles of a layout are ever computed.
//
// The readable PyTorch version is `_block_sparse_torch` in
// efficient_attention/attention/block_sparse.py; this file computes the same
// numbers (tested against it and against dense attention) and is what
// `block_sparse_attention` runs on a CPU. Chapter "Sparse attention" draws
// how it works.
//
// The layout arrives in CSR form: for layout row `row` (one head's query
// block), the kept key blocks are cols[row_ptr[row] .. row_ptr[row + 1]).
// A kept block may carry an element mask (a block that a mask function
// only partly keeps): masks + mask_index[p] * bs * bs holds it transposed,
// [key in block][query in block], 1 = may attend.
//
// As in csrc/sliding_window.cpp, 2 * VW consecutive queries (a "lane
// group") sit in the lanes of two SIMD vectors, and every key is a column
// of FMAs with its features broadcast, so the softmax down the keys needs
// no horizontal sums. The keys of a lane group are the rows of its kept
// blocks, reached through a list of row pointers (no copy); they are taken
// CHUNK keys at a time with an online softmax (Milakov & Gimelshein 2018,
// arXiv 1805.02867): a running maximum and sum per query, and the partial
// output rescaled whenever the maximum grows. So a row of global attention
// over 16384 keys needs no more scratch memory than a row of 3 blocks.
//
// Plain C++ with GCC/Clang vector extensions (no intrinsics); OpenMP
// spreads (head, query block) tasks over the threads PyTorch uses.
#include "simd.h"

typedef uint8_t u8vec __attribute__((vector_size(VW)));
typedef uint8_t u8vec_u __attribute__((vector_size(VW), aligned(1)));
#ifndef CHUNK
#define CHUNK 512  // keys per online-softmax step
#endif

// ot[c][lanes] += sum_j values[j][col + c] * weights[j][lanes], for COLS
// value columns.
template <int COLS>
static inline void value_tile(const float* weights, const float* const* values,
                              int64_t col, int64_t n, float* ot) {
  vec acc[COLS][2];
  for (int c = 0; c < COLS; ++c) {
    acc[c][0] = load(ot + c * LANES);
    acc[c][1] = load(ot + c * LANES + VW);
  }
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

struct Problem {
  const float *q, *k, *v;
  float* out;
  float* lse;  // (BH, L) log-sum-exp of each row's kept scores, or null
  int64_t L, S, E, Ev, bs, layout_heads;
  const int64_t *row_ptr, *cols, *mask_index;
  const uint8_t* masks;
  float scale;
};

struct Workspace {  // one per thread
  std::vector<float> qt, scores, ot;    // qt and ot: one slice per group
  std::vector<vec> run_max, sum;        // 2 per lane group
  std::vector<ivec> overflow;           // 2 per lane group
  std::vector<const float*> krows, vrows;
  std::vector<const uint8_t*> mrows;  // per key: mask row, or null
};

// One chunk of n keys for one lane group (queries lane0 .. lane0 + count
// - 1 of the block): scores, mask, online softmax, weighted values.
static void lane_group_chunk(const Problem& pb, int64_t n, int64_t lane0,
                             int count, const float* qt, float* ot,
                             vec* run_max, vec* sum, ivec* overflow,
                             Workspace& ws) {
  const int64_t E = pb.E, Ev = pb.Ev, bs = pb.bs;
  float* scores = ws.scores.data();
  const uint8_t* const* mrows = ws.mrows.data();
  tiles<ScoreStep>(n, (const float* const*)ws.krows.data(), qt, E, scores);

  // Mask (partial blocks only), chunk maximum, overflow check.
  const vec minus_inf = splat(-INFINITY), plus_inf = splat(INFINITY);
  vec chunk_max[2] = {minus_inf, minus_inf};
  for (int64_t j = 0; j < n; ++j) {
    float* s = scores + j * LANES;
    if (mrows[j] && lane0 + LANES <= bs) {  // whole vectors of mask
      for (int h = 0; h < 2; ++h) {
        const u8vec bytes = *(const u8vec_u*)(mrows[j] + lane0 + h * VW);
        const ivec keep = __builtin_convertvector(bytes, ivec) != 0;
        const vec score = load(s + h * VW);
        overflow[h] |= keep & ~((score < plus_inf) & (score > minus_inf));
        const vec masked = keep ? score : minus_inf;
        store(s + h * VW, masked);
        chunk_max[h] = chunk_max[h] > masked ? chunk_max[h] : masked;
      }
    } else if (mrows[j]) {  // a block narrower than a lane group
      const uint8_t* m = mrows[j] + lane0;
      for (int r = 0; r < LANES; ++r) {
        // lanes past `count` repeat the last query
        const int rr = r < count ? r : count - 1;
        if (!m[rr]) s[r] = -INFINITY;
        else if (!std::isfinite(s[r])) overflow[r / VW][r % VW] = -1;
      }
      for (int h = 0; h < 2; ++h) {
        const vec score = load(s + h * VW);
        chunk_max[h] = chunk_max[h] > score ? chunk_max[h] : score;
      }
    } else {
      for (int h = 0; h < 2; ++h) {
        const vec score = load(s + h * VW);
        overflow[h] |= ~((score < plus_inf) & (score > minus_inf));
        chunk_max[h] = chunk_max[h] > score ? chunk_max[h] : score;
      }
    }
  }
  // Online softmax: rescale what came before to the new maximum.
  vec shift[2];
  for (int h = 0; h < 2; ++h) {
    const vec new_max = run_max[h] > chunk_max[h] ? run_max[h] : chunk_max[h];
    shift[h] = new_max == minus_inf ? (vec){} : new_max;
    const vec alpha = exp2_negative(run_max[h] - shift[h]);
    sum[h] *= alpha;
    run_max[h] = new_max;
    for (int64_t col = 0; col < Ev; ++col) {
      float* o = ot + col * LANES + h * VW;
      store(o, load(o) * alpha);
    }
  }
  exponentiate_and_sum(scores, n, shift, sum);
  tiles<ValueStep>(Ev, (const float*)scores,
                   (const float* const*)ws.vrows.data(), n, ot);
}

// One query block qb of batch-head bh: its lane groups take the kept key
// blocks CHUNK keys at a time, all groups one chunk before the next, so a
// chunk's keys and values are read from memory once and then from cache.
// Returns how many of its queries had a kept score that was not finite.
static int64_t query_block(const Problem& pb, int64_t bh, int64_t qb,
                           Workspace& ws) {
  const int64_t E = pb.E, Ev = pb.Ev, bs = pb.bs;
  const int64_t row = (bh % pb.layout_heads) * ((pb.L + bs - 1) / bs) + qb;
  const int64_t begin = pb.row_ptr[row], end = pb.row_ptr[row + 1];
  const int64_t q_first = qb * bs, queries = std::min(bs, pb.L - q_first);
  if (end <= begin) {  // no kept block: the rows get zeros
    float* o = pb.out + (bh * pb.L + q_first) * Ev;
    std::fill(o, o + queries * Ev, 0.f);
    if (pb.lse) {  // and a log-sum-exp of -inf (no weight at all)
      float* l = pb.lse + bh * pb.L + q_first;
      std::fill(l, l + queries, -INFINITY);
    }
    return 0;
  }
  const int64_t groups = (queries + LANES - 1) / LANES;

  // Queries transposed to (E, LANES) per group, scaled by scale * log2(e)
  // so that the softmax can use 2^x.
  const float c = pb.scale * 1.44269504088896341f;
  for (int64_t g = 0; g < groups; ++g) {
    float* qt = ws.qt.data() + g * E * LANES;
    const int64_t last = std::min<int64_t>(queries, (g + 1) * LANES) - 1;
    for (int r = 0; r < LANES; ++r) {
      const int64_t i = std::min<int64_t>(g * LANES + r, last);
      const float* q = pb.q + (bh * pb.L + q_first + i) * E;
      for (int64_t e = 0; e < E; ++e) qt[e * LANES + r] = q[e] * c;
    }
    ws.run_max[2 * g] = ws.run_max[2 * g + 1] = splat(-INFINITY);
    ws.sum[2 * g] = ws.sum[2 * g + 1] = (vec){};
    ws.overflow[2 * g] = ws.overflow[2 * g + 1] = (ivec){};
  }
  std::fill(ws.ot.begin(), ws.ot.begin() + groups * Ev * LANES, 0.f);

  int64_t p = begin, within = 0;  // next key: row `within` of block p
  while (p < end) {
    // Gather up to CHUNK keys of the kept blocks (pointers, no copy).
    int64_t n = 0;
    while (p < end && n < CHUNK) {
      const int64_t first = pb.cols[p] * bs, keys = std::min(bs, pb.S - first);
      const int64_t m = pb.mask_index[p];
      const uint8_t* mask = m < 0 ? nullptr : pb.masks + m * bs * bs;
      const int64_t take = std::min(keys - within, CHUNK - n);
      for (int64_t j = within; j < within + take; ++j, ++n) {
        const int64_t key = bh * pb.S + first + j;
        ws.krows[n] = pb.k + key * E;
        ws.vrows[n] = pb.v + key * Ev;
        ws.mrows[n] = mask ? mask + j * bs : nullptr;
      }
      within += take;
      if (within == keys) {
        within = 0;
        ++p;
      }
    }
    for (int64_t g = 0; g < groups; ++g) {
      const int count = (int)std::min<int64_t>(LANES, queries - g * LANES);
      lane_group_chunk(pb, n, g * LANES, count, ws.qt.data() + g * E * LANES,
                       ws.ot.data() + g * Ev * LANES, &ws.run_max[2 * g],
                       &ws.sum[2 * g], &ws.overflow[2 * g], ws);
    }
  }

  int64_t not_finite = 0;
  for (int64_t g = 0; g < groups; ++g) {
    const float* ot = ws.ot.data() + g * Ev * LANES;
    const int count = (int)std::min<int64_t>(LANES, queries - g * LANES);
    for (int r = 0; r < count; ++r) {
      const float total = ws.sum[2 * g + r / VW][r % VW];
      not_finite += ws.overflow[2 * g + r / VW][r % VW] != 0;
      const float inv = total > 0.f ? 1.f / total : 0.f;
      const int64_t i = bh * pb.L + q_first + g * LANES + r;
      if (pb.lse) {  // back from base 2: ln(sum of e^score)
        const float top = ws.run_max[2 * g + r / VW][r % VW];
        pb.lse[i] = total > 0.f ? (top + std::log2(total)) * 0.6931471805599453f
                                : -INFINITY;
      }
      float* o = pb.out + i * Ev;
      for (int64_t col = 0; col < Ev; ++col) o[col] = ot[col * LANES + r] * inv;
    }
  }
  return not_finite;
}

// q (BH, L, E), k (BH, S, E), v (BH, S, Ev), out (BH, L, Ev): contiguous
// float32. The layout has layout_heads heads (batch-head bh uses head
// bh % layout_heads), ceil(L / bs) rows each, in CSR form (row_ptr, cols);
// mask_index[p] is -1 for a fully kept block p, else the index of its
// (bs, bs) transposed element mask in masks. Returns the number of queries
// whose kept scores held inf or NaN (their rows are then not valid).
// lse (BH, L), when not null, receives each row's log-sum-exp of its kept
// scores (-inf for a row with none): what it takes to merge this softmax
// with another over other keys (hierarchical attention does).
extern "C" int64_t block_sparse_forward_lse(
    const float* q, const float* k, const float* v, float* out, float* lse,
    int64_t BH, int64_t L, int64_t S, int64_t E, int64_t Ev, int64_t bs,
    int64_t layout_heads, const int64_t* row_ptr, const int64_t* cols,
    const int64_t* mask_index, const uint8_t* masks, float scale,
    int threads) {
  const Problem pb{q, k, v, out, lse, L, S, E, Ev, bs, layout_heads,
                   row_ptr, cols, mask_index, masks, scale};
  const int64_t nq = (L + bs - 1) / bs;
  int64_t not_finite = 0;
#pragma omp parallel num_threads(threads) reduction(+ : not_finite)
  {
    Workspace ws;
    const int64_t groups = (std::min(bs, L) + LANES - 1) / LANES;
    ws.qt.resize(groups * E * LANES);
    ws.ot.resize(groups * (Ev + TILE) * LANES);
    ws.run_max.resize(2 * groups);
    ws.sum.resize(2 * groups);
    ws.overflow.resize(2 * groups);
    ws.scores.resize((CHUNK + TILE) * LANES);
    ws.krows.resize(CHUNK + TILE);
    ws.vrows.resize(CHUNK + TILE);
    ws.mrows.resize(CHUNK + TILE);
#pragma omp for schedule(dynamic)
    for (int64_t task = 0; task < BH * nq; ++task)
      not_finite += query_block(pb, task / nq, task % nq, ws);
  }
  return not_finite;
}

extern "C" int64_t block_sparse_forward(
    const float* q, const float* k, const float* v, float* out, int64_t BH,
    int64_t L, int64_t S, int64_t E, int64_t Ev, int64_t bs,
    int64_t layout_heads, const int64_t* row_ptr, const int64_t* cols,
    const int64_t* mask_index, const uint8_t* masks, float scale,
    int threads) {
  return block_sparse_forward_lse(q, k, v, out, nullptr, BH, L, S, E, Ev, bs,
                                  layout_heads, row_ptr, cols, mask_index,
                                  masks, scale, threads);
}

// ---------------------------------------------------------------------------
// Backward: the gradients of the kept tiles, recomputed chunk by chunk from
// each row's log-sum-exp (as FlashAttention does: no nnz x bs x bs scores
// are stored). With P = exp(score - lse) over a row's kept keys and
// D = dO . out for that row,
//   dS = P * (dO . v_j - D),
//   dq += scale * dS k_j,   dk_j += scale * dS q,   dv_j += P dO.
// One task is one batch-head: its query blocks run one after another, so
// no two threads add into the same key's gradient.

struct BackwardProblem {
  Problem pb;
  const float *dout, *lse, *delta;  // (BH, L, Ev), (BH, L), (BH, L)
  float *dq, *dk, *dv;
};

struct BackwardWorkspace {  // one per thread
  std::vector<float> qt, qr, dot, dor, P, dS, dqt;
  std::vector<const float*> krows, vrows;
  std::vector<const uint8_t*> mrows;
  std::vector<float*> dkrows, dvrows;
};

// Rows lane0 .. lane0 + count - 1 of a query block starting at row i0,
// packed as rows (LANES, F) and, times c, transposed (F, LANES); lanes past
// count repeat the last row (their weights are set to zero).
static void pack_block_lanes(const float* base, int64_t i0, int count,
                             int64_t F, float c, float* rows, float* cols) {
  for (int r = 0; r < LANES; ++r) {
    const float* x = base + (i0 + std::min(r, count - 1)) * F;
    for (int64_t e = 0; e < F; ++e) {
      rows[r * F + e] = x[e];
      cols[e * LANES + r] = x[e] * c;
    }
  }
}

// One lane group against one chunk of n keys: adds into its dq tile (dqt)
// and into the chunk's dk and dv rows.
static void lane_group_chunk_backward(const BackwardProblem& bp, int64_t n,
                                      int64_t lane0, int count,
                                      const vec* lse2, const vec* delta,
                                      BackwardWorkspace& ws) {
  const Problem& pb = bp.pb;
  const int64_t E = pb.E, Ev = pb.Ev, bs = pb.bs;
  float *P = ws.P.data(), *dS = ws.dS.data();
  tiles<ScoreStep>(n, (const float* const*)ws.krows.data(),
                   (const float*)ws.qt.data(), E, P);
  ivec live[2];  // lanes that hold a query of the block
  for (int h = 0; h < 2; ++h)
    for (int l = 0; l < VW; ++l) live[h][l] = h * VW + l < count ? -1 : 0;
  for (int64_t j = 0; j < n; ++j) {
    const uint8_t* m = ws.mrows[j];
    for (int h = 0; h < 2; ++h) {
      ivec keep = live[h];
      if (m) {
        for (int l = 0; l < VW; ++l) {
          const int64_t r = std::min<int64_t>(h * VW + l, count - 1);
          keep[l] &= m[lane0 + r] ? -1 : 0;
        }
      }
      float* s = P + j * LANES + h * VW;
      const vec w = exp2_negative(load(s) - lse2[h]);
      store(s, keep ? w : (vec){});
    }
  }
  tiles<ScoreStep>(n, (const float* const*)ws.vrows.data(),
                   (const float*)ws.dot.data(), Ev, dS);
  for (int64_t j = 0; j < n; ++j)
    for (int h = 0; h < 2; ++h) {
      float* s = dS + j * LANES + h * VW;
      store(s, load(P + j * LANES + h * VW) * (load(s) - delta[h]));
    }
  tiles<ValueStep>(E, (const float*)dS, (const float* const*)ws.krows.data(),
                   n, ws.dqt.data());
  tiles<LaneSumStep>(n, (const float*)dS, (const float*)ws.qr.data(), E,
                     pb.scale, (float* const*)ws.dkrows.data());
  tiles<LaneSumStep>(n, (const float*)P, (const float*)ws.dor.data(), Ev,
                     1.f, (float* const*)ws.dvrows.data());
}

static void batch_head_backward(const BackwardProblem& bp, int64_t bh,
                                BackwardWorkspace& ws) {
  const Problem& pb = bp.pb;
  const int64_t E = pb.E, Ev = pb.Ev, bs = pb.bs;
  const int64_t nq = (pb.L + bs - 1) / bs;
  const float c = pb.scale * 1.44269504088896341f;
  for (int64_t qb = 0; qb < nq; ++qb) {
    const int64_t row = (bh % pb.layout_heads) * nq + qb;
    const int64_t begin = pb.row_ptr[row], end = pb.row_ptr[row + 1];
    const int64_t q_first = qb * bs, queries = std::min(bs, pb.L - q_first);
    for (int64_t lane0 = 0; lane0 < queries; lane0 += LANES) {
      const int count = (int)std::min<int64_t>(LANES, queries - lane0);
      const int64_t i0 = bh * pb.L + q_first + lane0;
      pack_block_lanes(pb.q, i0, count, E, c, ws.qr.data(), ws.qt.data());
      pack_block_lanes(bp.dout, i0, count, Ev, 1.f, ws.dor.data(),
                       ws.dot.data());
      vec lse2[2], delta[2];
      for (int r = 0; r < LANES; ++r) {
        const int64_t i = i0 + std::min(r, count - 1);
        const float l = bp.lse[i] * 1.44269504088896341f;  // base 2
        lse2[r / VW][r % VW] = std::isfinite(l) ? l : 0.f;
        delta[r / VW][r % VW] = bp.delta[i];
      }
      std::fill(ws.dqt.begin(), ws.dqt.end(), 0.f);
      int64_t p = begin, within = 0;
      while (p < end) {  // the kept keys, CHUNK at a time
        int64_t n = 0;
        while (p < end && n < CHUNK) {
          const int64_t first = pb.cols[p] * bs;
          const int64_t keys = std::min(bs, pb.S - first);
          const int64_t m = pb.mask_index[p];
          const uint8_t* mask = m < 0 ? nullptr : pb.masks + m * bs * bs;
          const int64_t take = std::min(keys - within, CHUNK - n);
          for (int64_t j = within; j < within + take; ++j, ++n) {
            const int64_t key = bh * pb.S + first + j;
            ws.krows[n] = pb.k + key * E;
            ws.vrows[n] = pb.v + key * Ev;
            ws.dkrows[n] = bp.dk + key * E;
            ws.dvrows[n] = bp.dv + key * Ev;
            ws.mrows[n] = mask ? mask + j * bs : nullptr;
          }
          within += take;
          if (within == keys) {
            within = 0;
            ++p;
          }
        }
        lane_group_chunk_backward(bp, n, lane0, count, lse2, delta, ws);
      }
      for (int r = 0; r < count; ++r) {
        float* dq = bp.dq + (i0 + r) * E;
        for (int64_t e = 0; e < E; ++e)
          dq[e] = pb.scale * ws.dqt[e * LANES + r];
      }
    }
  }
}

// The gradients of block_sparse_forward_lse (same layout arguments), given
// its out's gradient dout (BH, L, Ev), its lse (BH, L) and delta (BH, L),
// each row's dout . out: writes dq (BH, L, E) and adds into dk (BH, S, E)
// and dv (BH, S, Ev), which the caller zeroes.
extern "C" void block_sparse_backward(
    const float* q, const float* k, const float* v, const float* dout,
    const float* lse, const float* delta, float* dq, float* dk, float* dv,
    int64_t BH, int64_t L, int64_t S, int64_t E, int64_t Ev, int64_t bs,
    int64_t layout_heads, const int64_t* row_ptr, const int64_t* cols,
    const int64_t* mask_index, const uint8_t* masks, float scale,
    int threads) {
  const BackwardProblem bp{
      {q, k, v, nullptr, nullptr, L, S, E, Ev, bs, layout_heads, row_ptr,
       cols, mask_index, masks, scale},
      dout, lse, delta, dq, dk, dv};
#pragma omp parallel num_threads(threads)
  {
    BackwardWorkspace ws;
    ws.qt.resize(E * LANES);
    ws.qr.resize(E * LANES);
    ws.dot.resize(Ev * LANES);
    ws.dor.resize(Ev * LANES);
    ws.P.resize((CHUNK + TILE) * LANES);
    ws.dS.resize((CHUNK + TILE) * LANES);
    ws.dqt.resize((E + TILE) * LANES);
    for (auto* rows : {&ws.krows, &ws.vrows}) rows->resize(CHUNK + TILE);
    for (auto* rows : {&ws.dkrows, &ws.dvrows}) rows->resize(CHUNK + TILE);
    ws.mrows.resize(CHUNK + TILE);
#pragma omp for schedule(dynamic)
    for (int64_t bh = 0; bh < BH; ++bh) batch_head_backward(bp, bh, ws);
  }
}
