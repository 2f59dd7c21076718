// Matrix times a few vectors for CPU decoding: y[M, N] = x[M, K] . W[layer][N, K]^T.
//
// Decoding multiplies 1-16 activation rows by every weight matrix, so its speed is
// the speed of streaming the weights from memory. W is output-major (each output's K
// weights contiguous, as PyTorch stores nn.Linear) and stacked over layers; the layer
// is a runtime operand, so a kernel inside lax.scan reads the stacked weights in place
// instead of receiving a sliced copy. Rows of W are split across XLA's intra-op thread
// pool; each block of R rows is read once from memory and multiplied by up to 9 x rows
// held in registers (more rows: again, from cache, prefill's in K blocks).
// Weights may be float32 or bfloat16, activations float32 (bfloat16 weights are then
// widened in registers) or, with bfloat16 weights, bfloat16: those pairs take AVX-512
// BF16's dot-product instruction (twice the multiply-adds per instruction of float32
// FMAs, no widening) where the compiler targets it. Accumulation is float32 throughout.
// int8 weights (weight-only quantization, one float32 scale per output row) are widened
// to float32 in registers against float32 activations and scaled once per output.
// GGUF k-quant matrices multiply from their 4- or 6-bit codes (`matvec_blocks`), exactly
// as their dequantized float32 weights would.
// bfloat16 activations against float32 weights or codes (the `products="bfloat16"` option
// of prefill) round each chunk of weight rows to bfloat16 and take the dot-product path,
// or AMX tiles where the CPU has them (`amx_bf16.cc`). With `along_k` (`products="float32"`,
// prefill's rows only), float32 weights or codes against float32 x sum each output along
// k in one lane (`FloatsBlock`): the cores' FMA rate, in another order than decoding's.
// The library also looks up rows of 16-bit embedding tables (`take_rows`, at the end).

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include "common.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using viasd::Blocks;
using viasd::kChunkRows;
using viasd::lane_sum;
using viasd::parallel_chunks;

namespace {

// A Vec is one vector register: 16 floats with AVX-512, else 8 (AVX2). Wider generic
// vectors than the registers made GCC keep the accumulators in memory, shuffling
// halves on every step (5 float32 rows then took 3-4x one row's time).
#if defined(__AVX512F__)
constexpr int kLanes = 16;
#else
constexpr int kLanes = 8;
#endif
// Software prefetch: 16 KB ahead (elements), into L2. Nearer or into L1 (1 KB ahead
// with the non-temporal hint, the first version) the hardware's loads still waited on
// memory whenever the loop did more than stream: int8 rows ran at half float32's bytes
// per second, and 5-9 float32 rows took 1.5x one row's time (docs/performance.md).
template <typename T>
constexpr int64_t kPrefetch = 16384 / sizeof(T);
typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));
typedef uint16_t Half __attribute__((vector_size(kLanes * sizeof(uint16_t))));
typedef uint32_t Bits __attribute__((vector_size(kLanes * sizeof(uint32_t))));

inline Vec load(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline Vec load(const uint16_t* p) {  // bfloat16 bits are the top half of a float32
  Half h;
  std::memcpy(&h, p, sizeof h);
  Bits b = __builtin_convertvector(h, Bits) << 16;
  Vec v;
  std::memcpy(&v, &b, sizeof v);
  return v;
}

inline Vec load(const int8_t* p) {  // int8 -> float32 is exact
#if defined(__AVX512F__)
  // GCC scalarizes __builtin_convertvector from 16 bytes (one conversion per lane)
  const __m512 f = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  Vec v;
  std::memcpy(&v, &f, sizeof v);
  return v;
#else
  Vec v;
  for (int i = 0; i < kLanes; ++i) v[i] = p[i];
  return v;
#endif
}

inline float widen(float w) { return w; }
inline float widen(int8_t w) { return w; }
inline float widen(uint16_t w) {
  uint32_t b = uint32_t(w) << 16;
  float f;
  std::memcpy(&f, &b, sizeof f);
  return f;
}

// acc + a * b with one rounding, lane by lane. Explicit: GCC contracts `acc += a * b` into
// an FMA in some template instances and not in others (seen on AVX2 for one-row blocks),
// and a row's result must not depend on which instance computed it.
inline Vec madd(Vec acc, Vec a, Vec b) {
#if defined(__AVX512F__)
  return (Vec)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)acc);
#elif defined(__AVX2__) && defined(__FMA__)
  return (Vec)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)acc);
#else
  for (int i = 0; i < kLanes; ++i) acc[i] = std::fma(a[i], b[i], acc[i]);
  return acc;
#endif
}

// bfloat16 weights are read 2 * kLanes at a time as kLanes 32-bit words: word i holds
// elements 2i (low half) and 2i + 1 (high half), so a shift and a mask widen them to
// float32 without shuffles (converting lane by lane costs several shuffles per vector,
// which made bfloat16 stream slower than float32). The x rows are pre-split to match: each
// block of 2 * kLanes holds its even elements, then its odd ones (see `split_pairs`).
inline void load_pairs(const uint16_t* p, Vec& even, Vec& odd) {
  Bits b;
  std::memcpy(&b, p, sizeof b);
  const Bits lo = b << 16, hi = b & 0xFFFF0000u;
  std::memcpy(&even, &lo, sizeof even);
  std::memcpy(&odd, &hi, sizeof odd);
}

