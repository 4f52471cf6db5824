// The GPU engine's kernels: everything of a training step that is not a
// GEMM (the GEMMs go through cuBLASLt / cuBLAS). Compiled to PTX by gen.sh
// (clang-16, sm_80 and sm_90) and, for tests on the CPU, by pkg/gpu/emu.
//
// Shape legend (the CPU engine's, pkg/model): B sequences of S tokens,
// T = B*S tokens (sequence-major), d model width, H heads of hd = d/H,
// E experts, k experts per token, h expert hidden size, V vocabulary,
// n slots (kept (token, choice) pairs, grouped by expert). Suffixes name
// the shape: xTD is [T][d], probsTE [T][E], qBHSD [B][H][S][hd].
//
// Storage types: the residual stream, its gradients, router logits and
// probabilities, losses and all parameters/gradients are float; the
// activations that feed GEMMs ("act") are the template type T: float in
// the fp32 mode, bf16 in the mixed mode. Every reduction has a fixed order,
// so a step gives the same bits every time it runs.
//
// Launch configurations are chosen by pkg/gpu (launch.go); each kernel
// states what it expects. Block sizes are multiples of 32.

#pragma once
#include "sycuda.h"

// ---------------------------------------------------------------- embedding

// xTD[t] = wVD[tokT[t]]. grid T, any block.
SY_KERNEL void embed_fwd(float* xTD, const float* wVD, const int* tokT, int d) {
  long t = sy_bid();
  const float* w = wVD + (long)tokT[t] * d;
  float* x = xTD + t * d;
  for (int i = sy_tid(); i < d; i += sy_ntid()) x[i] = w[i];
}

// dwVD[v] += sum of dxTD[p] over the positions p of token v, in position
// order (orderT lists positions sorted by token, startV[v]..startV[v+1]
// are token v's). grid (V, ceil(d/block)).
SY_KERNEL void embed_bwd(float* dwVD, const float* dxTD, const int* orderT, const int* startV, int d) {
  int v = sy_bid();
  int i = sy_bid_y() * sy_ntid() + sy_tid();
  if (i >= d) return;
  float acc = 0.f;
  for (int p = startV[v]; p < startV[v + 1]; p++) acc += dxTD[(long)orderT[p] * d + i];
  dwVD[(long)v * d + i] += acc;
}

// ---------------------------------------------------------------- RMSNorm

// yTD = xTD * rstd * g, rstdT = 1/sqrt(mean(x^2) + eps). grid T.
template <typename T>
SY_DEV void rmsnorm_fwd(T* yTD, float* rstdT, const float* xTD, const float* gD, int d, float eps) {
  SY_SHARED float sh[32];
  long r = sy_bid();
  const float* x = xTD + r * d;
  float ss = 0.f;
  for (int i = sy_tid(); i < d; i += sy_ntid()) ss += x[i] * x[i];
  ss = block_sum(ss, sh);
  float rs = 1.0f / sy_sqrt(ss / (float)d + eps);
  if (sy_tid() == 0) rstdT[r] = rs;
  for (int i = sy_tid(); i < d; i += sy_ntid()) st(yTD, r * d + i, x[i] * rs * gD[i]);
}
SY_KERNEL void rmsnorm_fwd_f32(float* y, float* rstd, const float* x, const float* g, int d, float eps) {
  rmsnorm_fwd<float>(y, rstd, x, g, d, eps);
}
SY_KERNEL void rmsnorm_fwd_bf16(bf16* y, float* rstd, const float* x, const float* g, int d, float eps) {
  rmsnorm_fwd<bf16>(y, rstd, x, g, d, eps);
}

// Backward of y = x*rstd*g for rows [bid*rpb, (bid+1)*rpb):
//   dxTD = dresTD + rstd*g*dy - x*rstd^3*mean(x*g*dy)   (dresTD may be 0)
//   dxActTD = dxTD in the act type (skipped when 0)
//   dgPartBD[bid] = sum over the block's rows of x*rstd*dy (colsum adds
//   the blocks' partials into the gain's gradient in block order).
// grid nblk, rpb = ceil(rows/nblk).
template <typename T>
SY_DEV void rmsnorm_bwd(float* dxTD, T* dxActTD, float* dgPartBD, const float* dyTD, const float* xTD, const float* gD,
                        const float* rstdT, const float* dresTD, int rows, int d, int rpb) {
  SY_SHARED float sh[32];
  float* part = dgPartBD + (long)sy_bid() * d;
  for (int i = sy_tid(); i < d; i += sy_ntid()) part[i] = 0.f;
  int r0 = sy_bid() * rpb, r1 = r0 + rpb < rows ? r0 + rpb : rows;
  for (int r = r0; r < r1; r++) {
    const float* x = xTD + (long)r * d;
    const float* dy = dyTD + (long)r * d;
    float rs = rstdT[r];
    float dot = 0.f;
    for (int i = sy_tid(); i < d; i += sy_ntid()) dot += x[i] * gD[i] * dy[i];
    dot = block_sum(dot, sh);
    float c = rs * rs * rs * dot / (float)d;
    for (int i = sy_tid(); i < d; i += sy_ntid()) {
      long o = (long)r * d + i;
      float v = rs * gD[i] * dy[i] - x[i] * c;
      if (dresTD) v += dresTD[o];
      dxTD[o] = v;
      if (dxActTD) st(dxActTD, o, v);
      part[i] += x[i] * rs * dy[i];
    }
  }
}
SY_KERNEL void rmsnorm_bwd_f32(float* dx, float* dxAct, float* dgPart, const float* dy, const float* x, const float* g,
                               const float* rstd, const float* dres, int rows, int d, int rpb) {
  rmsnorm_bwd<float>(dx, dxAct, dgPart, dy, x, g, rstd, dres, rows, d, rpb);
}
SY_KERNEL void rmsnorm_bwd_bf16(float* dx, bf16* dxAct, float* dgPart, const float* dy, const float* x, const float* g,
                                const float* rstd, const float* dres, int rows, int d, int rpb) {
  rmsnorm_bwd<bf16>(dx, dxAct, dgPart, dy, x, g, rstd, dres, rows, d, rpb);
}

