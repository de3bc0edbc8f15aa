#include "kvtier/status.h"

#include <gtest/gtest.h>

namespace kvtier {
namespace {

TEST(Status, OkIsCheapAndEmpty) {
  Status s;
  EXPECT_TRUE(s.ok());
  EXPECT_EQ(s.code(), Status::Code::kOk);
  EXPECT_EQ(s.ToString(), "OK");
  EXPECT_FALSE(s.retryable());
  EXPECT_EQ(sizeof(Status), sizeof(void*));
}

TEST(Status, CarriesCodeMessageAndRetryable) {
  Status s = Status::NoSpace("host tier: full");
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.code(), Status::Code::kNoSpace);
  EXPECT_TRUE(s.retryable());
  EXPECT_EQ(s.ToString(), "no space: host tier: full");
  Status c = Status::Corruption("bad checksum");
  EXPECT_FALSE(c.retryable());
  EXPECT_TRUE(c.IsCorruption());
  Status copy = c;
  EXPECT_EQ(copy.ToString(), c.ToString());
  Status ctx = c.WithContext("nvme tier: ");
  EXPECT_EQ(ctx.message(), "nvme tier: bad checksum");
  EXPECT_EQ(ctx.code(), Status::Code::kCorruption);
}

TEST(Status, ResultHoldsValueOrError) {
  Result<int> v = 7;
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(*v, 7);
  Result<int> e = Status::NotFound("unknown namespace");
  EXPECT_FALSE(e.ok());
  EXPECT_TRUE(e.status().IsNotFound());
}

}  // namespace
}  // namespace kvtier