#if defined(__AVX512BF16__)
// 2 * kLanes weights as bfloat16, for the dot-product path: bfloat16 as they lie, int8
// converted exactly (8-bit integers fit bfloat16's 8-bit significand).
inline __m512bh load_bf16(const uint16_t* p) {
  __m512bh v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline __m512bh load_bf16(const int8_t* p) {
  const __m512 lo = load(p), hi = load(p + kLanes);
  return _mm512_cvtne2ps_pbh(hi, lo);  // lo fills the low half
}
#endif

// k per vector step: 2 * kLanes where weights or activations are bfloat16 (bfloat16
// pairs), else kLanes.
template <typename T, typename X>
constexpr int64_t kStep = std::is_same_v<T, uint16_t> || std::is_same_v<X, uint16_t> ? 2 * kLanes : kLanes;

// Adds x[m, k] * w[n + r, k] over k in [k0, k1) (whole vector steps) into acc[m][r], lane
// by lane. For bfloat16 weights and float32 `x`, `x` is in `split_pairs` order.
template <int M, int R, typename T, typename X>
inline void accumulate(const T* w, const X* x, Vec (&acc)[M][R], int64_t K, int64_t n, int64_t k0, int64_t k1) {
  for (int64_t k = k0; k < k1; k += kStep<T, X>) {
    // Several x rows (or widening bfloat16 or int8 weights) make this loop busy enough
    // that the hardware prefetcher alone falls behind; one float32 row is pure streaming.
    // One prefetch per 64-byte line: int8 steps cover 16 or 32 bytes of a row.
    constexpr int64_t kLineStep = 64 / sizeof(T) > kStep<T, X> ? 64 / sizeof(T) / kStep<T, X> : 1;
    if constexpr (M > 1 || !std::is_same_v<T, float>)
      if (kLineStep == 1 || (k / kStep<T, X>) % kLineStep == 0)
        for (int r = 0; r < R; ++r) __builtin_prefetch(w + (n + r) * K + k + kPrefetch<T>, 0, 2);
    if constexpr (std::is_same_v<X, uint16_t>) {
#if defined(__AVX512BF16__)
      __m512bh wv[R];  // 2 * kLanes bfloat16 each: dpbf16 multiplies pairs and adds both to a float32 lane
      for (int r = 0; r < R; ++r) wv[r] = load_bf16(w + (n + r) * K + k);
      for (int m = 0; m < M; ++m) {
        __m512bh xv;
        std::memcpy(&xv, x + m * K + k, sizeof xv);
        for (int r = 0; r < R; ++r) acc[m][r] = _mm512_dpbf16_ps(acc[m][r], wv[r], xv);
      }
#else
      static_assert(!std::is_same_v<X, uint16_t>, "bfloat16 x needs AVX-512 BF16: callers widen it first");
#endif
    } else if constexpr (std::is_same_v<T, uint16_t>) {
      Vec even[R], odd[R];
      for (int r = 0; r < R; ++r) load_pairs(w + (n + r) * K + k, even[r], odd[r]);
      for (int m = 0; m < M; ++m) {
        const Vec xe = load(x + m * K + k), xo = load(x + m * K + k + kLanes);
        for (int r = 0; r < R; ++r) acc[m][r] = madd(madd(acc[m][r], even[r], xe), odd[r], xo);
      }
    } else {
      Vec wv[R];
      for (int r = 0; r < R; ++r) wv[r] = load(w + (n + r) * K + k);
      for (int m = 0; m < M; ++m) {
        const Vec xv = load(x + m * K + k);
        for (int r = 0; r < R; ++r) acc[m][r] = madd(acc[m][r], wv[r], xv);
      }
    }
  }
}

template <typename T, typename X>
int64_t vector_part(int64_t K) { return K - K % kStep<T, X>; }

// y[m, n + r] from the lane sums of acc[m][r] and the k past the last whole vector step.
template <int M, int R, typename T, typename X>
inline void finish(const T* w, const X* x, const Vec (&acc)[M][R], float* y, int64_t K, int64_t N, int64_t n) {
  for (int m = 0; m < M; ++m)
    for (int r = 0; r < R; ++r) {
      float s = lane_sum(acc[m][r]);
      for (int64_t k = vector_part<T, X>(K); k < K; ++k) s = std::fma(widen(x[m * K + k]), widen(w[(n + r) * K + k]), s);
      y[m * N + n + r] = s;
    }
}

// Rows [n, n + R) of W times activation rows [0, M): y[m, n + r] = sum_k x[m, k] w[n + r, k].
template <int M, int R, typename T, typename X>
void row_block(const T* w, const X* x, float* y, int64_t K, int64_t N, int64_t n) {
  Vec acc[M][R] = {};
  accumulate<M, R>(w, x, acc, K, n, 0, vector_part<T, X>(K));
  finish<M, R>(w, x, acc, y, K, N, n);
}

// Activation rows [0, M) against rows [n0, n1) of W, R rows of W at a time.
template <int M, int R, typename T, typename X>
void sweep(const T* w, const X* x, float* y, int64_t K, int64_t N, int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + R <= n1; n += R) row_block<M, R>(w, x, y, K, N, n);
  for (; n < n1; ++n) row_block<M, 1>(w, x, y, K, N, n);
}

constexpr int64_t kBlockBytes = 2048;  // of each x row per K block: a group's block stays in L1

// As `row_block`, but accumulating k in [k0, k1) onto partial sums kept in `partial`
// ([row - n0][m] vectors) between calls.
template <int M, int R, typename T, typename X>
void row_block_part(const T* w, const X* x, Vec* partial, int64_t K, int64_t n, int64_t n0, int64_t k0, int64_t k1) {
  Vec acc[M][R];
  for (int m = 0; m < M; ++m)
    for (int r = 0; r < R; ++r) acc[m][r] = partial[(n + r - n0) * M + m];
  accumulate<M, R>(w, x, acc, K, n, k0, k1);
  for (int m = 0; m < M; ++m)
    for (int r = 0; r < R; ++r) partial[(n + r - n0) * M + m] = acc[m][r];
}

// `sweep` for prefill's many activation rows, where multiply-adds rather than memory
// bound the time: walking all of K per block of W rows re-read the group's whole x
// rows from L2 at every step. Here K is walked in blocks, all rows of the chunk per
// block, so the group's x block stays in L1 (1.10x on the 1.5B's prefill). The
// partial sums stay vectors between blocks, so every output adds the same products in
// the same order as `row_block` does: a row's result does not depend on how many rows
// share the call.
template <int M, int R, typename T, typename X>
void sweep_blocked(const T* w, const X* x, float* y, int64_t K, int64_t N, int64_t n0, int64_t n1) {
  Vec partial[kChunkRows * M] = {};
  constexpr int64_t block = kBlockBytes / sizeof(X) / kStep<T, X> * kStep<T, X>;
  const int64_t k_vec = vector_part<T, X>(K);
  for (int64_t k0 = 0; k0 < k_vec; k0 += block) {
    const int64_t k1 = std::min(k_vec, k0 + block);
    int64_t n = n0;
    for (; n + R <= n1; n += R) row_block_part<M, R>(w, x, partial, K, n, n0, k0, k1);
    for (; n < n1; ++n) row_block_part<M, 1>(w, x, partial, K, n, n0, k0, k1);
  }
  for (int64_t n = n0; n < n1; ++n) {
    Vec acc[M][1];
    for (int m = 0; m < M; ++m) acc[m][0] = partial[(n - n0) * M + m];
    finish<M, 1>(w, x, acc, y, K, N, n);
  }
}

// Rows of W per step for a group of m activation rows: m * R accumulators, R weight
// vectors (two each for widened bfloat16) and the x vectors must fit AVX-512's 32
// registers. One vector per W row: 4 rows up to 6 activation rows, then 3; widened
// bfloat16: 4 up to 2, 3 up to 5, then 2.
// One Vec per register, so AVX-512's 32 registers hold more accumulators than AVX2's 16:
// m * R + R + 1 Vecs (widened bfloat16: m * R + 2 R + 2) must fit.
template <typename T, typename X>
constexpr int rows_per_step(int m) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, uint16_t> && std::is_same_v<X, float>) return m <= 2 ? 4 : m <= 5 ? 3 : 2;
  return m <= 6 ? 4 : 3;
#else
  if constexpr (std::is_same_v<T, uint16_t> && std::is_same_v<X, float>) return m <= 1 ? 4 : m <= 2 ? 3 : m <= 5 ? 2 : 1;
  return m <= 2 ? 4 : m <= 4 ? 3 : m <= 6 ? 2 : 1;
