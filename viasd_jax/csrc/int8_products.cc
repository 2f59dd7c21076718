// GGUF codes times activations quantized to int8 (`products="int8"`), llama.cpp's numerics.
//
// Each activation row is quantized per 32 activations, x ~= dx * xq with dx = max|x| / 127
// and xq = round(x / dx) in [-127, 127] (ties to even). Within a sub-block of codes the
// product is then a sum of integer products, which AVX-512 VNNI's vpdpbusd forms 64 byte
// pairs per instruction (unsigned codes against signed activations, exactly in int32),
// and the float32 scales come in once per sub-block:
//   Q4_K (32 weights, w = scale * code - min): dx * scale * sum(code xq) - min * dx * sum(xq)
//   Q6_K (16 weights, w = scale * (code - 32)): dx * scale * sum((code - 32) xq)
// The codes are transposed in registers, tile by tile, so that each int32 lane sums one
// whole sub-block and turns into a float once per sub-block (`transpose`). The float32
// path makes each weight and multiplies it in a float32 FMA; here 64 weights cost about
// one instruction, so decoding streams the codes instead of computing on them. Lossy
// against float32 products (the activations' rounding, about 1/254 of a block's largest
// value), but each output depends on its own row of x only, whatever the number of rows:
// verification still equals decoding.

#include <array>
#include <cmath>
#include <cstring>
#include <utility>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "common.h"