// outD[i] += sum over b < nb of partBD[b][i], in order. grid ceil(d/block).
SY_KERNEL void colsum_add(float* outD, const float* partBD, int nb, int d) {
  int i = sy_bid() * sy_ntid() + sy_tid();
  if (i >= d) return;
  float s = 0.f;
  for (int b = 0; b < nb; b++) s += partBD[(long)b * d + i];
  outD[i] += s;
}

// ---------------------------------------------------------------- attention

// qkvT3D [T][q(d) | k(d) | v(d)] -> qBHSD, kBHSD, vBHSD, with RoPE
// (rotate-half pairs (j, j+hd/2)) applied to q and k. cosSH, sinSH
// [S][hd/2]. grid T.
template <typename T>
SY_DEV void qkv_split(T* q, T* k, T* v, const T* qkv, const float* cosSH, const float* sinSH, int S, int H, int hd) {
  long t = sy_bid();
  int b = (int)(t / S), s = (int)(t % S), d = H * hd, half = hd / 2;
  const T* row = qkv + t * 3 * d;
  for (int i = sy_tid(); i < H * half; i += sy_ntid()) {
    int h = i / half, j = i % half;
    float c = cosSH[s * half + j], sn = sinSH[s * half + j];
    long o = (((long)b * H + h) * S + s) * hd;
    float q1 = ld(row, h * hd + j), q2 = ld(row, h * hd + j + half);
    st(q, o + j, q1 * c - q2 * sn);
    st(q, o + j + half, q2 * c + q1 * sn);
    float k1 = ld(row, d + h * hd + j), k2 = ld(row, d + h * hd + j + half);
    st(k, o + j, k1 * c - k2 * sn);
    st(k, o + j + half, k2 * c + k1 * sn);
    st(v, o + j, ld(row, 2 * d + h * hd + j));
    st(v, o + j + half, ld(row, 2 * d + h * hd + j + half));
  }
}
SY_KERNEL void qkv_split_f32(float* q, float* k, float* v, const float* qkv, const float* c, const float* s, int S, int H, int hd) {
  qkv_split<float>(q, k, v, qkv, c, s, S, H, hd);
}
SY_KERNEL void qkv_split_bf16(bf16* q, bf16* k, bf16* v, const bf16* qkv, const float* c, const float* s, int S, int H, int hd) {
  qkv_split<bf16>(q, k, v, qkv, c, s, S, H, hd);
}

// The inverse of qkv_split for gradients: dq, dk rotated back (inverse
// RoPE), written with dv into dqkvT3D. grid T.
template <typename T>
SY_DEV void qkv_merge(T* dqkv, const T* dq, const T* dk, const T* dv, const float* cosSH, const float* sinSH, int S, int H, int hd) {
  long t = sy_bid();
  int b = (int)(t / S), s = (int)(t % S), d = H * hd, half = hd / 2;
  T* row = dqkv + t * 3 * d;
  for (int i = sy_tid(); i < H * half; i += sy_ntid()) {
    int h = i / half, j = i % half;
    float c = cosSH[s * half + j], sn = -sinSH[s * half + j];
    long o = (((long)b * H + h) * S + s) * hd;
    float q1 = ld(dq, o + j), q2 = ld(dq, o + j + half);
    st(row, h * hd + j, q1 * c - q2 * sn);
    st(row, h * hd + j + half, q2 * c + q1 * sn);
    float k1 = ld(dk, o + j), k2 = ld(dk, o + j + half);
    st(row, d + h * hd + j, k1 * c - k2 * sn);
    st(row, d + h * hd + j + half, k2 * c + k1 * sn);
    st(row, 2 * d + h * hd + j, ld(dv, o + j));
    st(row, 2 * d + h * hd + j + half, ld(dv, o + j + half));
  }
}
SY_KERNEL void qkv_merge_f32(float* dqkv, const float* dq, const float* dk, const float* dv, const float* c, const float* s, int S, int H, int hd) {
  qkv_merge<float>(dqkv, dq, dk, dv, c, s, S, H, hd);
}
SY_KERNEL void qkv_merge_bf16(bf16* dqkv, const bf16* dq, const bf16* dk, const bf16* dv, const float* c, const float* s, int S, int H, int hd) {
  qkv_merge<bf16>(dqkv, dq, dk, dv, c, s, S, H, hd);
}

