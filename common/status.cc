#include "kvtier/status.h"

namespace kvtier {

const std::string& Status::message() const noexcept {
  static const std::string kEmpty;
  return rep_ ? rep_->message : kEmpty;
}

const char* Status::CodeName(Code code) noexcept {
  switch (code) {
    case Code::kOk: return "ok";
    case Code::kInvalidArgument: return "invalid argument";
    case Code::kNotFound: return "not found";
    case Code::kCorruption: return "corruption";
    case Code::kNoSpace: return "no space";
    case Code::kBusy: return "busy";
    case Code::kTimedOut: return "timed out";
    case Code::kCancelled: return "cancelled";
    case Code::kIOError: return "I/O error";
    case Code::kNotSupported: return "not supported";
    case Code::kClosed: return "closed";
    case Code::kNoMemory: return "out of memory";
    case Code::kInternal: return "internal error";
    case Code::kUnavailable: return "unavailable";
    case Code::kPermissionDenied: return "permission denied";
  }
  return "unknown status";
}

std::string Status::ToString() const {
  if (ok()) return "OK";
  std::string s = CodeName(rep_->code);
  if (!rep_->message.empty()) {
    s += ": ";
    s += rep_->message;
  }
  return s;
}

Status Status::WithContext(std::string_view context) const {
  if (ok()) return Status();
  Status s(rep_->code, std::string(context) + rep_->message, rep_->retryable);
  return s;
}

}  // namespace kvtier
