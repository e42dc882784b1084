#include "integration/dtype.h"

#include "engine/cast.h"
#include "io/safetensors_writer.h"
#include "tests/support/test_files.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/randint.h>
#include <torch/nn/module.h>

#include <cstring>
#include <gtest/gtest.h>
#include <string>
#include <vector>

#include "shardstream/load.h"
#include "shardstream/skeleton.h"

namespace shardstream {
namespace {

TEST(TorchDTypeTest, ElementSizesMatchTheFormat) {
  for (io::DType d : io::AllDTypes()) {
    std::optional<c10::ScalarType> torch_type = TorchDType(d);
    const uint32_t bits = io::DTypeBits(d);
    if (bits == 6) {
      EXPECT_FALSE(torch_type.has_value()) << io::DTypeName(d);
      EXPECT_EQ(StorageDType(d), c10::ScalarType::Byte);
      continue;
    }
    ASSERT_TRUE(torch_type.has_value()) << io::DTypeName(d);
    // F4 packs two values per torch element.
    const uint32_t values_per_element = d == io::DType::kF4 ? 2 : 1;
    EXPECT_EQ(c10::elementSize(*torch_type) * 8, bits * values_per_element) << io::DTypeName(d);
  }
}

TEST(TorchDTypeTest, MapsTheFloat8Family) {
  EXPECT_EQ(TorchDType(io::DType::kF8E4M3), c10::ScalarType::Float8_e4m3fn);
  EXPECT_EQ(TorchDType(io::DType::kF8E5M2), c10::ScalarType::Float8_e5m2);
  EXPECT_EQ(TorchDType(io::DType::kF8E4M3Fnuz), c10::ScalarType::Float8_e4m3fnuz);
  EXPECT_EQ(TorchDType(io::DType::kF8E5M2Fnuz), c10::ScalarType::Float8_e5m2fnuz);
  EXPECT_EQ(TorchDType(io::DType::kF8E8M0), c10::ScalarType::Float8_e8m0fnu);
}

TEST(TorchDTypeTest, MapsUnsignedAndComplex) {
  EXPECT_EQ(TorchDType(io::DType::kU16), c10::ScalarType::UInt16);
  EXPECT_EQ(TorchDType(io::DType::kU32), c10::ScalarType::UInt32);
  EXPECT_EQ(TorchDType(io::DType::kU64), c10::ScalarType::UInt64);
  EXPECT_EQ(TorchDType(io::DType::kC64), c10::ScalarType::ComplexFloat);
  EXPECT_EQ(TorchDType(io::DType::kBool), c10::ScalarType::Bool);
}

// Every dtype × dtype pair through LoadInto (a module buffer in the destination dtype): the
// verdict is engine::CanCast, the one table (tests/python/test_cast.py walks the same pairs
// through the Python package), a refused pair fails with rule "cast" before any read, and an
// accepted one equals ATen's own conversion bit for bit (NaN for NaN).
TEST(CastTableTest, EveryPairThroughLoadIntoFollowsTheVerdictAndEqualsAten) {
  constexpr int64_t kElements = 64;
  shardstream::testing::ScratchDir dir;
  for (io::DType from : io::AllDTypes()) {
    const std::optional<c10::ScalarType> from_type = TorchDType(from);
    if (!from_type || from == io::DType::kF4) continue;  // no element-wise torch source
    // Random bytes (every pattern for 8-bit types): NaNs, infinities, negative integers occur.
    at::Tensor source =
        at::randint(0, 256, {kElements * static_cast<int64_t>(io::DTypeBits(from)) / 8},
                    at::TensorOptions().dtype(at::kByte));
    if (from == io::DType::kBool) source = source.remainder(2);
    source = source.view(*from_type);
    const std::filesystem::path path = dir.path() / (std::string(io::DTypeName(from)) + ".st");
    const std::vector<io::TensorToWrite> specs = {{"v", from, {static_cast<uint64_t>(kElements)}}};
    ASSERT_TRUE(io::WriteSafetensors(
                    path, specs, {},
                    [&](size_t, uint64_t offset, std::span<std::byte> out) {
                      std::memcpy(out.data(),
                                  static_cast<const std::byte*>(source.data_ptr()) + offset,
                                  out.size());
                    })
                    .ok());
    for (io::DType to : io::AllDTypes()) {
      const std::optional<c10::ScalarType> to_type = TorchDType(to);
      if (!to_type || to == io::DType::kF4) continue;
      SCOPED_TRACE(std::string(io::DTypeName(from)) + " -> " + std::string(io::DTypeName(to)));
      torch::nn::Module module;
      at::Tensor buffer =
          module.register_buffer("v", at::zeros({kElements}, at::TensorOptions().dtype(*to_type)));
      if (!engine::CanCast(from, to)) {
        try {
          LoadInto(module, path);
          FAIL() << "a cast the table refuses was loaded";
        } catch (const LoadError& e) {
          EXPECT_EQ(e.rule(), "cast") << e.what();
          EXPECT_NE(std::string(e.what()).find(engine::CastRefusal(from, to)), std::string::npos);
        }
        EXPECT_TRUE(buffer.view(at::kByte).eq(0).all().item<bool>()) << "bytes were written";
        continue;
      }
      LoadInto(module, path);
      const at::Tensor want = source.to(*to_type);
      const at::Tensor got = module.named_buffers()["v"];
      if (at::isFloatingType(*to_type)) {
        const at::Tensor nan = want.to(at::kDouble).isnan();
        ASSERT_TRUE(got.to(at::kDouble).isnan().equal(nan));
        ASSERT_TRUE(got.masked_select(nan.logical_not())
                        .view(at::kByte)
                        .equal(want.masked_select(nan.logical_not()).view(at::kByte)));
      } else {
        ASSERT_TRUE(got.view(at::kByte).equal(want.view(at::kByte)));
      }
    }
  }
}

}  // namespace
}  // namespace shardstream