#endif
}

template <typename T, typename X>
using SweepFn = void (*)(const T*, const X*, float*, int64_t, int64_t, int64_t, int64_t);

// sweep<m, rows_per_step(m)> (or sweep_blocked) for m = 1..9, indexed by m - 1.
template <typename T, typename X, bool Blocked, int... Ms>
constexpr std::array<SweepFn<T, X>, sizeof...(Ms)> sweep_table(std::integer_sequence<int, Ms...>) {
  if constexpr (Blocked) return {&sweep_blocked<Ms + 1, rows_per_step<T, X>(Ms + 1), T, X>...};
  return {&sweep<Ms + 1, rows_per_step<T, X>(Ms + 1), T, X>...};
}

// A group of 1 to 9 activation rows against rows [n0, n1) of W (`blocked`: see `sweep_blocked`).
template <typename T, typename X>
void group(const T* w, const X* x, float* y, int64_t G, int64_t K, int64_t N, int64_t n0, int64_t n1, bool blocked) {
  static constexpr auto direct = sweep_table<T, X, false>(std::make_integer_sequence<int, 9>{});
  static constexpr auto in_blocks = sweep_table<T, X, true>(std::make_integer_sequence<int, 9>{});
  (blocked ? in_blocks : direct)[G - 1](w, x, y, K, N, n0, n1);
}

// All M activation rows against rows [n0, n1) of W, in groups of at most 9 (a chunk's
// rows of W stay in cache between groups). Up to 9 rows (decoding, verification) stream
// W once along all of K; more (prefill) take the K blocks of `sweep_blocked`.
template <typename T, typename X>
void rows(const T* w, const X* x, float* y, int64_t M, int64_t K, int64_t N, int64_t n0, int64_t n1) {
  const bool blocked = M > 9;
  for (int64_t m = 0; m < M; m += 9)
    group(w, x + m * K, y + m * N, std::min<int64_t>(M - m, 9), K, N, n0, n1, blocked);
}

// x rows with each full block of 2 * kLanes reordered to its even elements, then its
// odd ones (the order `load_pairs` widens bfloat16 weights in); the tail stays as is.
const float* split_pairs(const float* x, int64_t M, int64_t K) {
  thread_local std::vector<float> buf;  // the calling thread waits for every chunk
  buf.resize(M * K);
  const int64_t k_vec = K - K % (2 * kLanes);
  for (int64_t m = 0; m < M; ++m) {
    const float* src = x + m * K;
    float* dst = buf.data() + m * K;
    for (int64_t k = 0; k < k_vec; k += 2 * kLanes)
      for (int i = 0; i < kLanes; ++i) dst[k + i] = src[k + 2 * i], dst[k + kLanes + i] = src[k + 2 * i + 1];
    std::memcpy(dst + k_vec, src + k_vec, (K - k_vec) * sizeof(float));
  }
  return buf.data();
}

#if !defined(__AVX512BF16__)
// bfloat16 activations as float32 (exact), for compilers without AVX-512 BF16: they
// then take the widening path.
const float* widened(const uint16_t* x, int64_t size) {
  thread_local std::vector<float> buf;
  buf.resize(size);
  for (int64_t i = 0; i < size; ++i) buf[i] = widen(x[i]);
  return buf.data();
}
#endif

// Rows of int8 weights as bfloat16 (exact), in a buffer of the calling thread.
const uint16_t* as_bf16(const int8_t* q, int64_t size) {
  thread_local std::vector<uint16_t> buf;  // one chunk at a time per thread
  buf.resize(size);
  for (int64_t i = 0; i < size; ++i) {
    const float f = q[i];
    uint32_t b;
    std::memcpy(&b, &f, sizeof b);
    buf[i] = uint16_t(b >> 16);  // exact: an 8-bit integer's low mantissa bits are zero
  }
  return buf.data();
}

// float32 as bfloat16, rounded to nearest (ties to even), subnormals to zero: what
// AVX-512 BF16's conversion gives, so a row's tail agrees with its vector part.
inline uint16_t to_bf16(float f) {
  uint32_t b;
  std::memcpy(&b, &f, sizeof b);
  if ((b & 0x7F800000u) == 0) return uint16_t((b >> 16) & 0x8000u);
  return uint16_t((b + 0x7FFFu + ((b >> 16) & 1u)) >> 16);
}

// Rows of float32 weights rounded to bfloat16, in a buffer of the calling thread (the
// `products="bfloat16"` path: prefill's compute-bound chunks at the dot-product rate).
const uint16_t* rounded_bf16(const float* w, int64_t size) {
  thread_local std::vector<uint16_t> buf;  // one chunk at a time per thread
  buf.resize(size);
  int64_t i = 0;
#if defined(__AVX512BF16__)
  for (; i + 2 * kLanes <= size; i += 2 * kLanes) {
    const __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(w + i + kLanes), _mm512_loadu_ps(w + i));
    std::memcpy(buf.data() + i, &v, sizeof v);
  }
#endif
  for (; i < size; ++i) buf[i] = to_bf16(w[i]);
  return buf.data();
}

// `rows` for one chunk. int8 weights against bfloat16 activations convert each weight in
// registers for up to 9 rows; for more (prefill) the chunk is converted once and takes
// the bfloat16 path, which adds the same products in the same order. (float32 weights
// against bfloat16 activations, `products="bfloat16"`, take `run_pairs` instead.)
template <typename T, typename X>
void chunk_rows(const T* w, const X* x, float* y, int64_t M, int64_t K, int64_t N, int64_t n0, int64_t n1) {
  if constexpr (std::is_same_v<T, int8_t> && std::is_same_v<X, uint16_t>)
    if (M > 9) return rows(as_bf16(w + n0 * K, (n1 - n0) * K), x, y + n0, M, K, N, 0, n1 - n0);
  rows(w, x, y, M, K, N, n0, n1);
}

// y[m, n] *= scale[n] for rows [n0, n1) (int8 weights, once each output is summed).
inline void apply_scale(const float* scale, float* y, int64_t M, int64_t N, int64_t n0, int64_t n1) {
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = n0; n < n1; ++n) y[m * N + n] *= scale[n];
}

#if defined(__AVX512F__)
// ---- prefill's products with every lane one output ----
// The dot-product sweeps above sum each output along k in 16 lanes, then add the lanes;
// with prefill's many rows those lane sums and the partial sums kept between K blocks
// cost about as much as the products (the bfloat16 sweeps reached 61% of oneDNN's rate,
// float32 about numpy's BLAS rate, on an AMD EPYC). Here x is laid out once per
// call with 16 rows per vector, and each element (float32) or pair (bfloat16) of a W
// row is broadcast against them: every lane is one output, summed along k in order with
// no lane sums. A row's result depends only on its own x and W, whatever M; for float32
// it is another order than decoding's (`products="float32"`, prefill only).

