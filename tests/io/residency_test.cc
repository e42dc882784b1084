#include "io/residency.h"

#include "io/file.h"
#include "tests/support/test_files.h"

#include <sys/vfs.h>

#include <gtest/gtest.h>
#include <string>

namespace shardstream::io {
namespace {

constexpr long kTmpfsMagic = 0x01021994;

TEST(ResidencyTest, DroppedFileIsNoLongerResident) {
  testing::ScratchDir dir;
  struct statfs fs {};
  ASSERT_EQ(::statfs(dir.path().c_str(), &fs), 0);
  if (fs.f_type == kTmpfsMagic) GTEST_SKIP() << "$TMPDIR is tmpfs: its pages cannot be dropped";
  const auto path = dir.Write("data.bin", std::string(8 << 20, 'x'));  // written: cached
  Result<OpenFile> file = OpenForRead(path);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  Result<double> before = ResidentFraction(file->fd.get(), file->size_bytes);
  ASSERT_TRUE(before.ok());
  EXPECT_GT(*before, 0.9);
  ASSERT_TRUE(DropCachedPages(file->fd.get()).ok());
  Result<double> after = ResidentFraction(file->fd.get(), file->size_bytes);
  ASSERT_TRUE(after.ok());
  EXPECT_LT(*after, 0.05);
}

TEST(ResidencyTest, DropOnABadDescriptorNamesTheCall) {
  Status status = DropCachedPages(-1);
  ASSERT_FALSE(status.ok());
  EXPECT_NE(status.message().find("posix_fadvise"), std::string::npos) << status.ToString();
}

}  // namespace
}  // namespace shardstream::io
