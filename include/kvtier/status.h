// Status and Result<T>: how kvtier's C++ code reports errors.
//
// A Status is either OK (no allocation, one null pointer) or an error with a
// code, a retryable bit and a message that names the thing and the fix. Result<T>
// carries a value or a non-OK Status. Both are [[nodiscard]]: an ignored error
// is a compile warning, and warnings are errors in CI.
//
// Thread-safety: values, like std::string. No exception crosses kvtier's public
// edges (C ABI, Python, RPC); code inside may throw only std::bad_alloc, which the
// edges catch and map to kNoMemory.
#ifndef KVTIER_STATUS_H_
#define KVTIER_STATUS_H_

#include <cassert>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

namespace kvtier {

class [[nodiscard]] Status {
 public:
  // Stable numbers: the C ABI returns -code.
  enum class Code : int {
    kOk = 0,
    kInvalidArgument = 1,  // bad input from the caller: layout, sizes, null buffers
    kNotFound = 2,         // unknown namespace, chunk not cached (a miss)
    kCorruption = 3,       // bytes failed a header, identity or checksum check
    kNoSpace = 4,          // a tier is full and nothing can be evicted
    kBusy = 5,             // resource temporarily unavailable (pinned, queue full)
    kTimedOut = 6,         // a deadline passed
    kCancelled = 7,        // the caller cancelled the operation
    kIOError = 8,          // the OS said no (errno in the message)
    kNotSupported = 9,     // a path that is not built yet, or not on this machine
    kClosed = 10,          // the store or handle was closed
    kNoMemory = 11,        // allocation failed
    kInternal = 12,        // a broken invariant: a bug in kvtier
    kUnavailable = 13,     // a service (kvtierd) is not reachable now; retry later
    kPermissionDenied = 14,  // the caller's credentials do not allow it (tenants)
  };

  Status() noexcept = default;
  Status(const Status& s) : rep_(s.rep_ ? std::make_unique<Rep>(*s.rep_) : nullptr) {}
  Status& operator=(const Status& s) {
    if (this != &s) rep_ = s.rep_ ? std::make_unique<Rep>(*s.rep_) : nullptr;
    return *this;
  }
  Status(Status&&) noexcept = default;
  Status& operator=(Status&&) noexcept = default;

  static Status OK() noexcept { return Status(); }
  static Status InvalidArgument(std::string_view msg) { return Status(Code::kInvalidArgument, msg); }
  static Status NotFound(std::string_view msg) { return Status(Code::kNotFound, msg); }
  static Status Corruption(std::string_view msg) { return Status(Code::kCorruption, msg); }
  static Status NoSpace(std::string_view msg) { return Status(Code::kNoSpace, msg, true); }
  static Status Busy(std::string_view msg) { return Status(Code::kBusy, msg, true); }
  static Status TimedOut(std::string_view msg) { return Status(Code::kTimedOut, msg, true); }
  static Status Cancelled(std::string_view msg) { return Status(Code::kCancelled, msg); }
  static Status IOError(std::string_view msg) { return Status(Code::kIOError, msg); }
  static Status NotSupported(std::string_view msg) { return Status(Code::kNotSupported, msg); }
  static Status Closed(std::string_view msg) { return Status(Code::kClosed, msg); }
  static Status NoMemory(std::string_view msg) { return Status(Code::kNoMemory, msg, true); }
  static Status Internal(std::string_view msg) { return Status(Code::kInternal, msg); }
  static Status Unavailable(std::string_view msg) { return Status(Code::kUnavailable, msg); }
  static Status PermissionDenied(std::string_view msg) { return Status(Code::kPermissionDenied, msg); }

  bool ok() const noexcept { return rep_ == nullptr; }
  Code code() const noexcept { return rep_ ? rep_->code : Code::kOk; }
  // True when the same call may succeed later (space freed, deadline extended).
  bool retryable() const noexcept { return rep_ && rep_->retryable; }
  const std::string& message() const noexcept;

  bool IsNotFound() const noexcept { return code() == Code::kNotFound; }
  bool IsCorruption() const noexcept { return code() == Code::kCorruption; }
  bool IsInvalidArgument() const noexcept { return code() == Code::kInvalidArgument; }

  // "corruption: <message>"; "OK" for OK.
  std::string ToString() const;
  static const char* CodeName(Code code) noexcept;

  // Returns a copy with `context` prepended to the message ("nvme tier: " + msg).
  Status WithContext(std::string_view context) const;

 private:
  struct Rep {
    Code code;
    bool retryable;
    std::string message;
  };
  Status(Code code, std::string_view msg, bool retryable = false)
      : rep_(std::make_unique<Rep>(Rep{code, retryable, std::string(msg)})) {}

  std::unique_ptr<Rep> rep_;  // null means OK
};

// A value or an error. Access to value() on an error is a bug (asserts in debug).
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : value_(std::move(value)) {}  // NOLINT: implicit by design
  Result(Status status) : status_(std::move(status)) {  // NOLINT
    assert(!status_.ok() && "Result built from an OK Status has no value");
    if (status_.ok()) status_ = Status::Internal("Result built from OK status without a value");
  }

  bool ok() const noexcept { return status_.ok(); }
  const Status& status() const& noexcept { return status_; }
  Status status() && noexcept { return std::move(status_); }

  T& value() & { assert(ok()); return *value_; }
  const T& value() const& { assert(ok()); return *value_; }
  T&& value() && { assert(ok()); return std::move(*value_); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }

 private:
  Status status_;
  std::optional<T> value_;
};

}  // namespace kvtier

// Returns the Status from the enclosing function when `expr` is not OK.
#define KVTIER_RETURN_IF_ERROR(expr)              \
  do {                                            \
    ::kvtier::Status _kvt_st = (expr);            \
    if (!_kvt_st.ok()) return _kvt_st;            \
  } while (0)

#endif  // KVTIER_STATUS_H_