// x [M, K] by lanes: word (s, m) = step s of row m in `words [S][Mp]` (Mp = M rounded up
// to 16 with zero rows): a float32 x[m, s] (S = K), or a bfloat16 pair (x[m, 2s],
// x[m, 2s + 1]) (S = ceil(K / 2); an odd K's last pair has a zero high half).
struct LanesX {
  const uint32_t* words;
  int64_t M, Mp, K;
};

inline __m512i lane_times(int64_t stride) {
  return _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                            _mm512_set1_epi32(int32_t(stride)));
}

inline __mmask16 first_lanes(int64_t n) { return n >= kLanes ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1); }

// Gathers `steps` words of every row, `bytes_per_step` apart within a row of `row_bytes`,
// into a buffer of `steps + extra` steps (the caller fills the extra ones).
uint32_t* lanes_of(const void* x, int64_t M, int64_t steps, int64_t row_bytes, int64_t bytes_per_step,
                   int64_t extra = 0) {
  thread_local std::vector<uint32_t> buf;  // the calling thread waits for every chunk
  const int64_t Mp = (M + kLanes - 1) / kLanes * kLanes;
  buf.resize((steps + extra) * Mp);
  const __m512i down = lane_times(row_bytes);
  const char* base = static_cast<const char*>(x);
  for (int64_t m0 = 0; m0 < Mp; m0 += kLanes) {
    const __mmask16 live = first_lanes(M - m0);
    for (int64_t s = 0; s < steps; ++s)
      _mm512_storeu_si512(buf.data() + s * Mp + m0, _mm512_mask_i32gather_epi32(
          _mm512_setzero_si512(), live, down, base + m0 * row_bytes + s * bytes_per_step, 1));
  }
  return buf.data();
}

LanesX floats_of(const float* x, int64_t M, int64_t K) {
  return {lanes_of(x, M, K, 4 * K, 4), M, (M + kLanes - 1) / kLanes * kLanes, K};
}

// tile[(n + r) * Mp + m] for R rows of W (float32, row-major, K each) from row n and V
// vectors of x rows from m0: FMAs along k, in blocks of kSumBlock whose sums are then
// added up (one running sum over all of K rounds far more often than the dot-product
// path's 16 partial sums; in blocks, its accuracy: tests/test_layout.py).
constexpr int64_t kSumBlock = 128;

template <int R, int V>
struct FloatsBlock {
  static void run(const float* w, const LanesX& x, float* tile, int64_t n, int64_t m0) {
    const int64_t K = x.K;
    const float* wr = w + n * K;
    float* out[R][V];
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < V; ++v) out[r][v] = tile + (n + r) * x.Mp + m0 + v * kLanes;
    for (int64_t k0 = 0; k0 < K; k0 += kSumBlock) {
      __m512 acc[R][V];
      for (int r = 0; r < R; ++r)
        for (int v = 0; v < V; ++v) acc[r][v] = _mm512_setzero_ps();
      const uint32_t* xp = x.words + k0 * x.Mp + m0;
      for (int64_t k = k0; k < std::min(K, k0 + kSumBlock); ++k, xp += x.Mp) {
        __m512 xv[V];
        for (int v = 0; v < V; ++v) xv[v] = _mm512_loadu_ps(xp + v * kLanes);
        for (int r = 0; r < R; ++r) {
          const __m512 wb = _mm512_set1_ps(wr[r * K + k]);
          for (int v = 0; v < V; ++v) acc[r][v] = _mm512_fmadd_ps(wb, xv[v], acc[r][v]);
        }
      }
      for (int r = 0; r < R; ++r)  // the tile holds the running sums of the blocks
        for (int v = 0; v < V; ++v)
          _mm512_storeu_ps(out[r][v], k0 ? _mm512_add_ps(_mm512_loadu_ps(out[r][v]), acc[r][v]) : acc[r][v]);
    }
  }
};

#if defined(__AVX512BF16__)
LanesX pairs_of(const uint16_t* x, int64_t M, int64_t K) {
  const int64_t Mp = (M + kLanes - 1) / kLanes * kLanes;
  uint32_t* words = lanes_of(x, M, K / 2, 2 * K, 4, K % 2);
  if (K % 2)  // the last pair: the last element and a zero
    for (int64_t m = 0; m < Mp; ++m) words[(K / 2) * Mp + m] = m < M ? x[m * K + K - 1] : 0u;
  return {words, M, Mp, K};
}

// As `FloatsBlock` for bfloat16 W and x pairs: one `vdpbf16ps` per pair.
template <int R, int V>
struct PairsBlock {
  static void run(const uint16_t* w, const LanesX& x, float* tile, int64_t n, int64_t m0) {
    __m512 acc[R][V];
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < V; ++v) acc[r][v] = _mm512_setzero_ps();
    const int64_t K = x.K, full = K / 2;
    const uint32_t* xp = x.words + m0;
    const uint16_t* wr = w + n * K;
    auto step = [&](auto pair_of_row) {
      __m512bh xv[V];
      for (int v = 0; v < V; ++v) std::memcpy(&xv[v], xp + v * kLanes, sizeof xv[v]);
      for (int r = 0; r < R; ++r) {
        const __m512bh wb = (__m512bh)_mm512_set1_epi32(pair_of_row(r));
        for (int v = 0; v < V; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], wb, xv[v]);
      }
    };
    for (int64_t p = 0; p < full; ++p, xp += x.Mp)
      step([&](int r) {
        int32_t pair;
        std::memcpy(&pair, wr + r * K + 2 * p, sizeof pair);
        return pair;
      });
    if (K % 2) step([&](int r) { return int32_t(wr[r * K + K - 1]); });  // high half zero, as in x
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < V; ++v) _mm512_storeu_ps(tile + (n + r) * x.Mp + m0 + v * kLanes, acc[r][v]);
  }
};
#endif

constexpr int kLaneRows = 6;  // rows of W per block: 6 x 4 accumulators, 4 x vectors and a broadcast
constexpr int kLaneVecs = 4;  // vectors of 16 x rows per block

template <template <int, int> class Block, typename W, int V, int... Rs>
constexpr auto block_table(std::integer_sequence<int, Rs...>) {
  return std::array<void (*)(const W*, const LanesX&, float*, int64_t, int64_t), sizeof...(Rs)>{
      &Block<Rs + 1, V>::run...};
}

