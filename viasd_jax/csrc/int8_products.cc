// GGUF codes times activations quantized to int8 (`products="int8"`), llama.cpp's numerics.
//
// Each activation row is quantized per 32 activations, x ~= dx * xq with dx = max|x| / 127
// and xq = round(x / dx) in [-127, 127] (ties to even). Within a sub-block of codes the
// product is then a sum of integer products, which AVX-512 VNNI's vpdpbusd forms 64 byte
// pairs per instruction (unsigned codes against signed activations, exactly in int32),
// and the float32 scales come in once per sub-block:
//   Q4_K (32 weights, w = scale * code - min): dx * scale * sum(code xq) - min * dx * sum(xq)
//   Q6_K (16 weights, w = scale * (code - 32)): dx * scale * sum((code - 32) xq)
// The float32 path makes each weight and multiplies it in a float32 FMA; here 64 weights
// cost about one instruction, so decoding streams the codes instead of computing on them,
// and prefill's products run several times faster. Lossy against float32 products (the
// activations' rounding, about 1/254 of a block's largest value), but each output depends
// on its own row of x only, whatever the number of rows: verification still equals decoding.

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

// 4 floats at p, each over 4 lanes: per lane, the value of the sub-block its bytes are in.
inline Floats spread4(const float* p) {
#if defined(__AVX512F__)
  const __m512i at = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
  return (Floats)_mm512_permutexvar_ps(at, _mm512_castps128_ps512(_mm_loadu_ps(p)));
#else
  Floats v;
  for (int i = 0; i < kLanes; ++i) v[i] = p[i / 4];
  return v;
#endif
}

// Weights per step: 64 code bytes, so 128 nibbles (4 Q4_K sub-blocks) or 64 bytes (4 Q6_K ones).
template <bool Nibbles>
constexpr int64_t kStepWeights = Nibbles ? 128 : 64;

// x's rows quantized, laid out for one kind of codes. Per step of a row: `q` holds the
// bytes that meet the step's 64 code bytes (Q6_K: the step's 64 activations in order;
// Q4_K: 128 bytes, first the low-nibble halves of its 4 sub-blocks, activations 0-15 of
// each, then the high halves, 16-31); `dx` per lane the scale of the activations whose
// products the lane sums; for Q6_K `start` per lane -32 times the sum of its 4
// activations (codes are q + 32). For Q4_K `minus` holds each block's -dx * sum(xq),
// which times the sub-block's min is its min term.
struct Quantized {
  std::vector<int8_t> q;       // [M, K]
  std::vector<float> dx;       // [M, K / kStepWeights * 16]
  std::vector<int32_t> start;  // as dx (Q6_K)
  std::vector<float> minus;    // [M, K / 32] (Q4_K)
  int64_t K, lanes;            // lanes: of dx per row
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
  constexpr int64_t step = kStepWeights<Nibbles>;
  out.K = K;
  out.lanes = K / step * kLanes;
  out.q.resize(M * K);
  out.dx.resize(M * out.lanes);
  out.start.resize(Nibbles ? 0 : M * out.lanes);
  out.minus.resize(Nibbles ? M * K / kQuantBlock : 0);
  int8_t block[kQuantBlock];
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < K; k += kQuantBlock) {
      const float dx = quantize_block(x + m * K + k, block);
      const int64_t in_step = k % step, lane0 = m * out.lanes + k / step * kLanes;
      if constexpr (Nibbles) {  // block j of its step: bytes 16j of the step's halves, lanes 4j to 4j + 3
        const int64_t j = in_step / kQuantBlock;
        int8_t* q = out.q.data() + m * K + k - in_step;
        std::memcpy(q + 16 * j, block, 16);
        std::memcpy(q + 64 + 16 * j, block + 16, 16);
        std::fill_n(out.dx.data() + lane0 + 4 * j, 4, dx);
        int32_t sum = 0;
        for (int i = 0; i < kQuantBlock; ++i) sum += block[i];
        out.minus[(m * K + k) / kQuantBlock] = -(dx * float(sum));
      } else {  // in order: lane l holds activations 4l to 4l + 3 of the step
        std::memcpy(out.q.data() + m * K + k, block, kQuantBlock);
        for (int l = 0; l < kQuantBlock / 4; ++l) {
          const int64_t lane = lane0 + in_step / 4 + l;
          out.dx[lane] = dx;
          out.start[lane] = -32 * (block[4 * l] + block[4 * l + 1] + block[4 * l + 2] + block[4 * l + 3]);
        }
      }
    }
  return out;
}

