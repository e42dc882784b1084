// SHA-256 (FIPS 180-4), streaming: the per-tensor digests of `shardstream load --digest`. Uses the
// x86 SHA extensions when the CPU has them (checked once, at first use), else a portable
// implementation; both give the same digests.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

namespace shardstream::cli {

// One running digest. Feed bytes with Update() in pieces of any size, then Finish(). Not
// thread-safe: one object per thread (objects are cheap: ~100 bytes, no allocation).
class Sha256 {
 public:
  static constexpr size_t kDigestBytes = 32;
  static constexpr size_t kBlockBytes = 64;
  using Digest = std::array<uint8_t, kDigestBytes>;

  Sha256() { Reset(); }

  // Starts a new digest, discarding whatever was fed so far.
  void Reset();
  // Hashes `data`; it is not referenced after the call returns. Whole 64-byte blocks are hashed
  // straight from `data`; only a partial block is copied.
  void Update(std::span<const std::byte> data);
  // Pads, returns the digest of everything fed since the last Reset(), and resets the object so
  // it can be reused for a new message.
  Digest Finish();

 private:
  std::array<uint32_t, 8> state_{};
  std::array<std::byte, kBlockBytes> pending_{};  // a partial block, pending_used_ bytes of it
  size_t pending_used_ = 0;
  uint64_t total_bytes_ = 0;
};

// Lowercase hex of a digest (64 characters).
std::string DigestHex(const Sha256::Digest& digest);
// The hex SHA-256 of `data` in one call.
std::string Sha256Hex(std::span<const std::byte> data);

namespace detail {

// Runs the compression function over `block_count` consecutive 64-byte blocks, updating
// `state` (the eight working hash words H0..H7). Exposed so tests can check each
// implementation against the other.
using Sha256BlocksFn = void (*)(uint32_t* state, const std::byte* blocks, size_t block_count);

void Sha256BlocksPortable(uint32_t* state, const std::byte* blocks, size_t block_count);
// The SHA-extensions implementation, or nullptr when this CPU (or this build's target) lacks it.
Sha256BlocksFn Sha256BlocksHardware();

}  // namespace detail
}  // namespace shardstream::cli