// y[m, j] for the `rows` rows of W at `w` (y at their first column) and every row of x.
// The blocks write a tile ([row][m], contiguous) that is copied into y after: y's rows
// are N floats apart, and writing 16 of them per vector thrashes L1 when N is a power of two.
template <template <int, int> class Block, typename W>
void lanes_rows(const W* w, const LanesX& x, float* y, int64_t N, int64_t rows) {
  constexpr auto seq = std::make_integer_sequence<int, kLaneRows>{};
  static constexpr auto t1 = block_table<Block, W, 1>(seq);
  static constexpr auto t2 = block_table<Block, W, 2>(seq);
  static constexpr auto t3 = block_table<Block, W, 3>(seq);
  static constexpr auto t4 = block_table<Block, W, 4>(seq);
  thread_local std::vector<float> tile;
  tile.resize(rows * x.Mp);
  for (int64_t m0 = 0; m0 < x.Mp; m0 += kLaneVecs * kLanes) {
    const int64_t vecs = std::min<int64_t>((x.Mp - m0) / kLanes, kLaneVecs);
    const auto& table = vecs == 4 ? t4 : vecs == 3 ? t3 : vecs == 2 ? t2 : t1;
    for (int64_t n = 0; n < rows; n += kLaneRows) table[std::min<int64_t>(rows - n, kLaneRows) - 1](w, x, tile.data(), n, m0);
  }
  for (int64_t m = 0; m < x.M; ++m)
    for (int64_t j = 0; j < rows; ++j) y[m * N + j] = tile[j * x.Mp + m];
}

// x against W's rows, `chunk(n0, n1)` giving rows [n0, n1) of W as a row-major buffer
// (float32 for `FloatsBlock`, bfloat16 for `PairsBlock`: rounded or converted per chunk);
// `scale` as in `run`.
template <template <int, int> class Block, typename Chunk>
void run_lanes(ffi::ThreadPool& pool, Chunk chunk, const LanesX& x, float* y, int64_t N, const float* scale = nullptr) {
  parallel_chunks(pool, N, [&chunk, &x, y, N, scale](int64_t n0, int64_t n1) {
    lanes_rows<Block>(chunk(n0, n1), x, y + n0, N, n1 - n0);
    if (scale) apply_scale(scale, y, x.M, N, n0, n1);
  });
}

#if defined(__AVX512BF16__)
// bfloat16 x [M, K] against W's rows as bfloat16 (`products="bfloat16"` without AMX).
template <typename Chunk>
void run_pairs(ffi::ThreadPool& pool, Chunk chunk, const uint16_t* x, float* y, int64_t M, int64_t K, int64_t N,
               const float* scale = nullptr) {
  run_lanes<PairsBlock>(pool, chunk, pairs_of(x, M, K), y, N, scale);
}
#endif
#endif

#if !defined(__AVX512BF16__)
// bfloat16 x [M, K] against W's rows as bfloat16 (`chunk(n0, n1)`, rounded or converted
// per chunk) where the build has no bfloat16 dot product: both operands widened to float32
// (exactly) and multiplied in float32 FMAs, whose products of two bfloat16 are exact. The
// same operands as `run_pairs` of an AVX-512 BF16 build, summed in this build's order.
template <typename Chunk>
void run_pairs(ffi::ThreadPool& pool, Chunk chunk, const uint16_t* x, float* y, int64_t M, int64_t K, int64_t N,
               const float* scale = nullptr) {
  const float* xs = split_pairs(widened(x, M * K), M, K);  // two buffers of the calling thread
  parallel_chunks(pool, N, [&chunk, xs, y, M, K, N, scale](int64_t n0, int64_t n1) {
    rows(chunk(n0, n1), xs, y + n0, M, K, N, 0, n1 - n0);
    if (scale) apply_scale(scale, y, M, N, n0, n1);
  });
}
#endif

// bfloat16 x against float32 or int8 W on AMX tiles (`amx_bf16.cc`), whatever M: the
// `products="bfloat16"` path of prefill where `viasd::amx_bf16_available()`.
// `row(n)` gives W's row n (float32 or int8, K weights).
template <typename Row>
void run_amx(ffi::ThreadPool& pool, Row row, const uint16_t* x, float* y, int64_t M, int64_t K, int64_t N,
             const float* scale = nullptr) {
  const viasd::AmxX xt = viasd::amx_packed_x(x, M, K);
  parallel_chunks(pool, N, [&row, &xt, y, M, K, N, scale](int64_t n0, int64_t n1) {
    const viasd::AmxW a = viasd::amx_chunk(K, n1 - n0);
    for (int64_t n = n0; n < n1; ++n) viasd::amx_put_row(a, n - n0, row(n));
    viasd::amx_bf16_rows(xt, a, n1 - n0, y + n0, N);
    if (scale) apply_scale(scale, y, M, N, n0, n1);
  }, viasd::kAmxRows);
}

// W's row n where W lies in memory as `w [N, K]`.
template <typename T>
auto rows_of(const T* w, int64_t K) {
  return [w, K](int64_t n) { return w + n * K; };
}

// `scale` (int8 weights; else null): y[m, n] *= scale[n] once each output is summed.
template <typename T, typename X>
void run(ffi::ThreadPool& pool, const T* w, const X* x, float* y, int64_t M, int64_t K, int64_t N,
         const float* scale = nullptr) {
  if constexpr (std::is_same_v<T, uint16_t> && std::is_same_v<X, float>) x = split_pairs(x, M, K);
  if constexpr (std::is_same_v<T, float> && std::is_same_v<X, uint16_t>) {  // products in bfloat16
    if (viasd::amx_bf16_available()) return run_amx(pool, rows_of(w, K), x, y, M, K, N);
    run_pairs(pool, [w, K](int64_t n0, int64_t n1) { return rounded_bf16(w + n0 * K, (n1 - n0) * K); }, x, y, M, K, N);
  } else {
    parallel_chunks(pool, N, [w, x, y, M, K, N, scale](int64_t n0, int64_t n1) {
      chunk_rows(w, x, y, M, K, N, n0, n1);
      if (scale) apply_scale(scale, y, M, N, n0, n1);
    });
  }
}

// The operands' sizes, checked: x [M, K] against w [Nw, K] or [L, Nw, K] at `layer`, of
// which the first `live` rows of x are computed (M below is that count) against the
// first N rows of w, N being y's width (a drafter's head over part of the vocabulary).
struct Shape {
  int64_t M, K, N, l, Nw;  // N: outputs computed (y's columns), the first N of w's Nw rows
};

ffi::Error check_shape(const ffi::AnyBuffer& x, const ffi::AnyBuffer& w, const ffi::Buffer<ffi::S32>& layer,
                       const ffi::Buffer<ffi::S32>& live, ffi::ResultBuffer<ffi::F32>& y, Shape& s) {
  const auto xd = x.dimensions(), wd = w.dimensions(), yd = y->dimensions();
  if (xd.size() != 2 || (wd.size() != 2 && wd.size() != 3) || yd.size() != 2 || yd[0] != xd[0])
    return ffi::Error::InvalidArgument("viasd matvec: x must be [M, K], w [N, K] or [L, N, K] and y [M, n]");
  const int64_t L = wd.size() == 3 ? wd[0] : 1;
  s = {std::clamp<int64_t>(live.typed_data()[0], 0, xd[0]), xd[1], yd[1], layer.typed_data()[0], wd[wd.size() - 2]};
  if (wd[wd.size() - 1] != s.K) return ffi::Error::InvalidArgument("viasd matvec: x and w disagree on K");
  if (s.N > s.Nw) return ffi::Error::InvalidArgument("viasd matvec: y has more columns than w has rows");
  if (s.l < 0 || s.l >= L) return ffi::Error::InvalidArgument("viasd matvec: layer index out of range");
  return ffi::Error::Success();
}