// Adds the products of steps [k0, k1) (weights) of code rows [n, n + R) with x rows
// [m0, m0 + M) into acc, lane by lane: every output adds its steps in the same order
// however the steps are split between calls.
template <bool Nibbles, int M, int R>
inline void accumulate(const Blocks& b, const Quantized& x, int64_t m0, Floats (&acc)[M][R], int64_t n, int64_t k0,
                       int64_t k1) {
  constexpr int64_t step = kStepWeights<Nibbles>;
  constexpr int64_t sub = Nibbles ? 32 : 16;  // weights per scale
  const int64_t K = b.K;
  for (int64_t k = k0; k < k1; k += step) {
    Bytes lo[R], hi[R];
    Floats scale[R];
    for (int r = 0; r < R; ++r) {
      const uint8_t* c = b.codes + (n + r) * (Nibbles ? K / 2 : K) + (Nibbles ? k / 2 : k);
      __builtin_prefetch(c + 16384, 0, 2);  // 16 KB ahead, one line per step
      const int64_t s = (n + r) * (K / sub) + k / sub;
      if ((k / step) % 4 == 0) __builtin_prefetch(b.scales + s + 16384 / 64 * 4, 0, 2);  // 16 bytes a step
      const Bytes raw = load<Bytes>(c);
      lo[r] = Nibbles ? raw & 15 : raw;
      if constexpr (Nibbles) hi[r] = raw >> 4;
      scale[r] = spread4(b.scales + s);
    }
    for (int m = 0; m < M; ++m) {
      const int8_t* q = x.q.data() + (m0 + m) * K + k;
      const int64_t lane0 = (m0 + m) * x.lanes + k / step * kLanes;
      const Bytes q0 = load<Bytes>(q);
      const Floats dx = load<Floats>(x.dx.data() + lane0);
      if constexpr (Nibbles) {
        const Bytes q1 = load<Bytes>(q + 64);
        for (int r = 0; r < R; ++r) {
          const Ints sums = dot4(dot4(Ints{}, lo[r], q0), hi[r], q1);
          acc[m][r] = fmadd(__builtin_convertvector(sums, Floats), scale[r] * dx, acc[m][r]);  // exact: |sums| < 2^24
        }
      } else {
        const Ints start = load<Ints>(x.start.data() + lane0);
        for (int r = 0; r < R; ++r) {
          const Ints sums = dot4(start, lo[r], q0);
          acc[m][r] = fmadd(__builtin_convertvector(sums, Floats), scale[r] * dx, acc[m][r]);
        }
      }
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

constexpr int64_t kBlockSteps = 16;  // steps per K block of prefill: a group's x block stays in L1

// Rows [n0, n1) of the codes against x rows [m0, m0 + M): up to 9 rows (decoding,
// verification) along all of K per row block; more (prefill, bound by arithmetic) in K
// blocks over the whole chunk, so that the group's x block stays in L1 (the partial sums
// wait in `partial`, lane by lane, so each output adds the same values in the same order).
template <bool Nibbles, int M, int R>
void sweep(const Blocks& b, const Quantized& x, int64_t m0, float* y, int64_t N, int64_t n0, int64_t n1, bool blocked) {
  const int64_t K = b.K, block = blocked ? kBlockSteps * kStepWeights<Nibbles> : K;
  Floats partial[kChunkRows][M] = {};
  auto rows = [&](auto width, int64_t n, int64_t k0, int64_t k1) {
    constexpr int RR = decltype(width)::value;
    Floats acc[M][RR];
    for (int m = 0; m < M; ++m)
      for (int r = 0; r < RR; ++r) acc[m][r] = partial[n + r - n0][m];
    accumulate<Nibbles, M, RR>(b, x, m0, acc, n, k0, k1);
    for (int m = 0; m < M; ++m)
      for (int r = 0; r < RR; ++r) partial[n + r - n0][m] = acc[m][r];
  };
  for (int64_t k0 = 0; k0 < K; k0 += block) {
    const int64_t k1 = std::min(K, k0 + block);
    int64_t n = n0;
    for (; n + R <= n1; n += R) rows(std::integral_constant<int, R>{}, n, k0, k1);
    for (; n < n1; ++n) rows(std::integral_constant<int, 1>{}, n, k0, k1);
  }
  for (int64_t n = n0; n < n1; ++n)
    for (int m = 0; m < M; ++m) y[(m0 + m) * N + n] = finish<Nibbles>(b, x, m0 + m, n, partial[n - n0][m]);
}

// Rows of codes per step for M rows of x: M * R accumulators and the R rows' codes and
// scales within AVX-512's 32 registers.
constexpr int rows_per_step(int m) { return m == 1 ? 4 : m <= 3 ? 3 : 2; }

using SweepFn = void (*)(const Blocks&, const Quantized&, int64_t, float*, int64_t, int64_t, int64_t, bool);

template <bool Nibbles, int... Ms>
constexpr std::array<SweepFn, sizeof...(Ms)> sweeps(std::integer_sequence<int, Ms...>) {
  return {&sweep<Nibbles, Ms + 1, rows_per_step(Ms + 1)>...};
}

// Groups of up to 9 rows of x against each chunk of the codes (a chunk stays in cache
// between groups).
template <bool Nibbles>
void run(xla::ffi::ThreadPool& pool, const Blocks& b, const float* x, float* y, int64_t M, int64_t N) {
  static constexpr auto table = sweeps<Nibbles>(std::make_integer_sequence<int, 9>{});
  const Quantized& xq = quantize<Nibbles>(x, M, b.K);
  parallel_chunks(pool, N, [&b, &xq, y, M, N](int64_t n0, int64_t n1) {
    for (int64_t m = 0; m < M; m += 9) table[std::min<int64_t>(M - m, 9) - 1](b, xq, m, y, N, n0, n1, M > 9);
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
