// CopyBytes (common/copy.h): every distance between destination and source, including the
// short forward ones it copies with its own loop, and lengths around the loop's 64-byte
// step and memcpy's thresholds, copy exactly the bytes asked for and nothing around them.
#include "common/copy.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <memory>
#include <vector>

namespace kvtier {
namespace {

struct PageBuffer {
  // aligned_alloc wants a size that is a multiple of the alignment.
  explicit PageBuffer(size_t bytes)
      : p(static_cast<uint8_t*>(std::aligned_alloc(4096, (bytes + 4095) / 4096 * 4096))), n(bytes) {}
  ~PageBuffer() { std::free(p); }
  uint8_t* p;
  size_t n;
};

TEST(CopyBytes, ShortForwardDistanceIsOneToSixtyThreeModuloAPage) {
  alignas(4096) static uint8_t page[3 * 4096];
  uint8_t* src = page + 4096;
  EXPECT_FALSE(copy_internal::ShortForwardDistance(src, src));
  EXPECT_TRUE(copy_internal::ShortForwardDistance(src + 1, src));
  EXPECT_TRUE(copy_internal::ShortForwardDistance(src + 16, src));
  EXPECT_TRUE(copy_internal::ShortForwardDistance(src + 63, src));
  EXPECT_FALSE(copy_internal::ShortForwardDistance(src + 64, src));
  EXPECT_TRUE(copy_internal::ShortForwardDistance(src + 4096 + 16, src));  // modulo the page
  EXPECT_FALSE(copy_internal::ShortForwardDistance(src - 16, src));       // destination before the source
  EXPECT_TRUE(copy_internal::ShortForwardDistance(src - 4096 + 16, src));
}

TEST(CopyBytes, CopiesExactlyTheRangeAtEveryDistanceAndLength) {
  constexpr size_t kMax = 20000;
  PageBuffer src(kMax + 8192), dst(kMax + 8192);
  for (size_t i = 0; i < src.n; ++i) src.p[i] = static_cast<uint8_t>(i * 131 + (i >> 8) * 7 + 1);
  std::vector<size_t> lengths = {0, 1, 15, 63, 64, 65, 127, 2047, 2048, 2049, 4095, 4096, 4097, 18432, 18432 + 37, kMax};
  const std::vector<uint8_t> untouched(dst.n, 0xEE);
  std::vector<size_t> distances;
  for (size_t d = 0; d <= 130; ++d) distances.push_back(d);
  for (size_t d = 4096 - 70; d < 4096; ++d) distances.push_back(d);
  int checked = 0;
  for (size_t src_off : {size_t{0}, size_t{16}, size_t{4080}}) {
    for (size_t dist : distances) {
      const size_t dst_off = (src_off + dist) % 4096;
      for (size_t n : lengths) {
        std::memset(dst.p, 0xEE, dst.n);
        CopyBytes(dst.p + dst_off, src.p + src_off, n);
        ASSERT_EQ(std::memcmp(dst.p + dst_off, src.p + src_off, n), 0)
            << "src page offset " << src_off << ", dst page offset " << dst_off << ", " << n << " bytes";
        ASSERT_EQ(std::memcmp(dst.p, untouched.data(), dst_off), 0) << "wrote before the range";
        ASSERT_EQ(std::memcmp(dst.p + dst_off + n, untouched.data(), dst.n - dst_off - n), 0)
            << "wrote past the range (" << n << " bytes at distance " << dist << ")";
        ++checked;
      }
    }
  }
  EXPECT_EQ(checked, 3 * (131 + 70) * 16);
}

}  // namespace
}  // namespace kvtier