// Zeroes the outputs of x's rows past `live`.
void zero_padding(const ffi::AnyBuffer& x, const Shape& s, float* out) {
  std::memset(out + s.M * s.N, 0, (x.dimensions()[0] - s.M) * s.N * sizeof(float));
}

// `live`: only x's first `live` rows are computed, the others' outputs are zero (a
// window's trailing padding, whose results nobody reads; rows are independent, so the
// live rows' results are the same either way).
ffi::Error matvec(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::Buffer<ffi::S32> layer,
                  ffi::Buffer<ffi::S32> live, ffi::ResultBuffer<ffi::F32> y, int32_t along_k) {
  Shape s;
  if (ffi::Error e = check_shape(x, w, layer, live, y, s); e.failure()) return e;
  const int64_t M = s.M, K = s.K, N = s.N, l = s.l, Nw = s.Nw;
  float* out = y->typed_data();
  zero_padding(x, s, out);
  if (M == 0) return ffi::Error::Success();
  const auto xt = x.element_type(), wt = w.element_type();
  const float* xf = static_cast<const float*>(x.untyped_data());
  const uint16_t* wh = static_cast<const uint16_t*>(w.untyped_data()) + l * Nw * K;
  if (xt == ffi::DataType::F32 && wt == ffi::DataType::F32) {
    const float* wf = static_cast<const float*>(w.untyped_data()) + l * Nw * K;
#if defined(__AVX512F__)
    if (along_k && M > 9) {  // `products="float32"` on prefill's rows
      run_lanes<FloatsBlock>(pool, [wf, K](int64_t n0, int64_t) { return wf + n0 * K; }, floats_of(xf, M, K), out, N);
      return ffi::Error::Success();
    }
#endif
    run(pool, wf, xf, out, M, K, N);
  } else if (xt == ffi::DataType::F32 && wt == ffi::DataType::BF16)
    run(pool, wh, xf, out, M, K, N);
  else if (xt == ffi::DataType::BF16 && wt == ffi::DataType::BF16)
#if defined(__AVX512BF16__)
    run(pool, wh, static_cast<const uint16_t*>(x.untyped_data()), out, M, K, N);
#else
    run(pool, wh, widened(static_cast<const uint16_t*>(x.untyped_data()), M * K), out, M, K, N);
#endif
  else if (xt == ffi::DataType::BF16 && wt == ffi::DataType::F32)  // products in bfloat16: W rounded per chunk
    run(pool, static_cast<const float*>(w.untyped_data()) + l * Nw * K, static_cast<const uint16_t*>(x.untyped_data()),
        out, M, K, N);
  else
    return ffi::Error::InvalidArgument("viasd matvec: weights must be float32 or bfloat16, and activations "
                                       "float32 or bfloat16");
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(ViasdMatvec, matvec,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int32_t>("along_k"));

namespace {

// int8 weights q [N, K] or [L, N, K] with per-output-row scales [N] or [L, N]:
// y[m, n] = scale[n] * sum_k x[m, k] q[n, k]; x float32 (FMAs on widened weights) or
// bfloat16 (the dot-product path on weights converted to bfloat16; with `bf16_products`,
// the `products="bfloat16"` option of prefill, AMX tiles where the CPU has them);
// `layer` and `live` as in `matvec`.
ffi::Error matvec_int8(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer q, ffi::Buffer<ffi::F32> scale,
                       ffi::Buffer<ffi::S32> layer, ffi::Buffer<ffi::S32> live, ffi::ResultBuffer<ffi::F32> y,
                       int32_t bf16_products) {
  Shape s;
  if (ffi::Error e = check_shape(x, q, layer, live, y, s); e.failure()) return e;
  const auto xt = x.element_type();
  if ((xt != ffi::DataType::F32 && xt != ffi::DataType::BF16) || q.element_type() != ffi::DataType::S8)
    return ffi::Error::InvalidArgument("viasd matvec_int8: x must be float32 or bfloat16, and q int8");
  if (scale.element_count() * s.K != q.element_count())
    return ffi::Error::InvalidArgument("viasd matvec_int8: one scale per row of q");
  float* out = y->typed_data();
  zero_padding(x, s, out);
  if (s.M == 0) return ffi::Error::Success();
  const int8_t* ql = static_cast<const int8_t*>(q.untyped_data()) + s.l * s.Nw * s.K;
  const float* sl = scale.typed_data() + s.l * s.Nw;
  const uint16_t* xh = static_cast<const uint16_t*>(x.untyped_data());
  if (xt == ffi::DataType::F32)
    run(pool, ql, static_cast<const float*>(x.untyped_data()), out, s.M, s.K, s.N, sl);
  else if (bf16_products && viasd::amx_bf16_available())
    run_amx(pool, rows_of(ql, s.K), xh, out, s.M, s.K, s.N, sl);
  else if (bf16_products)
    run_pairs(pool, [ql, K = s.K](int64_t n0, int64_t n1) { return as_bf16(ql + n0 * K, (n1 - n0) * K); }, xh, out,
              s.M, s.K, s.N, sl);
  else
#if defined(__AVX512BF16__)
    run(pool, ql, xh, out, s.M, s.K, s.N, sl);
#else  // int8 weights are exact in bfloat16: the widened x against them is the same product
    run(pool, ql, widened(xh, s.M * s.K), out, s.M, s.K, s.N, sl);
#endif
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(ViasdMatvecInt8, matvec_int8,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int32_t>("bf16_products"));

namespace {

// GGUF k-quant matrices as their codes (`Blocks`, common.h). The rows below add the same
// products in the same order as `run` does over the matrix's float32 weights, so the
// result is the same to the bit while 1/5 to 1/3 of the bytes stream.
enum BlockKind : int32_t { kQ4K = 0, kQ6K = 1 };  // as gguf_blocks.KINDS

constexpr int64_t kBlockStep = 32;  // weights per step: a sub-block of nibbles

// kLanes weights `scale * code - min` (one rounding) from kLanes codes at `c`: bytes, or
// with `Nibble` 0 / 1 the low / high halves of kLanes bytes.
template <int Nibble = -1>
inline Vec affine(const uint8_t* c, float scale, float min) {
  Vec v;
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
  // widened to 32-bit lanes first, then split: both nibbles' parts share one widening
#if defined(__AVX512F__)
  __m512i code = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(c)));
  if constexpr (Nibble == 0) code = _mm512_and_si512(code, _mm512_set1_epi32(15));
  if constexpr (Nibble == 1) code = _mm512_srli_epi32(code, 4);
  const __m512 w = _mm512_fmsub_ps(_mm512_set1_ps(scale), _mm512_cvtepi32_ps(code), _mm512_set1_ps(min));
#else
  __m256i code = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(c)));
  if constexpr (Nibble == 0) code = _mm256_and_si256(code, _mm256_set1_epi32(15));
  if constexpr (Nibble == 1) code = _mm256_srli_epi32(code, 4);
  const __m256 w = _mm256_fmsub_ps(_mm256_set1_ps(scale), _mm256_cvtepi32_ps(code), _mm256_set1_ps(min));
#endif
  std::memcpy(&v, &w, sizeof v);
#else
  for (int i = 0; i < kLanes; ++i) {
    const int code = Nibble < 0 ? c[i] : Nibble == 0 ? c[i] & 15 : c[i] >> 4;
    v[i] = std::fma(scale, float(code), -min);
  }
#endif
  return v;
}