namespace viasd {
namespace {

constexpr int64_t kQuantBlock = 32;  // activations per int8 scale
constexpr int kLanes = 16;           // int32 / float32 lanes of a 64-byte vector

typedef int32_t Ints __attribute__((vector_size(64)));
typedef float Floats __attribute__((vector_size(64)));
typedef uint8_t Bytes __attribute__((vector_size(64)));

template <typename V, typename T>
inline V load(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// acc + the sum of each lane's 4 byte products u * s (u unsigned, s signed), exactly.
inline Ints dot4(Ints acc, Bytes u, Bytes s) {
#if defined(__AVX512VNNI__)
  return (Ints)_mm512_dpbusd_epi32((__m512i)acc, (__m512i)u, (__m512i)s);
#elif defined(__AVX512BW__)  // pairs into int16 (codes < 64 and |xq| <= 127: no saturation), then pairs of those
  const __m512i pairs = _mm512_maddubs_epi16((__m512i)u, (__m512i)s);
  return acc + (Ints)_mm512_madd_epi16(pairs, _mm512_set1_epi16(1));
#else
  for (int i = 0; i < kLanes; ++i)
    for (int b = 0; b < 4; ++b) acc[i] += int32_t(u[4 * i + b]) * int32_t(int8_t(s[4 * i + b]));
  return acc;
#endif
}

// acc + a * b lane by lane, one rounding (explicit, as in matvec.cc: no result may depend
// on whether the compiler contracted).
inline Floats fmadd(Floats a, Floats b, Floats acc) {
#if defined(__AVX512F__)
  return (Floats)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)acc);
#else
  for (int i = 0; i < kLanes; ++i) acc[i] = std::fma(a[i], b[i], acc[i]);
  return acc;
#endif
}

// Codes come in tiles of 16 sub-blocks, 256 code bytes: Q4_K 512 weights (two codes a
// byte), Q6_K 256. A tile is read as 4 vectors of 64 bytes, 4 sub-blocks each (16 bytes
// a sub-block, one per 128-bit lane), and transposed by dwords within each 128-bit lane
// so that each int32 lane of the 4 vectors sums one whole sub-block: lane L holds
// sub-block kLaneSub[L] = 4 (L % 4) + L / 4. Its integer sum then becomes a float once
// per sub-block, not once per 4 code bytes. A Q4_K row whose K is an odd number of 256s
// ends in a half tile, its missing sub-blocks zero.
constexpr int kTileSubs = 16;        // sub-blocks per tile, one per lane
constexpr int64_t kTileBytes = 256;  // code bytes per tile
template <bool Nibbles>
constexpr int64_t kTileWeights = Nibbles ? 512 : 256;
template <bool Nibbles>
constexpr int64_t kSubWeights = Nibbles ? 32 : 16;  // weights per scale
constexpr int kLaneSub[kTileSubs] = {0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15};

// x's rows quantized, laid out tile by tile to meet the transposed codes: per row and
// tile, `q` holds for each of the 4 code vectors v the activations its bytes meet, lane L
// bytes 4v to 4v + 3 of sub-block kLaneSub[L] (Q4_K: 128 bytes per v, first those of the
// low nibbles, activations 4v.. of the sub-block, then the high ones, 16 + 4v..; Q6_K: 64).
// `dx` per lane the scale of its sub-block's activations; for Q6_K `start` per lane -32
// times the sum of its sub-block's activations (codes are q + 32). For Q4_K `minus` holds
// each 32 activations' -dx * sum(xq), which times the sub-block's min is its min term.
struct Quantized {
  std::vector<int8_t> q;       // [M, tiles * 2 * kTileBytes (Q4_K) or kTileBytes (Q6_K)]
  std::vector<float> dx;       // [M, tiles * kTileSubs]
  std::vector<int32_t> start;  // as dx (Q6_K)
  std::vector<float> minus;    // [M, K / 32] (Q4_K)
  int64_t K, tiles, row_bytes;
};

// Activations x[0, 32) as int8 with one scale: returns dx, writes q[i] = round(x[i] / dx).
float quantize_block(const float* x, int8_t* q) {
  float amax = 0.f;
  for (int i = 0; i < kQuantBlock; ++i) amax = std::max(amax, std::fabs(x[i]));
  const float dx = amax / 127.f;
  for (int i = 0; i < kQuantBlock; ++i)
    q[i] = dx == 0.f ? 0 : int8_t(std::clamp(std::nearbyint(x[i] / dx), -127.f, 127.f));
  return dx;
}

// x [M, K] quantized for `Nibbles` codes, in a buffer of the calling thread (which waits
// for every chunk).
template <bool Nibbles>
const Quantized& quantize(const float* x, int64_t M, int64_t K) {
  thread_local Quantized out;
  thread_local std::vector<int8_t> row;  // one row's int8 activations in order
  thread_local std::vector<float> scales;
  constexpr int64_t sub = kSubWeights<Nibbles>;
  const int64_t subs = K / sub, lanes = (K + kTileWeights<Nibbles> - 1) / kTileWeights<Nibbles> * kTileSubs;
  out.K = K;
  out.tiles = lanes / kTileSubs;
  out.row_bytes = out.tiles * (Nibbles ? 2 : 1) * kTileBytes;
  out.q.assign(M * out.row_bytes, 0);
  out.dx.assign(M * lanes, 0.f);
  out.start.assign(Nibbles ? 0 : M * lanes, 0);
  out.minus.resize(Nibbles ? M * K / kQuantBlock : 0);
  row.resize(K);
  scales.resize(K / kQuantBlock);
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t j = 0; j < K / kQuantBlock; ++j) {
      scales[j] = quantize_block(x + m * K + j * kQuantBlock, row.data() + j * kQuantBlock);
      if constexpr (Nibbles) {
        int32_t sum = 0;
        for (int i = 0; i < kQuantBlock; ++i) sum += row[j * kQuantBlock + i];
        out.minus[m * (K / kQuantBlock) + j] = -(scales[j] * float(sum));
      }
    }
    for (int64_t lane = 0; lane < lanes; ++lane) {
      const int64_t t = lane / kTileSubs, L = lane % kTileSubs, s = t * kTileSubs + kLaneSub[L];
      if (s >= subs) continue;  // a half tile's missing sub-blocks stay zero
      const int8_t* a = row.data() + s * sub;
      int8_t* q = out.q.data() + m * out.row_bytes + t * (out.row_bytes / out.tiles) + 4 * L;
      out.dx[m * lanes + lane] = scales[s * sub / kQuantBlock];
      for (int v = 0; v < 4; ++v) {
        if constexpr (Nibbles) {
          std::memcpy(q + 128 * v, a + 4 * v, 4);
          std::memcpy(q + 128 * v + 64, a + 16 + 4 * v, 4);
        } else {
          std::memcpy(q + 64 * v, a + 4 * v, 4);
        }
      }
      if constexpr (!Nibbles) {
        int32_t sum = 0;
        for (int i = 0; i < sub; ++i) sum += a[i];
        out.start[m * lanes + lane] = -32 * sum;
      }
    }
  }
  return out;
}

// c[0..3] transposed by dwords within each 128-bit lane: dword s of lane j of c[v] becomes
// dword v of lane j of the result's c[s] (so the lanes of the 4 results run as kLaneSub).
inline void transpose(Bytes (&c)[4]) {
#if defined(__AVX512F__)
  const __m512i t0 = _mm512_unpacklo_epi32((__m512i)c[0], (__m512i)c[1]);
  const __m512i t1 = _mm512_unpackhi_epi32((__m512i)c[0], (__m512i)c[1]);
  const __m512i t2 = _mm512_unpacklo_epi32((__m512i)c[2], (__m512i)c[3]);
  const __m512i t3 = _mm512_unpackhi_epi32((__m512i)c[2], (__m512i)c[3]);
  c[0] = (Bytes)_mm512_unpacklo_epi64(t0, t2);
  c[1] = (Bytes)_mm512_unpackhi_epi64(t0, t2);
  c[2] = (Bytes)_mm512_unpacklo_epi64(t1, t3);
  c[3] = (Bytes)_mm512_unpackhi_epi64(t1, t3);
#else
  uint32_t in[4][kLanes], out[4][kLanes];
  std::memcpy(in, c, sizeof in);
  for (int v = 0; v < 4; ++v)
    for (int L = 0; L < kLanes; ++L) out[v][L] = in[L % 4][4 * (L / 4) + v];
  std::memcpy(c, out, sizeof out);
#endif
}

