#include "cli/sha256.h"

#include <cstddef>
#include <cstdint>
#include <gtest/gtest.h>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace shardstream::cli {
namespace {

std::span<const std::byte> Bytes(std::string_view text) {
  return std::as_bytes(std::span(text.data(), text.size()));
}

std::vector<std::byte> RandomBytes(size_t size, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<std::byte> out(size);
  for (std::byte& b : out) b = static_cast<std::byte>(rng() & 0xff);
  return out;
}

// FIPS 180-4 examples (NIST CSRC "SHA256.pdf" and the one-million-'a' vector of FIPS 180-2).
TEST(Sha256Test, EmptyMessage) {
  EXPECT_EQ(Sha256Hex({}), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

TEST(Sha256Test, OneBlockMessageAbc) {
  EXPECT_EQ(Sha256Hex(Bytes("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(Sha256Test, TwoBlockMessage448Bits) {
  // 56 bytes: the length no longer fits in the first block, so padding adds a second one.
  EXPECT_EQ(Sha256Hex(Bytes("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

TEST(Sha256Test, Message896Bits) {
  EXPECT_EQ(
      Sha256Hex(Bytes("abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmno"
                      "pjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu")),
      "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1");
}

TEST(Sha256Test, OneMillionA) {
  const std::string million(1'000'000, 'a');
  EXPECT_EQ(Sha256Hex(Bytes(million)),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(Sha256Test, OneMillionAStreamedOneByteAtATime) {
  Sha256 sha;
  const std::byte a{'a'};
  for (int i = 0; i < 1'000'000; ++i) sha.Update(std::span(&a, 1));
  EXPECT_EQ(DigestHex(sha.Finish()),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(Sha256Test, StreamingInOddPiecesEqualsOneShot) {
  constexpr uint32_t kSeed = 20240611;
  SCOPED_TRACE("seed " + std::to_string(kSeed));
  const std::vector<std::byte> data = RandomBytes(4099, kSeed);
  const std::vector<size_t> piece_sizes = {1, 3, 7, 55, 56, 63, 64, 65, 127, 1000};
  // Every length around the padding edges (55/56/64 mod 64) and a few multi-block ones.
  for (size_t length : {0, 1, 55, 56, 57, 63, 64, 65, 119, 120, 128, 1000, 4099}) {
    const std::span<const std::byte> message = std::span(data).first(length);
    const std::string one_shot = Sha256Hex(message);
    for (size_t piece : piece_sizes) {
      Sha256 sha;
      for (size_t at = 0; at < length; at += piece) {
        sha.Update(message.subspan(at, std::min(piece, length - at)));
      }
      EXPECT_EQ(DigestHex(sha.Finish()), one_shot)
          << "length " << length << ", pieces of " << piece;
    }
  }
}

TEST(Sha256Test, FinishResetsForTheNextMessage) {
  Sha256 sha;
  sha.Update(Bytes("not this"));
  sha.Finish();
  sha.Update(Bytes("abc"));
  EXPECT_EQ(DigestHex(sha.Finish()),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  sha.Update(Bytes("discarded"));
  sha.Reset();
  EXPECT_EQ(DigestHex(sha.Finish()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

TEST(Sha256Test, HardwareBlocksMatchPortableBlocks) {
  detail::Sha256BlocksFn hardware = detail::Sha256BlocksHardware();
  if (hardware == nullptr) GTEST_SKIP() << "this CPU has no SHA extensions";
  constexpr uint32_t kSeed = 7;
  SCOPED_TRACE("seed " + std::to_string(kSeed));
  const std::vector<std::byte> data = RandomBytes(64 * 37, kSeed);
  std::mt19937 rng(kSeed);
  for (size_t blocks : {1, 2, 5, 37}) {
    // Arbitrary starting states, not just H0: the state layout shuffles must round-trip.
    uint32_t portable[8];
    uint32_t accelerated[8];
    for (int i = 0; i < 8; ++i) portable[i] = accelerated[i] = static_cast<uint32_t>(rng());
    detail::Sha256BlocksPortable(portable, data.data(), blocks);
    hardware(accelerated, data.data(), blocks);
    for (int i = 0; i < 8; ++i) EXPECT_EQ(accelerated[i], portable[i]) << "word " << i;
  }
}

}  // namespace
}  // namespace shardstream::cli
