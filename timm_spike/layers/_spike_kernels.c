/* Event-driven CPU kernels for layers that take binary spikes (timm_spike.layers.spike_kernels).
 *
 * Why by hand: no library has a CPU kernel that multiplies a binary matrix by a dense one from the indices of its
 * ones. torch's closest operator, F.embedding_bag(mode='sum'), pays a per-bag overhead that dominates at the few
 * active inputs per row of a spiking layer, and needs the indices from a separate nonzero() pass; MKL's CSR product
 * loses from a rate of 0.1. Here the LIF neuron that produces the spikes writes, per row, the list of the inputs
 * that fired (no float spike map is written or read again), and the layer sums the matching weight rows into
 * accumulators held in vector registers.
 *
 * Layouts (contiguous, float32 unless said):
 *   u       [T, P, K]       the neuron's input current (P positions, K channels); the T stride may be 0
 *                           (a direct-encoded input, the same current at every step)
 *   idx     [T * P, K] int32  per row, the active channels first (cnt[row] of them)
 *   map     [T * P, K] uint8  the spikes as 0/1 bytes (optional; for a max-pool that follows the neuron)
 *   weight  [taps, K, N]    taps = 1 (1x1 conv / linear) or 9 (3x3 conv, tap = dy * 3 + dx)
 *   out     [rows, N]       channels last
 * The LIF arithmetic is spikingjelly's, in its order (charge h = v + (x - (v - v_reset)) / tau with input decay,
 * h >= threshold fires, hard reset to v_reset or soft reset by subtraction), compiled without contraction into
 * FMAs, so the spikes equal those of the fused LIF kernel bit for bit.
 */
#include <stdint.h>
#include <string.h>

typedef float v8 __attribute__((vector_size(32)));
typedef float v8u __attribute__((vector_size(32), aligned(4)));

#ifdef __AVX2__
#include <immintrin.h>
#endif