// heads_merge: oBHSD -> outTD (head h at columns h*hd). heads_split: the
// reverse. grid T.
template <typename T>
SY_DEV void heads_move(T* dst, const T* src, int S, int H, int hd, int toHeads) {
  long t = sy_bid();
  int b = (int)(t / S), s = (int)(t % S), d = H * hd;
  for (int i = sy_tid(); i < d; i += sy_ntid()) {
    int h = i / hd, j = i % hd;
    long o = (((long)b * H + h) * S + s) * hd + j;
    if (toHeads)
      dst[o] = src[t * d + i];
    else
      dst[t * d + i] = src[o];
  }
}
SY_KERNEL void heads_merge_f32(float* out, const float* o, int S, int H, int hd) { heads_move<float>(out, o, S, H, hd, 0); }
SY_KERNEL void heads_merge_bf16(bf16* out, const bf16* o, int S, int H, int hd) { heads_move<bf16>(out, o, S, H, hd, 0); }
SY_KERNEL void heads_split_f32(float* o, const float* in, int S, int H, int hd) { heads_move<float>(o, in, S, H, hd, 1); }
SY_KERNEL void heads_split_bf16(bf16* o, const bf16* in, int S, int H, int hd) { heads_move<bf16>(o, in, S, H, hd, 1); }

// Causal softmax of score rows: row r of sBSS (r = bh*S + i) holds the
// scaled scores of query i against keys 0..S-1; pBSS row r gets softmax
// over keys 0..i and zeros above the diagonal up to the end of the row's
// query chunk (keys < min(S, (i/chunk+1)*chunk)): the attention GEMMs of
// a chunk of chunk queries read only those keys, and nothing beyond them
// is written or read. s and p may alias in the fp32 mode. grid BH*S.
SY_DEV int chunk_end(int i, int S, int chunk) {
  int e = (i / chunk + 1) * chunk;
  return e < S ? e : S;
}

// row_softmax_stats gives every thread of the block the maximum of
// row[0..n) and the sum of exp(row[j] - max).
SY_DEV void row_softmax_stats(const float* row, int n, float* sh, float* mx, float* sum) {
  float m = -sy_inf();
  for (int j = sy_tid(); j < n; j += sy_ntid()) m = fmax_(m, row[j]);
  m = block_max(m, sh);
  float s = 0.f;
  for (int j = sy_tid(); j < n; j += sy_ntid()) s += sy_exp(row[j] - m);
  *mx = m;
  *sum = block_sum(s, sh);
}

template <typename T>
SY_DEV void softmax_causal(T* pBSS, const float* sBSS, int S, int chunk) {
  SY_SHARED float sh[32];
  long r = sy_bid();
  int i = (int)(r % S), n = i + 1, end = chunk_end(i, S, chunk);
  const float* srow = sBSS + r * S;
  float mx, sum;
  row_softmax_stats(srow, n, sh, &mx, &sum);
  float inv = 1.0f / sum;
  for (int j = sy_tid(); j < end; j += sy_ntid()) st(pBSS, r * S + j, j < n ? sy_exp(srow[j] - mx) * inv : 0.f);
}
SY_KERNEL void softmax_causal_f32(float* p, const float* s, int S, int chunk) { softmax_causal<float>(p, s, S, chunk); }
SY_KERNEL void softmax_causal_bf16(bf16* p, const float* s, int S, int chunk) { softmax_causal<bf16>(p, s, S, chunk); }

// dS = P * (dP - sum_j P_j dP_j) over keys 0..i, zeros above the diagonal
// up to the end of the row's query chunk; dsBSS may alias dpBSS in the
// fp32 mode. grid BH*S.
template <typename T>
SY_DEV void softmax_causal_bwd(T* dsBSS, const T* pBSS, const float* dpBSS, int S, int chunk) {
  SY_SHARED float sh[32];
  long r = sy_bid();
  int i = (int)(r % S), n = i + 1, end = chunk_end(i, S, chunk);
  float dot = 0.f;
  for (int j = sy_tid(); j < n; j += sy_ntid()) dot += ld(pBSS, r * S + j) * dpBSS[r * S + j];
  dot = block_sum(dot, sh);
  for (int j = sy_tid(); j < end; j += sy_ntid()) {
    float v = 0.f;
    if (j < n) v = ld(pBSS, r * S + j) * (dpBSS[r * S + j] - dot);
    st(dsBSS, r * S + j, v);
  }
}
SY_KERNEL void softmax_causal_bwd_f32(float* ds, const float* p, const float* dp, int S, int chunk) {
  softmax_causal_bwd<float>(ds, p, dp, S, chunk);
}
SY_KERNEL void softmax_causal_bwd_bf16(bf16* ds, const bf16* p, const float* dp, int S, int chunk) {
  softmax_causal_bwd<bf16>(ds, p, dp, S, chunk);
}