constexpr int kParts = kBlockStep / kLanes;  // vectors per step

// Weights [k + j kLanes, k + (j + 1) kLanes) of row n, part j of a step of 32.
template <bool Nibbles>
inline Vec load_blocks(const Blocks& b, int64_t n, int64_t k, int j) {
  const int64_t first = j * kLanes;  // of the step's 32 weights
  if constexpr (Nibbles) {  // weights 0-15 are the low nibbles of the 16 bytes, 16-31 the high
    const int64_t s = n * (b.K / 32) + k / 32;
    const uint8_t* c = b.codes + n * (b.K / 2) + k / 2 + first % 16;
    return first >= 16 ? affine<1>(c, b.scales[s], b.mins[s]) : affine<0>(c, b.scales[s], b.mins[s]);
  } else {  // min = 32 * scale: exact, as the scale is a float32 of 17 significant bits at most
    const int64_t s = n * (b.K / 16) + (k + first) / 16;
    return affine(b.codes + n * b.K + k + first, b.scales[s], 32.0f * b.scales[s]);
  }
}

// As `accumulate` for float32 weights and activations (the same FMAs in the same order),
// over all of K, the weights made from their codes in registers.
template <bool Nibbles, int M, int R>
inline void accumulate_blocks(const Blocks& b, const float* x, Vec (&acc)[M][R], int64_t n) {
  const int64_t K = b.K;
  constexpr int64_t code_bytes = Nibbles ? kBlockStep / 2 : kBlockStep;  // per step and row
  constexpr int64_t scale_bytes = Nibbles ? sizeof(float) : 2 * sizeof(float);
  for (int64_t k = 0; k < K; k += kBlockStep) {
    const int64_t step = k / kBlockStep;
    for (int r = 0; r < R; ++r) {  // 16 KB of codes ahead, and the scales and mins for them
      if (step % (64 / code_bytes) == 0)
        __builtin_prefetch(b.codes + (n + r) * (K / kBlockStep) * code_bytes + step * code_bytes + 16384, 0, 2);
      if (step % (64 / scale_bytes) == 0) {
        const int64_t at = ((n + r) * (K / kBlockStep) + step) * (scale_bytes / sizeof(float));
        const int64_t ahead = 16384 / code_bytes * (scale_bytes / sizeof(float));
        __builtin_prefetch(b.scales + at + ahead, 0, 2);
        if constexpr (Nibbles) __builtin_prefetch(b.mins + at + ahead, 0, 2);
      }
    }
    for (int j = 0; j < kParts; ++j) {  // the parts in turn: the float32 path's steps
      Vec wv[R];
      for (int r = 0; r < R; ++r) wv[r] = load_blocks<Nibbles>(b, n + r, k, j);
      for (int m = 0; m < M; ++m) {
        const Vec xv = load(x + m * K + k + kLanes * j);
        for (int r = 0; r < R; ++r) acc[m][r] = madd(acc[m][r], wv[r], xv);
      }
    }
  }
}

template <bool Nibbles, int M, int R>
void sweep_blocks(const Blocks& b, const float* x, float* y, int64_t N, int64_t n0, int64_t n1) {
  auto block = [&](auto width, int64_t n) {
    constexpr int RR = decltype(width)::value;
    Vec acc[M][RR] = {};
    accumulate_blocks<Nibbles, M, RR>(b, x, acc, n);
    for (int m = 0; m < M; ++m)
      for (int r = 0; r < RR; ++r) y[m * N + n + r] = lane_sum(acc[m][r]);
  };
  int64_t n = n0;
  for (; n + R <= n1; n += R) block(std::integral_constant<int, R>{}, n);
  for (; n < n1; ++n) block(std::integral_constant<int, 1>{}, n);
}

using BlockSweepFn = void (*)(const Blocks&, const float*, float*, int64_t, int64_t, int64_t);

// One weight vector at a time, as float32 (see `rows_per_step`).
template <bool Nibbles, int... Ms>
constexpr std::array<BlockSweepFn, sizeof...(Ms)> block_sweeps(std::integer_sequence<int, Ms...>) {
  return {&sweep_blocks<Nibbles, Ms + 1, rows_per_step<float, float>(Ms + 1)>...};
}

// Rows [n0, n1) of the blocks as float32, in a buffer of the calling thread.
template <bool Nibbles>
const float* dequantized(const Blocks& b, int64_t n0, int64_t n1) {
  thread_local std::vector<float> buf;
  buf.resize((n1 - n0) * b.K);
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t k = 0; k < b.K; k += kBlockStep)
      for (int j = 0; j < kParts; ++j) {
        const Vec w = load_blocks<Nibbles>(b, n, k, j);
        std::memcpy(buf.data() + (n - n0) * b.K + k + kLanes * j, &w, sizeof w);
      }
  return buf.data();
}

// Up to 9 activation rows (decoding, verification) stream the codes once, in groups of
// 9 rows; more (prefill, compute-bound) make the chunk's float32 weights once and take
// the float32 path (the same products in the same order).
template <bool Nibbles>
void run_blocks(ffi::ThreadPool& pool, const Blocks& b, const float* x, float* y, int64_t M, int64_t N,
                bool along_k = false) {
#if defined(__AVX512F__)
  if (along_k && M > 9)  // `products="float32"`: the chunk's float32 weights, each output summed along k
    return run_lanes<FloatsBlock>(pool, [&b](int64_t n0, int64_t n1) { return dequantized<Nibbles>(b, n0, n1); },
                                  floats_of(x, M, b.K), y, N);
#endif
  static constexpr auto sweeps = block_sweeps<Nibbles>(std::make_integer_sequence<int, 9>{});
  parallel_chunks(pool, N, [&b, x, y, M, N](int64_t n0, int64_t n1) {
    if (M > 9) return rows(dequantized<Nibbles>(b, n0, n1), x, y + n0, M, b.K, N, 0, n1 - n0);
    sweeps[M - 1](b, x, y, N, n0, n1);
  });
}

// bfloat16 activations (`products="bfloat16"`): each chunk's float32 weights, made as
// above, are rounded to bfloat16 and multiplied as pairs (`run_pairs`), whatever M.
template <bool Nibbles>
void run_blocks(ffi::ThreadPool& pool, const Blocks& b, const uint16_t* x, float* y, int64_t M, int64_t N) {
  if (viasd::amx_bf16_available())  // on AMX tiles, whatever M (as `run`)
    return run_amx(pool, [&b](int64_t n) { return dequantized<Nibbles>(b, n, n + 1); }, x, y, M, b.K, N);
  run_pairs(pool, [&b](int64_t n0, int64_t n1) { return rounded_bf16(dequantized<Nibbles>(b, n0, n1), (n1 - n0) * b.K); },
            x, y, M, b.K, N);
}

