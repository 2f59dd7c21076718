// What the kernel's two sources share: the split of a product's weight rows into chunks
// run on XLA's intra-op threads, and GGUF codes as the kernels read them.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace viasd {

constexpr int64_t kChunkRows = 48;  // rows of W per unit of work: a multiple of 3 and 4

// Splits rows of W into chunks that the caller and the pool's threads claim in turn.
// The caller claims chunks too, so the call finishes even if no pool thread is free.
struct Job {
  std::atomic<int64_t> next{0}, done{0};
  int64_t chunks = 0;
};

// Calls `chunk(n0, n1)` for consecutive chunks of `rows` (default kChunkRows) of the N
// rows of W, on the caller and the pool's threads; returns when every chunk is done.
template <typename Chunk>
void parallel_chunks(xla::ffi::ThreadPool& pool, int64_t N, Chunk chunk, int64_t rows = kChunkRows) {
  auto job = std::make_shared<Job>();
  job->chunks = (N + rows - 1) / rows;
  auto work = [job, N, chunk, rows]() {
    for (int64_t c; (c = job->next.fetch_add(1)) < job->chunks;) {
      chunk(c * rows, std::min(N, (c + 1) * rows));
      job->done.fetch_add(1, std::memory_order_release);
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), job->chunks) - 1;
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule(decltype(work)(work));
  work();
  while (job->done.load(std::memory_order_acquire) < job->chunks) std::this_thread::yield();
}

// The lanes of a float vector (a GCC vector type) added one after another, left to
// right: a fixed order, so every output's sum is the same whichever code path made it.
template <typename V>
inline float lane_sum(V v) {
  float s = 0.f;
  for (int i = 0; i < int(sizeof(V) / sizeof(float)); ++i) s += v[i];
  return s;
}

// GGUF k-quant matrices kept as their integer codes, with one float32 scale and min per
// sub-block of S weights of a row: w[n, k] = scale[n, k / S] * code[n, k] - min[n, k / S],
// with one rounding (a fused multiply-subtract). That is bit for bit the float32 weight
// that gguf's dequantization writes (`viasd_jax/gguf_blocks.py` says why).
// Each layer has its own packing (a stack of Q4_K_M mixes them): nibbles (Q4_K: S = 32;
// byte i of a sub-block holds code i in its low half and code 16 + i in its high half)
// or bytes (Q6_K: S = 16, one code per byte, and min = 32 * scale, so no mins stream).
struct Blocks {
  const uint8_t* codes;
  const float* scales;
  const float* mins;  // nibbles only
  int64_t K;
};

// y [M, N] = x [M, K] . W^T for W the codes `b` (`nibbles`: Q4_K, else Q6_K), x
// quantized to int8 per 32 activations (`int8_products.cc`).
void blocks_times_int8(xla::ffi::ThreadPool& pool, const Blocks& b, bool nibbles, const float* x, float* y,
                       int64_t M, int64_t N);

// bfloat16 products on AMX tiles (`amx_bf16.cc`), only where `amx_bf16_available()`:
// x [M, K] bfloat16 packed once per product by `amx_packed_x` (a buffer of the calling
// thread); then per chunk of R <= kAmxRows rows of W, `amx_chunk` (a buffer of the
// calling thread) filled row by row by `amx_put_row` (float32 or int8, rounded to
// bfloat16 there) and multiplied by `amx_bf16_rows`: y[m, n] with row stride N.
constexpr int64_t kAmxRows = 64;  // rows of W per chunk: 4 A tiles, multiplied in pairs
struct AmxX {
  const uint32_t* data;
  int64_t M, K, Kp;  // Kp: K rounded up to 32
};
struct AmxW {
  uint16_t* data;
  int64_t K, Kp;
};
bool amx_bf16_available();
AmxX amx_packed_x(const uint16_t* x, int64_t M, int64_t K);
AmxW amx_chunk(int64_t K, int64_t R);
void amx_put_row(const AmxW& a, int64_t n, const float* w);
void amx_put_row(const AmxW& a, int64_t n, const int8_t* w);
void amx_bf16_rows(const AmxX& x, const AmxW& a, int64_t R, float* y, int64_t N);

}  // namespace viasd
