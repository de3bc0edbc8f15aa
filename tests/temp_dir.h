// A fresh directory for a test's files, removed with everything in it on destruction.
// It is made under KVTIER_TEST_DIR, else TMPDIR, else /tmp: tests of the NVMe tier need
// a block-backed filesystem (O_DIRECT), and scripts/test.sh points KVTIER_TEST_DIR at one.
#ifndef KVTIER_TESTS_TEMP_DIR_H_
#define KVTIER_TESTS_TEMP_DIR_H_

#include <stdlib.h>

#include <cstdlib>
#include <filesystem>
#include <string>

namespace kvtier::test {

inline std::string TestDirRoot() {
  for (const char* var : {"KVTIER_TEST_DIR", "TMPDIR"}) {
    const char* v = std::getenv(var);
    if (v != nullptr && *v != '\0') return v;
  }
  return "/tmp";
}

class TempDir {
 public:
  explicit TempDir(const std::string& parent = TestDirRoot()) {
    std::error_code ec;
    std::filesystem::create_directories(parent, ec);
    std::string templ = parent + "/kvtier_test_XXXXXX";
    if (mkdtemp(templ.data()) != nullptr) path_ = templ;
  }
  ~TempDir() {
    std::error_code ec;
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  bool ok() const { return !path_.empty(); }
  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

}  // namespace kvtier::test

#endif  // KVTIER_TESTS_TEMP_DIR_H_