// The tile's `live` scales at p (16, or 8 in a half tile; the rest zero) in lane order kLaneSub.
inline Floats tile_scales(const float* p, int64_t live) {
#if defined(__AVX512F__)
  const __m512i order = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0);
  const __m512 v = _mm512_maskz_loadu_ps(__mmask16((1u << live) - 1), p);
  return (Floats)_mm512_permutexvar_ps(order, v);
#else
  Floats v;
  for (int L = 0; L < kLanes; ++L) v[L] = kLaneSub[L] < live ? p[kLaneSub[L]] : 0.f;
  return v;
#endif
}

// Adds the products of tiles [t0, t1) of code rows [n, n + R) with x rows [m0, m0 + M)
// into acc, lane by lane: each lane adds one sub-block per tile, in tile order, however
// many rows of x come along and however the tiles are split between calls.
template <bool Nibbles, int M, int R>
inline void accumulate(const Blocks& b, const Quantized& x, int64_t m0, Floats (&acc)[M][R], int64_t n, int64_t t0,
                       int64_t t1) {
  const int64_t row_bytes = Nibbles ? b.K / 2 : b.K, subs = b.K / kSubWeights<Nibbles>;
  const int64_t x_tile = x.row_bytes / x.tiles, lanes = x.tiles * kTileSubs;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t live = std::min<int64_t>(kTileSubs, subs - t * kTileSubs);
    Bytes lo[R][4], hi[R][4];
    Floats scale[R];
    for (int r = 0; r < R; ++r) {
      const uint8_t* c = b.codes + (n + r) * row_bytes + t * kTileBytes;
      Bytes v[4];
      for (int s = 0; s < 4; ++s) {
        __builtin_prefetch(c + 64 * s + 16384, 0, 2);  // 16 KB ahead, one line per vector
        v[s] = 4 * s < live ? load<Bytes>(c + 64 * s) : Bytes{};
      }
      transpose(v);
      const float* sc = b.scales + (n + r) * subs + t * kTileSubs;
      __builtin_prefetch(sc + 16384 / kTileBytes * kTileSubs, 0, 2);  // the scales of the tile 16 KB ahead
      scale[r] = tile_scales(sc, live);
      for (int s = 0; s < 4; ++s) {
        lo[r][s] = Nibbles ? v[s] & 15 : v[s];
        if constexpr (Nibbles) hi[r][s] = v[s] >> 4;
      }
    }
    Ints sums[M][R];
    for (int m = 0; m < M; ++m)
      for (int r = 0; r < R; ++r)
        sums[m][r] = Nibbles ? Ints{} : load<Ints>(x.start.data() + (m0 + m) * lanes + t * kTileSubs);
    for (int s = 0; s < 4; ++s)
      for (int m = 0; m < M; ++m) {
        const int8_t* q = x.q.data() + (m0 + m) * x.row_bytes + t * x_tile;
        if constexpr (Nibbles) {
          const Bytes q0 = load<Bytes>(q + 128 * s), q1 = load<Bytes>(q + 128 * s + 64);
          for (int r = 0; r < R; ++r) sums[m][r] = dot4(dot4(sums[m][r], lo[r][s], q0), hi[r][s], q1);
        } else {
          const Bytes q0 = load<Bytes>(q + 64 * s);
          for (int r = 0; r < R; ++r) sums[m][r] = dot4(sums[m][r], lo[r][s], q0);
        }
      }
    for (int m = 0; m < M; ++m) {
      const Floats dx = load<Floats>(x.dx.data() + (m0 + m) * lanes + t * kTileSubs);
      for (int r = 0; r < R; ++r)  // exact: |sums| < 2^24
        acc[m][r] = fmadd(__builtin_convertvector(sums[m][r], Floats), scale[r] * dx, acc[m][r]);
    }
  }
}

// y[m, n] from the lanes of acc (and, for Q4_K, the row's min terms, sum_j min_j minus_j).
template <bool Nibbles>
inline float finish(const Blocks& b, const Quantized& x, int64_t m, int64_t n, Floats acc) {
  float y = lane_sum(acc);
  if constexpr (Nibbles) {
    const int64_t J = b.K / kQuantBlock;
    const float *mins = b.mins + n * J, *minus = x.minus.data() + m * J;
    Floats terms = {};
    int64_t j = 0;
    for (; j + kLanes <= J; j += kLanes) terms = fmadd(load<Floats>(mins + j), load<Floats>(minus + j), terms);
    y += lane_sum(terms);
    for (; j < J; ++j) y = std::fma(mins[j], minus[j], y);
  }
  return y;
}