// ---------------------------------------------------------------- router

// The selection score of expert e: probability plus the (selection-only)
// bias, NaN ranked below everything (router.TopK's order).
SY_DEV float sel_score(const float* p, const float* biasE, int e) {
  float v = p[e];
  if (biasE) v += biasE[e];
  if (v != v) return -sy_inf();
  return v;
}

// One thread per token: probsTE = softmax(logitsTE), lseT = logsumexp,
// idxTK = top-k of probs+bias (ties to the lower index, in decreasing
// order), wTK = the selected probabilities (divided by their sum when
// renorm). grid ceil(T/block).
SY_KERNEL void router_fwd(float* probsTE, float* lseT, int* idxTK, float* wTK, const float* logitsTE, const float* biasE,
                          int T, int E, int k, int renorm) {
  long t = (long)sy_bid() * sy_ntid() + sy_tid();
  if (t >= T) return;
  const float* z = logitsTE + t * E;
  float* p = probsTE + t * E;
  float mx = -sy_inf();
  for (int e = 0; e < E; e++) mx = fmax_(mx, z[e]);
  float s = 0.f;
  for (int e = 0; e < E; e++) {
    float v = sy_exp(z[e] - mx);
    p[e] = v;
    s += v;
  }
  float inv = 1.0f / s;
  for (int e = 0; e < E; e++) p[e] *= inv;
  lseT[t] = mx + sy_log(s);
  int* out = idxTK + t * k;
  int n = 0;
  float worst = 0.f;
  for (int e = 0; e < E; e++) {
    float v = sel_score(p, biasE, e);
    if (n == k && !(v > worst)) continue;
    int j = n;
    if (n < k)
      n++;
    else
      j = k - 1;
    while (j > 0 && v > sel_score(p, biasE, out[j - 1])) {
      out[j] = out[j - 1];
      j--;
    }
    out[j] = e;
    if (n == k) worst = sel_score(p, biasE, out[k - 1]);
  }
  float* w = wTK + t * k;
  double sum = 0.0;
  for (int j = 0; j < k; j++) {
    w[j] = p[out[j]];
    sum += (double)p[out[j]];
  }
  if (renorm) {
    for (int j = 0; j < k; j++) w[j] = sum == 0.0 ? 0.f : (float)((double)w[j] / sum);
  }
}

// Per sequence b (one block each): over its valid tokens (tgtT >= 0),
// cntBE[b][e] = tokens choosing e, psumBE[b][e] = sum of probabilities,
// nvB[b] = valid tokens, zB[b] = sum of lse^2. The host sums the
// sequences in order (in float64) for the micro-batch's statistics. grid B.
SY_KERNEL void router_stats(float* cntBE, float* psumBE, float* nvB, float* zB, const float* probsTE, const float* lseT,
                            const int* idxTK, const int* tgtT, int S, int E, int k) {
  SY_SHARED float sh[32];
  int b = sy_bid();
  long t0 = (long)b * S;
  float nv = 0.f, z = 0.f;
  for (int s = sy_tid(); s < S; s += sy_ntid()) {
    if (tgtT[t0 + s] >= 0) {
      nv += 1.f;
      z += lseT[t0 + s] * lseT[t0 + s];
    }
  }
  nv = block_sum(nv, sh);
  z = block_sum(z, sh);
  if (sy_tid() == 0) {
    nvB[b] = nv;
    zB[b] = z;
  }
  for (int e = sy_tid(); e < E; e += sy_ntid()) {
    float c = 0.f, ps = 0.f;
    for (int s = 0; s < S; s++) {
      long t = t0 + s;
      if (tgtT[t] < 0) continue;
      ps += probsTE[t * E + e];
      for (int j = 0; j < k; j++) c += idxTK[t * k + j] == e ? 1.f : 0.f;
    }
    cntBE[(long)b * E + e] = c;
    psumBE[(long)b * E + e] = ps;
  }
}

// ---------------------------------------------------------------- dispatch plan
//
// The (token, choice) pairs i = t*k + j are cut into chunks of the block
// size; a slot's position within its expert is the number of earlier
// pairs routed to the same expert, so slots are grouped by expert and
// sorted by token (then choice), and with a capacity the latest tokens are
// dropped: router.Plan's order exactly.