template <bool Nibbles>
void run_blocks_any(ffi::ThreadPool& pool, const Blocks& b, const ffi::AnyBuffer& x, float* y, int64_t M, int64_t N,
                    bool along_k) {
  if (x.element_type() == ffi::DataType::F32)
    return run_blocks<Nibbles>(pool, b, static_cast<const float*>(x.untyped_data()), y, M, N, along_k);
  run_blocks<Nibbles>(pool, b, static_cast<const uint16_t*>(x.untyped_data()), y, M, N);
}

// x [M, K] float32 against codes [N, C] or [L, N, C] (uint8) with scales and mins
// [N, S] or [L, N, S] (float32; mins may be empty when no layer is Q4_K) and one
// `BlockKind` per layer in `kinds` [L]: a Q6_K layer's slab holds codes [N, K] and
// scales [N, K / 16] (C = K, S = K / 16); a Q4_K layer's holds codes [N, K / 2] and
// scales and mins [N, K / 32] in the first part of its slab (C = K / 2 and S = K / 32
// when every layer is Q4_K). `layer` and `live` as in `matvec`. `int8_products` (float32
// x only): x is quantized to int8 per 32 and multiplied in integers (`int8_products.cc`).
ffi::Error matvec_blocks(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer codes, ffi::Buffer<ffi::F32> scales,
                         ffi::Buffer<ffi::F32> mins, ffi::Buffer<ffi::S32> kinds, ffi::Buffer<ffi::S32> layer,
                         ffi::Buffer<ffi::S32> live, ffi::ResultBuffer<ffi::F32> y, int32_t int8_products,
                         int32_t along_k) {
  const auto xd = x.dimensions(), cd = codes.dimensions(), sd = scales.dimensions();
  if ((x.element_type() != ffi::DataType::F32 && x.element_type() != ffi::DataType::BF16) ||
      codes.element_type() != ffi::DataType::U8)
    return ffi::Error::InvalidArgument("viasd matvec_blocks: x must be float32 or bfloat16 and the codes uint8");
  if (xd.size() != 2 || (cd.size() != 2 && cd.size() != 3) || sd.size() != cd.size() ||
      (mins.element_count() != 0 && mins.element_count() != scales.element_count()))
    return ffi::Error::InvalidArgument("viasd matvec_blocks: x [M, K], codes [(L,) N, C], scales and mins [(L,) N, S]");
  const int64_t K = xd[1], C = cd[cd.size() - 1], S = sd[sd.size() - 1], Nw = cd[cd.size() - 2];
  const int64_t N = y->dimensions()[y->dimensions().size() - 1];  // the first N of the Nw rows
  if (N > Nw) return ffi::Error::InvalidArgument("viasd matvec_blocks: y has more columns than the codes have rows");
  const int64_t L = cd.size() == 3 ? cd[0] : 1, l = layer.typed_data()[0];
  if (l < 0 || l >= L || int64_t(kinds.element_count()) != L)
    return ffi::Error::InvalidArgument("viasd matvec_blocks: layer index out of range, or not one kind per layer");
  const int32_t kind = kinds.typed_data()[l];
  const bool nibbles = kind == kQ4K;
  if (K % kBlockStep != 0 || sd[sd.size() - 2] != Nw || (kind != kQ4K && kind != kQ6K) ||
      (nibbles ? (C * 2 < K || S * 32 < K || mins.element_count() == 0) : (C != K || S * 16 != K)))
    return ffi::Error::InvalidArgument("viasd matvec_blocks: codes, scales and the layer's kind do not match K");
  const int64_t M = std::clamp<int64_t>(live.typed_data()[0], 0, xd[0]);
  float* out = y->typed_data();
  std::memset(out + M * N, 0, (xd[0] - M) * N * sizeof(float));
  if (M == 0) return ffi::Error::Success();
  const Blocks b{static_cast<const uint8_t*>(codes.untyped_data()) + l * Nw * C, scales.typed_data() + l * Nw * S,
                 nibbles ? mins.typed_data() + l * Nw * S : nullptr, K};
  if (int8_products) {
    if (x.element_type() != ffi::DataType::F32 || K % 128 != 0)
      return ffi::Error::InvalidArgument("viasd matvec_blocks: int8 products take float32 x and K a multiple of 128");
    viasd::blocks_times_int8(pool, b, nibbles, static_cast<const float*>(x.untyped_data()), out, M, N);
  } else if (nibbles)
    run_blocks_any<true>(pool, b, x, out, M, N, along_k);
  else
    run_blocks_any<false>(pool, b, x, out, M, N, along_k);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(ViasdMatvecBlocks, matvec_blocks,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int32_t>("int8_products")
                                  .Attr<int32_t>("along_k"));

namespace {

// Rows of a table by index, out[t] = table[clamp(ids[t], 0, V - 1)]: the embedding
// lookup of bfloat16 models. XLA's CPU backend gathers 16-bit floats in float32, and
// converts the whole table for it on every call of a program that embeds tokens.
ffi::Error take_rows(ffi::AnyBuffer table, ffi::Buffer<ffi::S32> ids, ffi::Result<ffi::AnyBuffer> out) {
  const auto td = table.dimensions();
  if (td.size() != 2) return ffi::Error::InvalidArgument("viasd take_rows: the table must be [V, D]");
  const int64_t V = td[0], row_bytes = td[1] * ffi::ByteWidth(table.element_type());
  if (out->size_bytes() != ids.element_count() * row_bytes)
    return ffi::Error::InvalidArgument("viasd take_rows: the output must be [tokens, D] of the table's dtype");
  const int32_t* id = ids.typed_data();
  const char* src = static_cast<const char*>(table.untyped_data());
  char* dst = static_cast<char*>(out->untyped_data());
  for (size_t t = 0; t < ids.element_count(); ++t)
    std::memcpy(dst + t * row_bytes, src + std::clamp<int64_t>(id[t], 0, V - 1) * row_bytes, row_bytes);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(ViasdTakeRows, take_rows,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::AnyBuffer>());

// For Python (`cpu_matvec.features`): the instruction sets this build may use, one bit
// each, so that a test can tell that a build is the level it was asked for.
extern "C" int ViasdKernelFeatures() {
  int bits = 0;
#if defined(__AVX2__) && defined(__FMA__)
  bits |= 1;
#endif
#if defined(__AVX512F__) && defined(__AVX512BW__)
  bits |= 2;
#endif
#if defined(__AVX512VNNI__)
  bits |= 4;
#endif
#if defined(__AVX512BF16__)
  bits |= 8;
#endif
#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__) && defined(__linux__)
  bits |= 16;
#endif
  return bits;
}