constexpr int64_t kBlockTiles = 4;  // tiles per K block of prefill: a group's x block stays in L1

// Rows [n0, n1) of the codes against x rows [m0, m0 + M): up to 9 rows (decoding,
// verification) along all of K per row block; more (prefill, bound by arithmetic) in K
// blocks over the whole chunk, so that the group's x block stays in L1 (the partial sums
// wait in `partial`, lane by lane, so each output adds the same values in the same order).
template <bool Nibbles, int M, int R>
void sweep(const Blocks& b, const Quantized& x, int64_t m0, float* y, int64_t N, int64_t n0, int64_t n1, bool blocked) {
  const int64_t T = x.tiles, block = blocked ? kBlockTiles : T;
  Floats partial[kChunkRows][M] = {};
  auto rows = [&](auto width, int64_t n, int64_t t0, int64_t t1) {
    constexpr int RR = decltype(width)::value;
    Floats acc[M][RR];
    for (int m = 0; m < M; ++m)
      for (int r = 0; r < RR; ++r) acc[m][r] = partial[n + r - n0][m];
    accumulate<Nibbles, M, RR>(b, x, m0, acc, n, t0, t1);
    for (int m = 0; m < M; ++m)
      for (int r = 0; r < RR; ++r) partial[n + r - n0][m] = acc[m][r];
  };
  for (int64_t t0 = 0; t0 < T; t0 += block) {
    const int64_t t1 = std::min(T, t0 + block);
    int64_t n = n0;
    for (; n + R <= n1; n += R) rows(std::integral_constant<int, R>{}, n, t0, t1);
    for (; n < n1; ++n) rows(std::integral_constant<int, 1>{}, n, t0, t1);
  }
  for (int64_t n = n0; n < n1; ++n)
    for (int m = 0; m < M; ++m) y[(m0 + m) * N + n] = finish<Nibbles>(b, x, m0 + m, n, partial[n - n0][m]);
}

// Rows of codes per tile for M rows of x (decoding, verification): M * R int32 sums and
// the R rows' codes within AVX-512's 32 registers.
constexpr int rows_per_step(int m) { return m == 1 ? 4 : m <= 3 ? 3 : 2; }

// Prefill's groups: rows of x, and rows of codes per tile (timed at 64 rows on Zen 4:
// Q4_K's codes cost unpacking and transposing per row of codes, so fewer rows of x share
// more rows of codes).
template <bool Nibbles>
constexpr int kPrefillRows = Nibbles ? 6 : 4;
template <bool Nibbles>
constexpr int kPrefillStep = Nibbles ? 3 : 4;

using SweepFn = void (*)(const Blocks&, const Quantized&, int64_t, float*, int64_t, int64_t, int64_t, bool);

template <bool Nibbles, int... Ms>
constexpr std::array<SweepFn, sizeof...(Ms)> sweeps(std::integer_sequence<int, Ms...>) {
  return {&sweep<Nibbles, Ms + 1, rows_per_step(Ms + 1)>...};
}

// Up to 9 rows of x in one group; more (prefill) in groups of kPrefillRows, each against
// every chunk of the codes (a chunk stays in cache between groups). Whatever the groups,
// each output adds the same terms in the same order.
template <bool Nibbles>
void run(xla::ffi::ThreadPool& pool, const Blocks& b, const float* x, float* y, int64_t M, int64_t N) {
  static constexpr auto table = sweeps<Nibbles>(std::make_integer_sequence<int, 9>{});
  constexpr int G = kPrefillRows<Nibbles>;
  const Quantized& xq = quantize<Nibbles>(x, M, b.K);
  parallel_chunks(pool, N, [&b, &xq, y, M, N](int64_t n0, int64_t n1) {
    int64_t m = 0;
    if (M > 9)
      for (; m + G <= M; m += G) sweep<Nibbles, G, kPrefillStep<Nibbles>>(b, xq, m, y, N, n0, n1, true);
    for (; m < M; m += 9) table[std::min<int64_t>(M - m, 9) - 1](b, xq, m, y, N, n0, n1, M > 9);
  });
}

}  // namespace

void blocks_times_int8(xla::ffi::ThreadPool& pool, const Blocks& b, bool nibbles, const float* x, float* y, int64_t M,
                       int64_t N) {
  if (nibbles)
    run<true>(pool, b, x, y, M, N);
  else
    run<false>(pool, b, x, y, M, N);
}

}  // namespace viasd