// histCE[c][e] = pairs of chunk c routed to e. grid C, dynamic shared E ints.
SY_KERNEL void plan_hist(int* histCE, const int* idxTK, int n, int E) {
  int* h = (int*)SY_SMEM;
  for (int e = sy_tid(); e < E; e += sy_ntid()) h[e] = 0;
  sy_sync();
  long i = (long)sy_bid() * sy_ntid() + sy_tid();
  if (i < n) sy_atomic_add(&h[idxTK[i]], 1);
  sy_sync();
  for (int e = sy_tid(); e < E; e += sy_ntid()) histCE[(long)sy_bid() * E + e] = h[e];
}

// In place: histCE becomes each chunk's exclusive prefix per expert;
// demandE = pairs per expert, keptE = min(demand, cap) (cap <= 0:
// dropless), offsetsE1 = exclusive prefix of keptE (offsets[E] = kept
// slots). grid 1.
SY_KERNEL void plan_scan(int* histCE, int* demandE, int* keptE, int* offsetsE1, int C, int E, int cap) {
  for (int e = sy_tid(); e < E; e += sy_ntid()) {
    int acc = 0;
    for (int c = 0; c < C; c++) {
      int h = histCE[(long)c * E + e];
      histCE[(long)c * E + e] = acc;
      acc += h;
    }
    demandE[e] = acc;
    keptE[e] = cap > 0 && acc > cap ? cap : acc;
  }
  sy_sync();
  if (sy_tid() == 0) {
    int o = 0;
    for (int e = 0; e < E; e++) {
      offsetsE1[e] = o;
      o += keptE[e];
    }
    offsetsE1[E] = o;
  }
}

// slotOfTK[i] = the pair's slot or -1 (dropped); tokS, choiceS for every
// kept slot. grid C (same block size as plan_hist, at most 1024).
SY_KERNEL void plan_assign(int* slotOfTK, int* tokS, int* choiceS, const int* idxTK, const int* baseCE, const int* keptE,
                           const int* offsetsE1, int n, int E, int k) {
  SY_SHARED int ex[1024];
  long i = (long)sy_bid() * sy_ntid() + sy_tid();
  int e = i < n ? idxTK[i] : -1;
  ex[sy_tid()] = e;
  sy_sync();
  if (i >= n) return;
  int r = 0;
  for (int j = 0; j < sy_tid(); j++) r += ex[j] == e ? 1 : 0;
  int pos = baseCE[(long)sy_bid() * E + e] + r;
  if (pos < keptE[e]) {
    int s = offsetsE1[e] + pos;
    slotOfTK[i] = s;
    tokS[s] = (int)(i / k);
    choiceS[s] = (int)(i % k);
  } else {
    slotOfTK[i] = -1;
  }
}

// xeND[s] = xTD[tokS[s]]. grid n (slots).
template <typename T>
SY_DEV void moe_gather(T* xe, const T* x, const int* tokS, int d) {
  long s = sy_bid();
  long t = tokS[s];
  for (int i = sy_tid(); i < d; i += sy_ntid()) xe[s * d + i] = x[t * d + i];
}
SY_KERNEL void moe_gather_f32(float* xe, const float* x, const int* tokS, int d) { moe_gather<float>(xe, x, tokS, d); }
SY_KERNEL void moe_gather_bf16(bf16* xe, const bf16* x, const int* tokS, int d) { moe_gather<bf16>(xe, x, tokS, d); }

// The k choices of token t in increasing expert order (the CPU combine
// visits slots expert by expert): order[0..k) indexes idx.
SY_DEV int expert_order(const int* idx, int k, int* order) {
  int m = 0;
  for (int j = 0; j < k; j++) {
    int p = m;
    while (p > 0 && idx[order[p - 1]] > idx[j]) {
      order[p] = order[p - 1];
      p--;
    }
    order[p] = j;
    m++;
  }
  return m;
}

// outTD[t] = resTD[t] + sum over kept choices (in expert order) of
// wTK[t][j] * yeND[slot]. out may alias res. grid T, k <= 16.
template <typename T>
SY_DEV void moe_combine(float* out, const float* res, const T* ye, const float* wTK, const int* slotOfTK, const int* idxTK, int d, int k) {
  long t = sy_bid();
  int order[16];
  expert_order(idxTK + t * k, k, order);
  for (int i = sy_tid(); i < d; i += sy_ntid()) {
    float acc = 0.f;
    for (int m = 0; m < k; m++) {
      int j = order[m];
      int s = slotOfTK[t * k + j];
      if (s >= 0) acc += wTK[t * k + j] * ld(ye, (long)s * d + i);
    }
    out[t * d + i] = res[t * d + i] + acc;
  }
}
SY_KERNEL void moe_combine_f32(float* out, const float* res, const float* ye, const float* w, const int* slotOf, const int* idx, int d, int k) {
  moe_combine<float>(out, res, ye, w, slotOf, idx, d, k);
}
SY_KERNEL void moe_combine_bf16(float* out, const float* res, const bf16* ye, const float* w, const int* slotOf, const int* idx, int d, int k) {
  moe_combine<bf16>(out, res, ye, w, slotOf, idx, d, k);
}

