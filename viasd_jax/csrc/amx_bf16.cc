// bfloat16 products on AMX tiles (Intel's Advanced Matrix Extensions), for the
// `products="bfloat16"` path of prefill: a chunk of W's rows, already rounded to
// bfloat16, against bfloat16 x. One TDPBF16PS multiplies a 16 x 32 tile of x by a 32 x 16
// tile of W^T into 16 x 16 float32 sums: 8192 multiply-adds, where AVX-512 BF16's
// vdpbf16ps forms 32. Prefill is bound by arithmetic, so this is its lever on CPUs that
// have AMX (Sapphire Rapids and later); elsewhere `amx_bf16_available()` is false and the
// callers keep the dot-product path.
//
// Each output sums its products in a fixed order (k in blocks of 32, in order) that
// depends only on its own row of x and row of W: a row's result does not depend on how
// many rows share the call or how W's rows are split into chunks. It does differ in the
// last bits from the vdpbf16ps path, so on a machine with AMX every M takes this path.

#include <cstdlib>
#include <cstring>
#include <vector>

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__) && defined(__linux__)
#define VIASD_AMX 1
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "common.h"

namespace viasd {

#if defined(VIASD_AMX)
namespace {

constexpr int64_t kTileRows = 16;  // rows of x per tile, and W rows (outputs) per tile
constexpr int64_t kTileK = 32;     // bfloat16 k per tile product: 64 bytes a tile row

// LDTILECFG's 64-byte operand (palette 1).
struct TileConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t bytes_per_row[16] = {};
  uint8_t rows[16] = {};
};

// Linux gives a process AMX's tile state only when asked (arch_prctl, kernel 5.16+).
bool request_tiles() {
  constexpr int kRequestPermission = 0x1023, kTileData = 18;  // ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA
  return syscall(SYS_arch_prctl, kRequestPermission, kTileData) == 0;
}

constexpr int64_t kTileWords = kTileRows * kTileK / 2;  // dwords in a tile (1 KB)
constexpr int64_t kRowTiles = kAmxRows / kTileRows;     // A tiles a chunk's rows fill per block of k
constexpr int64_t kTileElems = kTileRows * kTileK;     // bfloat16 in an A tile
constexpr int kTileBytes = 1024;
static_assert(kRowTiles % 2 == 0, "amx_bf16_rows multiplies W's row tiles in pairs");

// `bytes` from p into L1, a cache line at a time.
inline void prefetch(const void* p, int bytes) {
  for (int l = 0; l < bytes; l += 64) _mm_prefetch(static_cast<const char*>(p) + l, _MM_HINT_T0);
}

// 16 weights as float32 (masked: zeros past `live`); int8 converts exactly.
inline __m512 load16(const float* p, __mmask16 live) { return _mm512_maskz_loadu_ps(live, p); }
inline __m512 load16(const int8_t* p, __mmask16 live) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(live, p)));
}

// Row n (of K weights) of the chunk, rounded to bfloat16 (to nearest, ties to even) into
// its A tiles, zeros past K.
template <typename T>
void put_row(const AmxW& a, int64_t n, const T* w) {
  uint16_t* dst = a.data + n * kTileK;  // tile n / 16, row n % 16 of the first block
  for (int64_t k = 0; k < a.K; k += kTileK) {
    const int64_t left = a.K - k;
    const __mmask16 lo = left >= 16 ? 0xFFFF : (1u << left) - 1;
    const __mmask16 hi = left >= 32 ? 0xFFFF : left <= 16 ? 0 : (1u << (left - 16)) - 1;
    const __m512bh v = _mm512_cvtne2ps_pbh(load16(w + k + 16, hi), load16(w + k, lo));
    std::memcpy(dst + (k / kTileK) * kRowTiles * kTileElems, &v, sizeof v);
  }
}

}  // namespace

// VIASD_AMX=0 in the environment keeps the dot-product path (to compare the two).
bool amx_bf16_available() {
  static const bool granted = [] {
    const char* env = std::getenv("VIASD_AMX");
    return !(env && std::strcmp(env, "0") == 0) && request_tiles();
  }();
  return granted;
}

// x^T in B tiles: per tile of 16 x rows and block of 32 k, 16 tile rows of k pairs,
// each 16 dwords (one per x row) holding x[m, 2p] in the low half and x[m, 2p + 1] in
// the high; zeros past M and K (they add nothing). In a buffer of the calling thread,
// which waits for every chunk that reads it.
AmxX amx_packed_x(const uint16_t* x, int64_t M, int64_t K) {
  thread_local std::vector<uint32_t> buf;
  const int64_t Kp = (K + kTileK - 1) / kTileK * kTileK, blocks = Kp / kTileK;
  const int64_t m_tiles = (M + kTileRows - 1) / kTileRows;
  buf.assign(m_tiles * blocks * kTileWords, 0);
  for (int64_t m = 0; m < M; ++m) {
    uint32_t* dst = buf.data() + (m / kTileRows) * blocks * kTileWords + m % kTileRows;
    const uint16_t* row = x + m * K;
    int64_t p = 0;
    for (; 2 * p + 1 < K; ++p) std::memcpy(dst + (p / 16) * kTileWords + (p % 16) * kTileRows, row + 2 * p, 4);
    if (K % 2) dst[(p / 16) * kTileWords + (p % 16) * kTileRows] = row[K - 1];
  }
  return {buf.data(), M, K, Kp};
}