/* This OpenMP thread's number (0 without OpenMP): picks the thread's part of a scratch buffer. */
static inline int thread_id(void) {
#ifdef _OPENMP
    extern int omp_get_thread_num(void);
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* byte_masks[bits]: 8 bytes, byte j = bit j of bits */
static uint64_t byte_masks[256];
__attribute__((constructor)) static void init_byte_masks(void) {
    for (int b = 0; b < 256; b++) {
        uint64_t v = 0;
        for (int j = 0; j < 8; j++) v |= (uint64_t)((b >> j) & 1) << (8 * j);
        byte_masks[b] = v;
    }
}

/* One LIF step over the K channels of one position: the potentials v advance with the input x; the channels that
 * fire are listed in ids, or (map given) written as 0/1 bytes into map; returns how many fired. */
static inline int32_t lif_row(const float *x, float *v, int64_t K, float tau, float v_threshold, float v_reset,
                              int hard_reset, int decay_input, int32_t *ids, uint8_t *map) {
    const float reset_value = hard_reset ? v_reset : 0.0f;
    int32_t n = 0;
    int64_t k = 0;
#ifdef __AVX2__
    const __m256 vr = _mm256_set1_ps(reset_value), vtau = _mm256_set1_ps(tau);
    const __m256 vth = _mm256_set1_ps(v_threshold), vres = _mm256_set1_ps(v_reset);
    for (; k + 8 <= K; k += 8) {
        __m256 xv = _mm256_loadu_ps(x + k), vv = _mm256_loadu_ps(v + k), h;
        if (decay_input)
            h = _mm256_add_ps(vv, _mm256_div_ps(_mm256_sub_ps(xv, _mm256_sub_ps(vv, vr)), vtau));
        else
            h = _mm256_add_ps(_mm256_sub_ps(vv, _mm256_div_ps(_mm256_sub_ps(vv, vr), vtau)), xv);
        __m256 m = _mm256_cmp_ps(h, vth, _CMP_GE_OQ);
        __m256 fired = hard_reset ? vres : _mm256_sub_ps(h, vth);
        _mm256_storeu_ps(v + k, _mm256_blendv_ps(h, fired, m));
        unsigned bits = (unsigned)_mm256_movemask_ps(m);
        if (map) {  /* the byte map instead of the lists (a max-pool reads it) */
            memcpy(map + k, &byte_masks[bits], 8);
            n += __builtin_popcount(bits);
            continue;
        }
        while (bits) {
            ids[n++] = (int32_t)(k + __builtin_ctz(bits));
            bits &= bits - 1;
        }
    }
#endif
    for (; k < K; k++) {
        float vv = v[k], h = decay_input ? vv + (x[k] - (vv - reset_value)) / tau : vv - (vv - reset_value) / tau + x[k];
        int spike = h >= v_threshold;
        v[k] = spike ? (hard_reset ? v_reset : h - v_threshold) : h;
        if (map) {
            map[k] = (uint8_t)spike;
            n += spike;
        } else if (spike) {
            ids[n++] = (int32_t)k;
        }
    }
    return n;
}

/* LIF over T for every (p, k), writing the index lists of the spikes, or (map given) their byte map instead;
 * cnt gets the spike count of each row either way.
 * Each position keeps its K membrane potentials in v (K floats of scratch per thread) while t advances, so the
 * input is read in its own order and the charge is computed 8 channels at a time. */
int64_t spike_lif_index(const float *u, int64_t t_stride, int64_t T, int64_t P, int64_t K,
                        float tau, float v_threshold, float v_reset, int hard_reset, int decay_input,
                        int32_t *idx, int32_t *cnt, uint8_t *map, float *scratch, int nthreads) {
    int64_t total = 0;
    const float reset_value = hard_reset ? v_reset : 0.0f;
#pragma omp parallel num_threads(nthreads) reduction(+:total)
    {
        int tid = thread_id();
        float *v = scratch + (int64_t)tid * K;
#pragma omp for schedule(static)
        for (int64_t p = 0; p < P; p++) {
            for (int64_t k = 0; k < K; k++) v[k] = reset_value;
            for (int64_t t = 0; t < T; t++) {
                int64_t row = t * P + p;
                int32_t n = lif_row(u + t * t_stride + p * K, v, K, tau, v_threshold, v_reset, hard_reset,
                                    decay_input, idx ? idx + row * K : 0, map ? map + row * K : 0);
                cnt[row] = n;
                total += n;
            }
        }
    }
    return total;
}

/* Index lists of a 3x3 / stride 2 / padding 1 max-pool of binary maps (an OR over each window).
 * map: [B, H, W, K] uint8; lists: [B, Ho, Wo] rows; scratch: K bytes per thread. */
int64_t spike_pool_index(const uint8_t *map, int64_t B, int64_t H, int64_t W, int64_t K, int64_t Ho, int64_t Wo,
                         int32_t *idx, int32_t *cnt, uint8_t *scratch, int nthreads) {
    int64_t total = 0;
#pragma omp parallel num_threads(nthreads) reduction(+:total)
    {
        int tid = thread_id();
        uint8_t *any = scratch + (int64_t)tid * K;
#pragma omp for schedule(static)
        for (int64_t by = 0; by < B * Ho; by++) {
            int64_t b = by / Ho, yo = by % Ho;
            for (int64_t xo = 0; xo < Wo; xo++) {
                int64_t q = by * Wo + xo;
                memset(any, 0, K);
                for (int64_t y = 2 * yo - 1; y <= 2 * yo + 1; y++) {
                    if (y < 0 || y >= H) continue;
                    for (int64_t x = 2 * xo - 1; x <= 2 * xo + 1; x++) {
                        if (x < 0 || x >= W) continue;
                        const uint8_t *row = map + ((b * H + y) * W + x) * K;
                        for (int64_t k = 0; k < K; k++) any[k] |= row[k];
                    }
                }
                int32_t *out = idx + q * K;
                int32_t n = 0;
                for (int64_t k = 0; k < K; k++)
                    if (any[k]) out[n++] = (int32_t)k;
                cnt[q] = n;
                total += n;
            }
        }
    }
    return total;
}

/* acc[0:W] += sum of the weight rows ids[0:n] (row stride N), W a multiple of 8 known at compile time. */
#define DEFINE_ACC(W)                                                                         \
    static inline void acc_##W(v8 *acc, const float *w, int64_t N, const int32_t *ids, int32_t n) { \
        for (int32_t i = 0; i < n; i++) {                                                     \
            const float *row = w + (int64_t)ids[i] * N;                                      \
            _Pragma("GCC unroll 16")                                                          \
            for (int j = 0; j < (W) / 8; j++) acc[j] += *(const v8u *)(row + 8 * j);        \
        }                                                                                     \
    }
DEFINE_ACC(8)
DEFINE_ACC(16)
DEFINE_ACC(32)
DEFINE_ACC(64)