// Backward of the combine, one block per pair i = t*k+j: for a kept pair
// with slot s, dyeND[s] = wTK[i] * dyTD[t] and dwTK[i] = <dyTD[t], yeND[s]>;
// a dropped pair gets dwTK[i] = 0. grid T*k.
template <typename T>
SY_DEV void moe_combine_bwd(T* dye, float* dwTK, const float* dyTD, const T* ye, const float* wTK, const int* slotOfTK, int d, int k) {
  SY_SHARED float sh[32];
  long i = sy_bid();
  long t = i / k;
  int s = slotOfTK[i];
  if (s < 0) {
    if (sy_tid() == 0) dwTK[i] = 0.f;
    return;
  }
  float w = wTK[i], dot = 0.f;
  for (int c = sy_tid(); c < d; c += sy_ntid()) {
    float g = dyTD[t * d + c];
    dot += g * ld(ye, (long)s * d + c);
    st(dye, (long)s * d + c, w * g);
  }
  dot = block_sum(dot, sh);
  if (sy_tid() == 0) dwTK[i] = dot;
}
SY_KERNEL void moe_combine_bwd_f32(float* dye, float* dw, const float* dy, const float* ye, const float* w, const int* slotOf, int d, int k) {
  moe_combine_bwd<float>(dye, dw, dy, ye, w, slotOf, d, k);
}
SY_KERNEL void moe_combine_bwd_bf16(bf16* dye, float* dw, const float* dy, const bf16* ye, const float* w, const int* slotOf, int d, int k) {
  moe_combine_bwd<bf16>(dye, dw, dy, ye, w, slotOf, d, k);
}

// dxTD[t] = sum over kept choices (in expert order) of dxaND[slot] +
// dxbND[slot] (the two halves of the expert input gradient, da W1^T and
// db W3^T, added in float). grid T.
template <typename T>
SY_DEV void moe_scatter(float* dxTD, const T* dxa, const T* dxb, const int* slotOfTK, const int* idxTK, int d, int k) {
  long t = sy_bid();
  int order[16];
  expert_order(idxTK + t * k, k, order);
  for (int i = sy_tid(); i < d; i += sy_ntid()) {
    float acc = 0.f;
    for (int m = 0; m < k; m++) {
      int s = slotOfTK[t * k + order[m]];
      if (s >= 0) acc += ld(dxa, (long)s * d + i) + ld(dxb, (long)s * d + i);
    }
    dxTD[t * d + i] = acc;
  }
}
SY_KERNEL void moe_scatter_f32(float* dx, const float* dxa, const float* dxb, const int* slotOf, const int* idx, int d, int k) {
  moe_scatter<float>(dx, dxa, dxb, slotOf, idx, d, k);
}
SY_KERNEL void moe_scatter_bf16(float* dx, const bf16* dxa, const bf16* dxb, const int* slotOf, const int* idx, int d, int k) {
  moe_scatter<bf16>(dx, dxa, dxb, slotOf, idx, d, k);
}

// g += float(src) over n elements (bf16 weight-gradient partials of the
// grouped expert GEMMs into the float gradients). grid-stride.
SY_KERNEL void add_bf16_f32(float* g, const bf16* src, long n) {
  for (long i = (long)sy_bid() * sy_ntid() + sy_tid(); i < n; i += (long)sy_nbid() * sy_ntid()) g[i] += bf2f(src[i]);
}

