// SHA-256 as FIPS 180-4 specifies it. Section numbers below refer to that standard.

#include "cli/sha256.h"

#include <algorithm>
#include <bit>
#include <cstring>

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#endif

namespace shardstream::cli {
namespace {

// The constants are computed from their definitions rather than typed in, so a typo cannot
// hide in a table of 72 hex numbers (the NIST vectors in the tests would catch one, but not say
// where). 128-bit integer roots give every bit exactly, with no floating-point rounding.
__extension__ using Uint128 = unsigned __int128;

constexpr Uint128 IntegerRoot(Uint128 x, int degree) {
  // The largest r with r^degree <= x, by bisection; r < 2^43 for every input used here.
  uint64_t lo = 0;
  uint64_t hi = uint64_t{1} << 43;
  while (lo < hi) {
    uint64_t mid = lo + (hi - lo + 1) / 2;
    Uint128 power = 1;
    for (int i = 0; i < degree; ++i) power *= mid;
    if (power <= x) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

constexpr std::array<uint32_t, 64> FirstPrimes() {
  std::array<uint32_t, 64> primes{};
  size_t count = 0;
  for (uint32_t n = 2; count < primes.size(); ++n) {
    bool prime = true;
    for (uint32_t d = 2; d * d <= n; ++d) prime = prime && n % d != 0;
    if (prime) primes[count++] = n;
  }
  return primes;
}

// §4.2.2: the first 32 bits of the fractional parts of the cube roots of the first 64 primes,
// i.e. cbrt(p · 2^96) mod 2^32.
constexpr std::array<uint32_t, 64> RoundConstants() {
  std::array<uint32_t, 64> k{};
  const std::array<uint32_t, 64> primes = FirstPrimes();
  for (size_t i = 0; i < k.size(); ++i) {
    k[i] = static_cast<uint32_t>(IntegerRoot(Uint128{primes[i]} << 96, 3));
  }
  return k;
}

// §5.3.3: the first 32 bits of the fractional parts of the square roots of the first 8 primes.
constexpr std::array<uint32_t, 8> InitialHash() {
  std::array<uint32_t, 8> h{};
  const std::array<uint32_t, 64> primes = FirstPrimes();
  for (size_t i = 0; i < h.size(); ++i) {
    h[i] = static_cast<uint32_t>(IntegerRoot(Uint128{primes[i]} << 64, 2));
  }
  return h;
}

// 16-byte aligned: the SHA-extensions path loads four at a time.
alignas(16) constexpr std::array<uint32_t, 64> kK = RoundConstants();
constexpr std::array<uint32_t, 8> kH0 = InitialHash();
static_assert(kK[0] == 0x428a2f98 && kK[63] == 0xc67178f2);
static_assert(kH0[0] == 0x6a09e667 && kH0[7] == 0x5be0cd19);

uint32_t LoadBigEndian32(const std::byte* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof v);
  return std::endian::native == std::endian::little ? __builtin_bswap32(v) : v;
}

// §4.1.2 functions.
constexpr uint32_t Ch(uint32_t x, uint32_t y, uint32_t z) { return (x & y) ^ (~x & z); }
constexpr uint32_t Maj(uint32_t x, uint32_t y, uint32_t z) { return (x & y) ^ (x & z) ^ (y & z); }
constexpr uint32_t BigSigma0(uint32_t x) {
  return std::rotr(x, 2) ^ std::rotr(x, 13) ^ std::rotr(x, 22);
}
constexpr uint32_t BigSigma1(uint32_t x) {
  return std::rotr(x, 6) ^ std::rotr(x, 11) ^ std::rotr(x, 25);
}
constexpr uint32_t SmallSigma0(uint32_t x) { return std::rotr(x, 7) ^ std::rotr(x, 18) ^ (x >> 3); }
constexpr uint32_t SmallSigma1(uint32_t x) {
  return std::rotr(x, 17) ^ std::rotr(x, 19) ^ (x >> 10);
}

#if defined(__x86_64__)

// The SHA extensions keep the eight working variables in two registers, {A,B,E,F} and
// {C,D,G,H} (A in the top lane), and SHA256RNDS2 runs two rounds at a time from the two W+K words
// in the low half of its third operand. SHA256MSG1/MSG2 compute four schedule words (§6.2.2
// step 1) at a time: MSG1 adds σ0 of the word one ahead, MSG2 adds σ1 of the word two behind.
__attribute__((target("sha,sse4.1,ssse3"))) void BlocksShaNi(uint32_t* state,
                                                             const std::byte* blocks,
                                                             size_t block_count) {
  // Bytes reversed within each 32-bit word: the message is big-endian (§3.1).
  const __m128i byte_swap = _mm_set_epi8(12, 13, 14, 15, 8, 9, 10, 11, 4, 5, 6, 7, 0, 1, 2, 3);
  // state[0..3] = {a,b,c,d} and state[4..7] = {e,f,g,h}, lane 0 first; rearranged into
  // abef = {f,e,b,a} and cdgh = {h,g,d,c}.
  __m128i abcd = _mm_loadu_si128(reinterpret_cast<const __m128i*>(state));
  __m128i efgh = _mm_loadu_si128(reinterpret_cast<const __m128i*>(state + 4));
  abcd = _mm_shuffle_epi32(abcd, 0xB1);  // {b,a,d,c}
  efgh = _mm_shuffle_epi32(efgh, 0x1B);  // {h,g,f,e}
  __m128i abef = _mm_alignr_epi8(abcd, efgh, 8);
  __m128i cdgh = _mm_blend_epi16(efgh, abcd, 0xF0);

  for (size_t b = 0; b < block_count; ++b) {
    const std::byte* block = blocks + b * Sha256::kBlockBytes;
    const __m128i abef_before = abef;
    const __m128i cdgh_before = cdgh;
    // w[j % 4] holds schedule words W[4j .. 4j+3].
    __m128i w[4];
    for (int j = 0; j < 16; ++j) {
      if (j < 4) {
        w[j] = _mm_shuffle_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(block + 16 * j)),
                                byte_swap);
      } else {
        // W[t] = σ1(W[t-2]) + W[t-7] + σ0(W[t-15]) + W[t-16] for t = 4j .. 4j+3.
        __m128i next = _mm_sha256msg1_epu32(w[j % 4], w[(j + 1) % 4]);  // W[t-16] + σ0(W[t-15])
        next = _mm_add_epi32(next, _mm_alignr_epi8(w[(j + 3) % 4], w[(j + 2) % 4], 4));  // W[t-7]
        w[j % 4] = _mm_sha256msg2_epu32(next, w[(j + 3) % 4]);  // + σ1(W[t-2])
      }
      __m128i wk =
          _mm_add_epi32(w[j % 4], _mm_load_si128(reinterpret_cast<const __m128i*>(&kK[4 * j])));
      // Two rounds turn {A,B,E,F} into the new one and the old one becomes {C,D,G,H}: the
      // registers swap roles instead of being copied.
      cdgh = _mm_sha256rnds2_epu32(cdgh, abef, wk);
      abef = _mm_sha256rnds2_epu32(abef, cdgh, _mm_shuffle_epi32(wk, 0x0E));
    }
    // §6.2.2 step 4.
    abef = _mm_add_epi32(abef, abef_before);
    cdgh = _mm_add_epi32(cdgh, cdgh_before);
  }