// The A tiles of a chunk of R <= kAmxRows rows of K: per block of 32 k, kRowTiles tiles
// of 16 rows x 32 bfloat16 (1 KB each), one after another. A buffer of the calling
// thread; rows past R are zeros.
AmxW amx_chunk(int64_t K, int64_t R) {
  thread_local std::vector<uint16_t> buf;
  const int64_t Kp = (K + kTileK - 1) / kTileK * kTileK;
  if (int64_t(buf.size()) != kAmxRows * Kp || R < kAmxRows) buf.assign(kAmxRows * Kp, 0);
  return {buf.data(), K, Kp};
}

void amx_put_row(const AmxW& a, int64_t n, const float* w) { put_row(a, n, w); }
void amx_put_row(const AmxW& a, int64_t n, const int8_t* w) { put_row(a, n, w); }

// The sums of W's row tiles j and j + 1 against x's tiles mt and (with Pair) mt + 1,
// over all of K, into y[m, n] (row stride N). Tiles 0-3 hold the sums ([n, m] tiles:
// W's rows are the A tiles, x^T the B tiles), 4-5 the W tiles, 6-7 the x tiles: each
// tile loaded serves two products. The next block's tiles are fetched into L1 ahead
// (tile loads from L2 stall the products otherwise).
template <bool Pair>
void tile_pair(const AmxX& x, const AmxW& a, int64_t mt, int64_t j, int64_t R, float* y, int64_t N) {
  const int64_t blocks = x.Kp / kTileK;
  const uint32_t* b0 = x.data + mt * blocks * kTileWords;
  const uint32_t* b1 = b0 + blocks * kTileWords;
  const uint16_t* w = a.data + j * kTileElems;
  constexpr int64_t kBlockElems = kRowTiles * kTileElems;  // the chunk's A tiles per block of k
  _tile_zero(0);
  _tile_zero(1);
  if constexpr (Pair) {
    _tile_zero(2);
    _tile_zero(3);
  }
  for (int64_t k = 0; k < blocks; ++k, w += kBlockElems) {
    if (k + 1 < blocks) {
      prefetch(w + kBlockElems, 2 * kTileBytes);
      prefetch(b0 + (k + 1) * kTileWords, kTileBytes);
      if constexpr (Pair) prefetch(b1 + (k + 1) * kTileWords, kTileBytes);
    }
    _tile_loadd(4, w, 64);
    _tile_loadd(5, w + kTileElems, 64);
    _tile_loadd(6, b0 + k * kTileWords, 64);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 5, 6);
    if constexpr (Pair) {
      _tile_loadd(7, b1 + k * kTileWords, 64);
      _tile_dpbf16ps(2, 4, 7);
      _tile_dpbf16ps(3, 5, 7);
    }
  }
  alignas(64) float out[kTileRows][kTileRows];
  auto store = [&](int64_t jj, int64_t mm) {  // out[n][m] -> y[m, n]
    const int64_t rows = std::min(kTileRows, x.M - mm * kTileRows), cols = std::min(kTileRows, R - jj * kTileRows);
    for (int64_t m = 0; m < rows; ++m)
      for (int64_t n = 0; n < cols; ++n) y[(mm * kTileRows + m) * N + jj * kTileRows + n] = out[n][m];
  };
  _tile_stored(0, out, 64);
  store(j, mt);
  _tile_stored(1, out, 64);
  store(j + 1, mt);
  if constexpr (Pair) {
    _tile_stored(2, out, 64);
    store(j, mt + 1);
    _tile_stored(3, out, 64);
    store(j + 1, mt + 1);
  }
}

// y[m, n] (row stride N) = sum_k x[m, k] w[n, k] for m < x.M and n < R, w the chunk's A
// tiles. Each output sums k in blocks of 32, in order, whatever M and however the tiles
// are paired. (Passes over slices of k that keep the chunk's A tiles in L1 measured
// slower: storing and reloading the sums between passes costs more than they save.)
void amx_bf16_rows(const AmxX& x, const AmxW& a, int64_t R, float* y, int64_t N) {
  const int64_t m_tiles = (x.M + kTileRows - 1) / kTileRows;
  TileConfig config;
  for (int t = 0; t < 8; ++t) config.rows[t] = kTileRows, config.bytes_per_row[t] = 64;
  _tile_loadconfig(&config);
  for (int64_t mt = 0; mt < m_tiles; mt += 2)
    for (int64_t j = 0; j * kTileRows < R; j += 2) {
      if (mt + 1 < m_tiles)
        tile_pair<true>(x, a, mt, j, R, y, N);
      else
        tile_pair<false>(x, a, mt, j, R, y, N);
    }
  _tile_release();
}

#else  // no AMX: never available, never called

bool amx_bf16_available() { return false; }
AmxX amx_packed_x(const uint16_t*, int64_t, int64_t) { return {}; }
AmxW amx_chunk(int64_t, int64_t) { return {}; }
void amx_put_row(const AmxW&, int64_t, const float*) {}
void amx_put_row(const AmxW&, int64_t, const int8_t*) {}
void amx_bf16_rows(const AmxX&, const AmxW&, int64_t, float*, int64_t) {}

#endif

}  // namespace viasd

// For Python (`cpu_matvec.amx_bf16`): 1 where bfloat16 products run on AMX tiles.
extern "C" int ViasdAmxBf16() { return viasd::amx_bf16_available(); }
