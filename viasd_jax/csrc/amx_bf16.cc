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
static_assert(kChunkRows == 3 * kTileRows, "a chunk of W rows is the 3 A tiles of amx_bf16_rows");

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

// 16 weights as float32 (masked: zeros past `live`); int8 converts exactly.
inline __m512 load16(const float* p, __mmask16 live) { return _mm512_maskz_loadu_ps(live, p); }
inline __m512 load16(const int8_t* p, __mmask16 live) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(live, p)));
}

// R <= kChunkRows rows of W [R, K] (float32, or int8: exact), rounded to bfloat16 (to
// nearest, ties to even) in rows of Kp, zeros past K and past R: the A tiles, loaded as
// they lie.
template <typename T>
const uint16_t* rounded_rows(const T* w, int64_t R, int64_t K, int64_t Kp) {
  thread_local std::vector<uint16_t> buf;  // one chunk at a time per thread
  buf.assign(kChunkRows * Kp, 0);
  for (int64_t n = 0; n < R; ++n)
    for (int64_t k = 0; k < K; k += kTileK) {
      const int64_t left = K - k;
      const __mmask16 lo = left >= 16 ? 0xFFFF : (1u << left) - 1;
      const __mmask16 hi = left >= 32 ? 0xFFFF : left <= 16 ? 0 : (1u << (left - 16)) - 1;
      const T* p = w + n * K + k;
      const __m512bh v = _mm512_cvtne2ps_pbh(load16(p + 16, hi), load16(p, lo));
      std::memcpy(buf.data() + n * Kp + k, &v, sizeof v);
    }
  return buf.data();
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

// y[m, n] (row stride N) = sum_k x[m, k] w[n, k] for m < x.M and n < R <= kChunkRows, w
// the chunk's rows [R, K] (float32 or int8), rounded to bfloat16 here. W's rows are the A
// tiles and x^T the B tiles, so the sums come out as [n, m] tiles.
template <typename T>
void amx_rows(const AmxX& x, const T* w, int64_t R, float* y, int64_t N) {
  const int64_t Kp = x.Kp, blocks = Kp / kTileK, m_tiles = (x.M + kTileRows - 1) / kTileRows;
  const uint16_t* a = rounded_rows(w, R, x.K, Kp);
  TileConfig config;
  for (int t = 0; t < 8; ++t) config.rows[t] = kTileRows, config.bytes_per_row[t] = 64;
  _tile_loadconfig(&config);
  alignas(64) float out[kTileRows][kTileRows];
  for (int64_t mt = 0; mt < m_tiles; ++mt) {
    // tiles 0-2: the sums of W tiles 0-2; 3: x^T; 4-6: W tiles
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    const uint32_t* b = x.data + mt * blocks * kTileWords;
    const int64_t stride = Kp * sizeof(uint16_t);
    for (int64_t k = 0; k < blocks; ++k) {
      _tile_loadd(3, b + k * kTileWords, 64);
      _tile_loadd(4, a + k * kTileK, stride);
      _tile_loadd(5, a + kTileRows * Kp + k * kTileK, stride);
      _tile_loadd(6, a + 2 * kTileRows * Kp + k * kTileK, stride);
      _tile_dpbf16ps(0, 4, 3);
      _tile_dpbf16ps(1, 5, 3);
      _tile_dpbf16ps(2, 6, 3);
    }
    const int64_t rows = std::min(kTileRows, x.M - mt * kTileRows);
    auto store = [&](int64_t j) {  // out[n][m] -> y[m, n]
      const int64_t cols = std::min(kTileRows, R - j * kTileRows);
      for (int64_t n = 0; n < cols; ++n)
        for (int64_t m = 0; m < rows; ++m) y[(mt * kTileRows + m) * N + j * kTileRows + n] = out[n][m];
    };
    _tile_stored(0, out, 64);
    store(0);
    _tile_stored(1, out, 64);
    store(1);
    _tile_stored(2, out, 64);
    store(2);
  }
  _tile_release();
}

void amx_bf16_rows(const AmxX& x, const float* w, int64_t R, float* y, int64_t N) { amx_rows(x, w, R, y, N); }
void amx_bf16_rows(const AmxX& x, const int8_t* w, int64_t R, float* y, int64_t N) { amx_rows(x, w, R, y, N); }

#else  // no AMX: never available, never called

bool amx_bf16_available() { return false; }
AmxX amx_packed_x(const uint16_t*, int64_t, int64_t) { return {}; }
void amx_bf16_rows(const AmxX&, const float*, int64_t, float*, int64_t) {}
void amx_bf16_rows(const AmxX&, const int8_t*, int64_t, float*, int64_t) {}

#endif

}  // namespace viasd

// For Python (`cpu_matvec.amx_bf16`): 1 where bfloat16 products run on AMX tiles.
extern "C" int ViasdAmxBf16() { return viasd::amx_bf16_available(); }