static inline void acc_any(float *acc, const float *w, int64_t N, const int32_t *ids, int32_t n, int64_t width) {
    for (int32_t i = 0; i < n; i++) {
        const float *row = w + (int64_t)ids[i] * N;
        for (int64_t j = 0; j < width; j++) acc[j] += row[j];
    }
}

/* Sum for one output position and one chunk of output channels [n0, n0 + width): the lists of up to 9
 * neighbours (ksize 3) or of the position itself (ksize 1). */
static inline void gather_one(const int32_t *idx, const int32_t *cnt, int64_t K, const float *weight,
                              const float *bias, float *out, int64_t H, int64_t W, int64_t N, int ksize,
                              int64_t b, int64_t y, int64_t x, int64_t n0, int64_t width) {
    v8 acc[8];
    float *accf = (float *)acc;
    for (int64_t j = 0; j < width; j++) accf[j] = bias ? bias[n0 + j] : 0.0f;
    int64_t qs[9], ts[9], nq = 0;
    if (ksize == 1) {
        qs[0] = (b * H + y) * W + x;
        ts[0] = 0;
        nq = 1;
    } else {
        for (int64_t dy = 0; dy < 3; dy++) {
            int64_t yy = y + dy - 1;
            if (yy < 0 || yy >= H) continue;
            for (int64_t dx = 0; dx < 3; dx++) {
                int64_t xx = x + dx - 1;
                if (xx < 0 || xx >= W) continue;
                qs[nq] = (b * H + yy) * W + xx;
                ts[nq++] = dy * 3 + dx;
            }
        }
    }
    for (int64_t i = 0; i < nq; i++) {
        int64_t q = qs[i];
        int32_t n = cnt[q];
        if (!n) continue;
        const float *w = weight + ts[i] * K * N + n0;
        const int32_t *ids = idx + q * K;
        switch (width) {
            case 64: acc_64(acc, w, N, ids, n); break;
            case 32: acc_32(acc, w, N, ids, n); break;
            case 16: acc_16(acc, w, N, ids, n); break;
            case 8: acc_8(acc, w, N, ids, n); break;
            default: acc_any(accf, w, N, ids, n, width);
        }
    }
    memcpy(out + ((b * H + y) * W + x) * N + n0, accf, width * sizeof(float));
}

/* out[p, :] = bias + sum over the active inputs of the (tap's) weight rows.
 * ksize 1: each position reads its own list. ksize 3: the lists of its 3x3 neighbourhood (padding 1). */
void spike_gather(const int32_t *idx, const int32_t *cnt, int64_t K, const float *weight, const float *bias,
                  float *out, int64_t B, int64_t H, int64_t W, int64_t N, int ksize, int nthreads) {
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t by = 0; by < B * H; by++) {
        int64_t b = by / H, y = by % H;
        for (int64_t x = 0; x < W; x++) {
            for (int64_t n0 = 0; n0 < N; n0 += 64) {
                int64_t width = N - n0 < 64 ? N - n0 : 64;
                gather_one(idx, cnt, K, weight, bias, out, H, W, N, ksize, b, y, x, n0, width);
            }
        }
    }
}

/* The same 3x3 convolution (stride 1, padding 1) driven by the inputs instead of the outputs: each active input
 * adds its tap's weight row to the (up to) 9 outputs it reaches. Cheaper than gathering where positions have few
 * active inputs (most neighbour lists empty), since no output visits its 9 neighbours' lists.
 * Parallel over maps (b), so no two threads write one output. */
void spike_scatter3x3(const int32_t *idx, const int32_t *cnt, int64_t K, const float *weight, const float *bias,
                      float *out, int64_t B, int64_t H, int64_t W, int64_t N, int nthreads) {
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t b = 0; b < B; b++) {
        float *ob = out + b * H * W * N;
        for (int64_t p = 0; p < H * W; p++)
            for (int64_t j = 0; j < N; j++) ob[p * N + j] = bias ? bias[j] : 0.0f;
        for (int64_t y = 0; y < H; y++) {
            for (int64_t x = 0; x < W; x++) {
                int64_t q = (b * H + y) * W + x;
                const int32_t *ids = idx + q * K;
                for (int32_t i = 0; i < cnt[q]; i++) {
                    int64_t c = ids[i];
                    for (int64_t dy = 0; dy < 3; dy++) {
                        int64_t oy = y - dy + 1;
                        if (oy < 0 || oy >= H) continue;
                        for (int64_t dx = 0; dx < 3; dx++) {
                            int64_t ox = x - dx + 1;
                            if (ox < 0 || ox >= W) continue;
                            const float *w = weight + ((dy * 3 + dx) * K + c) * N;
                            float *o = ob + (oy * W + ox) * N;
                            int64_t j = 0;
                            for (; j + 8 <= N; j += 8) *(v8u *)(o + j) += *(const v8u *)(w + j);
                            for (; j < N; j++) o[j] += w[j];
                        }
                    }
                }
            }
        }
    }
}