  __m128i feba = _mm_shuffle_epi32(abef, 0x1B);  // {a,b,e,f}
  __m128i dchg = _mm_shuffle_epi32(cdgh, 0xB1);  // {g,h,c,d}
  _mm_storeu_si128(reinterpret_cast<__m128i*>(state), _mm_blend_epi16(feba, dchg, 0xF0));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(state + 4), _mm_alignr_epi8(dchg, feba, 8));
}

bool CpuHasShaNi() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return false;
  const bool ssse3 = (ecx & bit_SSSE3) != 0;
  const bool sse41 = (ecx & bit_SSE4_1) != 0;
  if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
  return ssse3 && sse41 && (ebx & bit_SHA) != 0;
}

#endif  // __x86_64__

detail::Sha256BlocksFn BestBlocks() {
  // Chosen once; a function-local static is initialised thread-safely.
  static const detail::Sha256BlocksFn best = [] {
    detail::Sha256BlocksFn hardware = detail::Sha256BlocksHardware();
    return hardware != nullptr ? hardware : &detail::Sha256BlocksPortable;
  }();
  return best;
}

}  // namespace

namespace detail {

void Sha256BlocksPortable(uint32_t* state, const std::byte* blocks, size_t block_count) {
  for (size_t n = 0; n < block_count; ++n) {
    const std::byte* block = blocks + n * Sha256::kBlockBytes;
    // §6.2.2 step 1: the message schedule, kept as a 16-word ring (W[t] overwrites W[t-16]).
    uint32_t w[16];
    for (int t = 0; t < 16; ++t) w[t] = LoadBigEndian32(block + 4 * t);
    // Step 2.
    uint32_t a = state[0], b = state[1], c = state[2], d = state[3];
    uint32_t e = state[4], f = state[5], g = state[6], h = state[7];
    // Step 3.
    for (int t = 0; t < 64; ++t) {
      uint32_t wt;
      if (t < 16) {
        wt = w[t];
      } else {
        wt = SmallSigma1(w[(t - 2) & 15]) + w[(t - 7) & 15] + SmallSigma0(w[(t - 15) & 15]) +
             w[t & 15];
        w[t & 15] = wt;
      }
      const uint32_t t1 = h + BigSigma1(e) + Ch(e, f, g) + kK[t] + wt;
      const uint32_t t2 = BigSigma0(a) + Maj(a, b, c);
      h = g;
      g = f;
      f = e;
      e = d + t1;
      d = c;
      c = b;
      b = a;
      a = t1 + t2;
    }
    // Step 4.
    state[0] += a;
    state[1] += b;
    state[2] += c;
    state[3] += d;
    state[4] += e;
    state[5] += f;
    state[6] += g;
    state[7] += h;
  }
}

Sha256BlocksFn Sha256BlocksHardware() {
#if defined(__x86_64__)
  static const bool have_sha_ni = CpuHasShaNi();
  if (have_sha_ni) return &BlocksShaNi;
#endif
  return nullptr;
}

}  // namespace detail