// One thread per token: the router's logit gradient dzTE (act type) from
// the combine weights' gradient dwTK (through the optional renormalisation
// and the softmax) plus the auxiliary losses, all with the valid-token
// rule of pkg/lbl:
//   dz[j] += P[j] * (c*(F[j] - F.P) + cb*(G_b[j] - G_b.P) + cz*lse)
// where F (fE) is the coefficient-weighted f of the global and micro LBL,
// c = its scale * E / valid tokens, G_b = cntBE[b] / (k * nvB[b]) the
// sequence's own f, cb = seqScale * E / nvB[b], cz = the z-loss's scale
// (2 * coef / valid tokens). Padding tokens get the weights' gradient only.
// grid ceil(T/block).
template <typename A>
SY_DEV void router_bwd(A* dzTE, const float* probsTE, const float* lseT, const int* idxTK, const float* wTK, const float* dwTK,
                       const int* tgtT, const float* fE, const float* cntBE, const float* nvB, int T, int S, int E, int k,
                       int renorm, float c, float seqScale, float cz) {
  long t = (long)sy_bid() * sy_ntid() + sy_tid();
  if (t >= T) return;
  const float* p = probsTE + t * E;
  const int* idx = idxTK + t * k;
  const float* dw = dwTK + t * k;
  // dp is nonzero only at the selected experts: dpsel[j] for idx[j].
  float dpsel[16];
  if (renorm) {
    double sum = 0.0, dot = 0.0;
    for (int j = 0; j < k; j++) {
      sum += (double)p[idx[j]];
      dot += (double)dw[j] * (double)wTK[t * k + j];
    }
    for (int j = 0; j < k; j++) dpsel[j] = sum == 0.0 ? 0.f : (float)(((double)dw[j] - dot) / sum);
  } else {
    for (int j = 0; j < k; j++) dpsel[j] = dw[j];
  }
  float pdp = 0.f;
  for (int j = 0; j < k; j++) pdp += p[idx[j]] * dpsel[j];
  bool valid = tgtT[t] >= 0;
  int b = (int)(t / S);
  double fp = 0.0, gp = 0.0, cb = 0.0, ginv = 0.0, zterm = 0.0;
  if (valid) {
    if (fE) {
      for (int e = 0; e < E; e++) fp += (double)fE[e] * (double)p[e];
    }
    if (seqScale != 0.f && nvB[b] > 0.f) {
      ginv = 1.0 / ((double)k * (double)nvB[b]);
      for (int e = 0; e < E; e++) gp += (double)cntBE[(long)b * E + e] * ginv * (double)p[e];
      cb = (double)seqScale * (double)E / (double)nvB[b];
    }
    zterm = (double)cz * (double)lseT[t];
  }
  for (int e = 0; e < E; e++) {
    float dpe = 0.f;
    for (int j = 0; j < k; j++)
      if (idx[j] == e) dpe += dpsel[j];
    double v = (double)p[e] * (double)(dpe - pdp);
    if (valid) {
      double a = zterm;
      if (fE) a += (double)c * ((double)fE[e] - fp);
      if (cb != 0.0) a += cb * ((double)cntBE[(long)b * E + e] * ginv - gp);
      v += (double)p[e] * a;
    }
    st(dzTE, t * E + e, (float)v);
  }
}
SY_KERNEL void router_bwd_f32(float* dz, const float* probs, const float* lse, const int* idx, const float* w, const float* dw,
                              const int* tgt, const float* fE, const float* cnt, const float* nv, int T, int S, int E, int k,
                              int renorm, float c, float seqScale, float cz) {
  router_bwd<float>(dz, probs, lse, idx, w, dw, tgt, fE, cnt, nv, T, S, E, k, renorm, c, seqScale, cz);
}
SY_KERNEL void router_bwd_bf16(bf16* dz, const float* probs, const float* lse, const int* idx, const float* w, const float* dw,
                               const int* tgt, const float* fE, const float* cnt, const float* nv, int T, int S, int E, int k,
                               int renorm, float c, float seqScale, float cz) {
  router_bwd<bf16>(dz, probs, lse, idx, w, dw, tgt, fE, cnt, nv, T, S, E, k, renorm, c, seqScale, cz);
}

// ---------------------------------------------------------------- SwiGLU

SY_DEV float sigmoid_(float x) { return 1.0f / (1.0f + sy_exp(-x)); }

// hh = silu(a) * b over n elements. grid-stride.
template <typename T>
SY_DEV void swiglu_fwd(T* hh, const T* a, const T* b, long n) {
  for (long i = (long)sy_bid() * sy_ntid() + sy_tid(); i < n; i += (long)sy_nbid() * sy_ntid()) {
    float x = ld(a, i);
    st(hh, i, x * sigmoid_(x) * ld(b, i));
  }
}
SY_KERNEL void swiglu_fwd_f32(float* hh, const float* a, const float* b, long n) { swiglu_fwd<float>(hh, a, b, n); }
SY_KERNEL void swiglu_fwd_bf16(bf16* hh, const bf16* a, const bf16* b, long n) { swiglu_fwd<bf16>(hh, a, b, n); }

// da = dh * b * silu'(a), db = dh * silu(a). grid-stride.
template <typename T>
SY_DEV void swiglu_bwd(T* da, T* db, const T* dh, const T* a, const T* b, long n) {
  for (long i = (long)sy_bid() * sy_ntid() + sy_tid(); i < n; i += (long)sy_nbid() * sy_ntid()) {
    float x = ld(a, i), g = ld(dh, i);
    float s = sigmoid_(x);
    float silu = x * s;
    float dsilu = s * (1.0f + x * (1.0f - s));
    st(da, i, g * ld(b, i) * dsilu);
    st(db, i, g * silu);
  }
}
SY_KERNEL void swiglu_bwd_f32(float* da, float* db, const float* dh, const float* a, const float* b, long n) {
  swiglu_bwd<float>(da, db, dh, a, b, n);
}
SY_KERNEL void swiglu_bwd_bf16(bf16* da, bf16* db, const bf16* dh, const bf16* a, const bf16* b, long n) {
  swiglu_bwd<bf16>(da, db, dh, a, b, n);
}

// ---------------------------------------------------------------- loss