/* Sum of weight rows ids[0:n] (row length N) plus bias into out[0:N], 64 channels at a time in registers. */
static inline void gather_row(const int32_t *ids, int32_t n, const float *w, const float *bias, float *out, int64_t N) {
    for (int64_t n0 = 0; n0 < N; n0 += 64) {
        int64_t width = N - n0 < 64 ? N - n0 : 64;
        v8 acc[8];
        float *accf = (float *)acc;
        for (int64_t j = 0; j < width; j++) accf[j] = bias ? bias[n0 + j] : 0.0f;
        switch (width) {
            case 64: acc_64(acc, w + n0, N, ids, n); break;
            case 32: acc_32(acc, w + n0, N, ids, n); break;
            case 16: acc_16(acc, w + n0, N, ids, n); break;
            case 8: acc_8(acc, w + n0, N, ids, n); break;
            default: acc_any(accf, w + n0, N, ids, n, width);
        }
        memcpy(out + n0, accf, width * sizeof(float));
    }
}

/* A spiking MLP, LIF -> linear (K -> H) -> LIF -> linear (H -> N), one position at a time: the hidden layer's
 * currents and potentials stay in this thread's scratch (cache) instead of making a round trip through memory.
 * u: [T', P, K] (T stride may be 0), out: [T, P, N]. lif parameters: {tau, threshold, reset} x 2, flags
 * {hard_reset, decay_input} x 2. counts: spikes in, spikes hidden (summed), and 1 where it stopped early because
 * the spikes passed max_spikes1 / max_spikes2 (the rates at which the layers run dense; out is then incomplete).
 * scratch per thread: K + 2 H floats and K + H int32. */
void spike_mlp(const float *u, int64_t t_stride, int64_t T, int64_t P, int64_t K, int64_t H, int64_t N,
               const float *lif1, const int32_t *flags1, const float *lif2, const int32_t *flags2,
               const float *w1t, const float *b1, const float *w2t, const float *b2, float *out,
               int64_t *counts, int64_t max_spikes1, int64_t max_spikes2, float *scratch, int nthreads) {
    int64_t spikes1 = 0, spikes2 = 0;
    int stop = 0;  /* a thread past its share of either budget stops every thread: the caller runs dense */
    int64_t per_thread = K + 2 * H + K + H;  /* floats: v1, hidden currents, v2; int32 ids1, ids2 (same size) */
#pragma omp parallel num_threads(nthreads) reduction(+:spikes1, spikes2)
    {
        int tid = thread_id();
        float *v1 = scratch + (int64_t)tid * per_thread, *hid = v1 + K, *v2 = hid + H;
        int32_t *ids1 = (int32_t *)(v2 + H), *ids2 = ids1 + K;
        const float r1 = flags1[0] ? lif1[2] : 0.0f, r2 = flags2[0] ? lif2[2] : 0.0f;
#pragma omp for schedule(static)
        for (int64_t p = 0; p < P; p++) {
            int halt;
#pragma omp atomic read
            halt = stop;
            if (halt) continue;
            for (int64_t k = 0; k < K; k++) v1[k] = r1;
            for (int64_t h = 0; h < H; h++) v2[h] = r2;
            for (int64_t t = 0; t < T; t++) {
                int32_t n1 = lif_row(u + t * t_stride + p * K, v1, K, lif1[0], lif1[1], lif1[2], flags1[0],
                                     flags1[1], ids1, 0);
                gather_row(ids1, n1, w1t, b1, hid, H);
                int32_t n2 = lif_row(hid, v2, H, lif2[0], lif2[1], lif2[2], flags2[0], flags2[1], ids2, 0);
                gather_row(ids2, n2, w2t, b2, out + (t * P + p) * N, N);
                spikes1 += n1;
                spikes2 += n2;
            }
            if (spikes1 * nthreads > max_spikes1 || spikes2 * nthreads > max_spikes2) {
#pragma omp atomic write
                stop = 1;
            }
        }
    }
    counts[0] = spikes1;
    counts[1] = spikes2;
    counts[2] = stop;
}