void Sha256::Reset() {
  state_ = kH0;
  pending_used_ = 0;
  total_bytes_ = 0;
}

void Sha256::Update(std::span<const std::byte> data) {
  total_bytes_ += data.size();
  const detail::Sha256BlocksFn blocks = BestBlocks();
  if (pending_used_ > 0) {
    const size_t n = std::min(data.size(), kBlockBytes - pending_used_);
    if (n > 0) std::memcpy(pending_.data() + pending_used_, data.data(), n);
    pending_used_ += n;
    data = data.subspan(n);
    if (pending_used_ < kBlockBytes) return;
    blocks(state_.data(), pending_.data(), 1);
    pending_used_ = 0;
  }
  const size_t whole = data.size() / kBlockBytes;
  if (whole > 0) blocks(state_.data(), data.data(), whole);
  data = data.subspan(whole * kBlockBytes);
  if (!data.empty()) std::memcpy(pending_.data(), data.data(), data.size());
  pending_used_ = data.size();
}

Sha256::Digest Sha256::Finish() {
  // §5.1.1: a 1 bit, zeros up to 56 bytes mod 64, then the message length in bits, big-endian.
  const uint64_t length_bits = total_bytes_ * 8;
  std::array<std::byte, 2 * kBlockBytes> tail{};
  std::memcpy(tail.data(), pending_.data(), pending_used_);
  tail[pending_used_] = std::byte{0x80};
  const size_t tail_bytes = pending_used_ + 1 + 8 <= kBlockBytes ? kBlockBytes : 2 * kBlockBytes;
  for (int i = 0; i < 8; ++i) {
    tail[tail_bytes - 1 - i] = static_cast<std::byte>((length_bits >> (8 * i)) & 0xff);
  }
  BestBlocks()(state_.data(), tail.data(), tail_bytes / kBlockBytes);

  Digest digest;
  for (size_t i = 0; i < state_.size(); ++i) {
    for (size_t j = 0; j < 4; ++j) {
      digest[4 * i + j] = static_cast<uint8_t>(state_[i] >> (24 - 8 * j));
    }
  }
  Reset();
  return digest;
}

std::string DigestHex(const Sha256::Digest& digest) {
  constexpr char kHexDigits[] = "0123456789abcdef";
  std::string hex;
  hex.reserve(2 * digest.size());
  for (uint8_t byte : digest) {
    hex += kHexDigits[byte >> 4];
    hex += kHexDigits[byte & 15];
  }
  return hex;
}

std::string Sha256Hex(std::span<const std::byte> data) {
  Sha256 sha;
  sha.Update(data);
  return DigestHex(sha.Finish());
}

}  // namespace shardstream::cli