// One block per token: nllT[t] = logsumexp(z) - z[tgt] (0 for padding);
// when dzTV is not 0, dzTV[t] = scale * (softmax(z) - onehot(tgt)) for a
// valid token and zeros for padding. grid T.
template <typename T>
SY_DEV void xent(float* nllT, T* dzTV, const float* zTV, const int* tgtT, int V, float scale) {
  SY_SHARED float sh[32];
  long t = sy_bid();
  const float* z = zTV + t * V;
  int tgt = tgtT[t];
  if (tgt < 0) {
    if (sy_tid() == 0) nllT[t] = 0.f;
    if (dzTV)
      for (int j = sy_tid(); j < V; j += sy_ntid()) st(dzTV, t * V + j, 0.f);
    return;
  }
  float mx, s;
  row_softmax_stats(z, V, sh, &mx, &s);
  if (sy_tid() == 0) nllT[t] = sy_log(s) - (z[tgt] - mx);
  if (dzTV) {
    float inv = 1.0f / s;
    for (int j = sy_tid(); j < V; j += sy_ntid()) {
      float p = sy_exp(z[j] - mx) * inv;
      st(dzTV, t * V + j, scale * (p - (j == tgt ? 1.f : 0.f)));
    }
  }
}
SY_KERNEL void xent_f32(float* nll, float* dz, const float* z, const int* tgt, int V, float scale) { xent<float>(nll, dz, z, tgt, V, scale); }
SY_KERNEL void xent_bf16(float* nll, bf16* dz, const float* z, const int* tgt, int V, float scale) { xent<bf16>(nll, dz, z, tgt, V, scale); }

// ---------------------------------------------------------------- optimizer

// partB[b] = sum over block b's grid-stride elements of g^2, in float64;
// the host adds the blocks in order. grid nblk (fixed).
SY_KERNEL void sumsq(double* partB, const float* g, long n) {
  SY_SHARED double sh[32];
  double s = 0.0;
  for (long i = (long)sy_bid() * sy_ntid() + sy_tid(); i < n; i += (long)sy_nbid() * sy_ntid()) s += (double)g[i] * (double)g[i];
  s = block_sum_d(s, sh);
  if (sy_tid() == 0) partB[sy_bid()] = s;
}

// AdamW, element-wise (kernels.RefAdamW's formula) on the gradient times
// gscale (the clipping factor); pb, when not 0, receives the new values in
// bf16 (the mixed mode's GEMM copy). grid-stride.
SY_KERNEL void adamw(float* p, const float* g, float* m, float* v, bf16* pb, long n, float lr, float b1, float b2, float eps,
                     float wd, float bc1, float bc2, float gscale) {
  for (long i = (long)sy_bid() * sy_ntid() + sy_tid(); i < n; i += (long)sy_nbid() * sy_ntid()) {
    float gi = g[i] * gscale;
    float mi = b1 * m[i] + (1.0f - b1) * gi;
    float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    float mh = mi / bc1, vh = vi / bc2;
    float pi = p[i];
    pi -= lr * (mh / (sy_sqrt(vh) + eps) + wd * pi);
    p[i] = pi;
    if (pb) pb[i] = f2bf(pi);
  }
}

// dst = bf16(src), n elements. grid-stride.
SY_KERNEL void cast_bf16(bf16* dst, const float* src, long n) {
  for (long i = (long)sy_bid() * sy_ntid() + sy_tid(); i < n; i += (long)sy_nbid() * sy_ntid()) dst[i] = f2bf(src[i]);
}

// dst = float(src), n elements. grid-stride.
SY_KERNEL void cast_f32(float* dst, const bf16* src, long n) {
  for (long i = (long)sy_bid() * sy_ntid() + sy_tid(); i < n; i += (long)sy_nbid() * sy_ntid()) dst[i] = bf2f(src[i]);
}

// Every kernel above, for the CPU emulator's registry (keep in step; a
// test compares this list with the PTX's entries).
#define SY_KERNEL_LIST(X)                                                                                         \
  X(embed_fwd)                                                                                                    \
  X(embed_bwd)                                                                                                    \
  X(rmsnorm_fwd_f32) X(rmsnorm_fwd_bf16) X(rmsnorm_bwd_f32) X(rmsnorm_bwd_bf16) X(colsum_add) X(qkv_split_f32)    \
  X(qkv_split_bf16) X(qkv_merge_f32) X(qkv_merge_bf16) X(heads_merge_f32) X(heads_merge_bf16) X(heads_split_f32) \
  X(heads_split_bf16) X(softmax_causal_f32) X(softmax_causal_bf16) X(softmax_causal_bwd_f32)                      \
  X(softmax_causal_bwd_bf16) X(router_fwd) X(router_stats) X(plan_hist) X(plan_scan) X(plan_assign)              \
  X(moe_gather_f32) X(moe_gather_bf16) X(moe_combine_f32) X(moe_combine_bf16) X(moe_combine_bwd_f32)              \
  X(moe_combine_bwd_bf16) X(moe_scatter_f32) X(moe_scatter_bf16) X(add_bf16_f32) X(router_bwd_f32) X(router_bwd_bf16) X(swiglu_fwd_f32)                  \
  X(swiglu_fwd_bf16) X(swiglu_bwd_f32) X(swiglu_bwd_bf16) X(xent_f32) X(xent_bf16) X(sumsq) X(adamw)             \
  X(cast_bf16) X(cast_f32)
